"""Watching the fleet: a development broker (:mod:`.dev_broker`), the connection the fleet tools share
(:mod:`.connection`), fleet state from telemetry (:mod:`.state`), the live view (:mod:`.watch`), the command client
(:mod:`.command_client`), remote benchmarks (:mod:`.remote`), the Prometheus exporter (:mod:`.exporter`) and OTA
deploys (:mod:`.deploy`)."""
