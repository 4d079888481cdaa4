"""MQTT: the paho link with its 3.1.1 fall-back (:mod:`.link`), the on-disk outbox that survives outages
(:mod:`.outbox`) and the command envelope's validation, de-duplication and answers (:mod:`.commands`)."""
