"""Watching the fleet: a development broker (:mod:`.broker`), the MQTT link (:mod:`.link`), fleet state from
telemetry (:mod:`.state`), the live view (:mod:`.watch`), the command client (:mod:`.commands`), remote
benchmarks (:mod:`.remote`), the Prometheus exporter (:mod:`.exporter`) and OTA deploys (:mod:`.deploy`)."""
