"""edgekit: the workstation side — train, prune, convert to full int8, fit-check, bundle, and watch the fleet.

The pipeline has one module per stage (``data``, ``train``, ``prune``, ``convert``, ``evaluate``,
``bundle``, ``build``, ``inspect``, ``check``...); the ``edgekit`` command in :mod:`edgekit.cli` is a thin
layer over them. Errors come from :mod:`edgekit.errors`.
"""

__version__ = "0.1.0"
