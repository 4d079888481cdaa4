"""edgekit: the workstation side — train, prune, convert to full int8, fit-check, bundle, and watch the fleet.

The pipeline lives in sub-packages named after its stages: ``pipeline`` (data, train, prune, convert,
evaluate), ``fit`` (does it fit a device profile), ``package`` (the signed bundle) and ``fleet`` (watch, bench,
export, deploy); ``build`` runs them end to end. The ``edgekit`` command in :mod:`edgekit.cli` is a thin layer
over them. Errors come from :mod:`edgekit_agent.contract.errors`, shared with the device.
"""

__version__ = "0.1.0"
