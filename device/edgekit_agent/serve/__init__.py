"""Serving: the agent's loop (:mod:`.agent`), its remote commands (:mod:`.handlers`), telemetry windows
(:mod:`.telemetry`), its settings (:mod:`.config`) and what it reports about the machine (:mod:`.sysinfo`)."""
