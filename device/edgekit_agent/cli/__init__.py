"""The ``edgekit-agent`` command: ``verify`` and ``bench`` (:mod:`.app`), ``run`` (:mod:`.run`)."""

from edgekit_agent.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
