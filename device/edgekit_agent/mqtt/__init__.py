"""MQTT: the one paho wrapper with its 3.1.1 fall-back (:mod:`.client`), the agent's link fed from the on-disk
outbox (:mod:`.link`, :mod:`.outbox`) and the device side of commands: validation, de-duplication, answers
(:mod:`.commands`). paho itself is imported first, by :mod:`.paho_import` (without OpenSSL until TLS is used)."""

from edgekit_agent.mqtt import paho_import  # noqa: F401  (before any module of the package imports paho)
