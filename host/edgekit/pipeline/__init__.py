"""The workstation pipeline, one module per stage: :mod:`.data` → :mod:`.zoo`/:mod:`.train` → :mod:`.prune` →
:mod:`.convert` (full int8, linted by :mod:`.lint`) → :mod:`.evaluate`; :mod:`.reference` records the drift
reference the agent compares against."""
