"""What OTA needs from the agent it updates: :class:`UpdateTarget`, which
:class:`~edgekit_agent.serve.agent.Agent` implements.

An update swaps the bundle being served, watches the new bundle's inferences for a health window and reports
what it did. :class:`~edgekit_agent.ota.manager.OtaManager` does all of that through these few operations and
nothing else of the agent, so the serving loop can change without OTA noticing, and ``ota`` never imports
``serve.agent`` (tests/test_import_graph.py keeps the import graph free of cycles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edgekit_agent.bundle.load import Bundle
    from edgekit_agent.bundle.selftest import SelfTestResult
    from edgekit_agent.infer.runtime import Runtime
    from edgekit_agent.serve.config import AgentSettings
    from edgekit_agent.serve.telemetry import WindowRecorder

#: Builds the telemetry recorder of an activated bundle: ``(labels, reference, *, bundle=, runtime=)``.
RecorderFactory = Callable[..., "WindowRecorder"]


@dataclass(frozen=True, slots=True)
class Serving:
    """What an agent serves at one moment, as one value: an update keeps the one it replaced, so a rollback
    can put back exactly that interpreter (left open for it) and self-test result."""

    bundle: Bundle
    runtime: Runtime
    recorder: WindowRecorder
    selftest: SelfTestResult | None


class UpdateTarget(Protocol):
    """The serving agent as OTA sees it."""

    @property
    def settings(self) -> AgentSettings:
        """The current settings (``set_config`` replaces them: read them when needed, do not keep them)."""
        ...

    @property
    def bundle(self) -> Bundle:
        """The bundle being served."""
        ...

    @property
    def recorder(self) -> WindowRecorder:
        """The telemetry recorder of the bundle being served (a new one after each :meth:`activate`)."""
        ...

    @property
    def stopping(self) -> bool:
        """True once the agent was asked to stop: a health window then ends without a verdict."""
        ...

    def activate(self, bundle: Bundle, runtime: Runtime, selftest: SelfTestResult | None = None) -> Serving:
        """Serve ``bundle`` (already verified) with ``runtime`` from now on, in one step that serving requests
        never see half done, with a new recorder; returns what it replaced. The replaced runtime stays open."""
        ...

    def use_recorder(self, factory: RecorderFactory) -> None:
        """Build each activated bundle's recorder with ``factory`` from now on, the current bundle's too (OTA's
        recorder also keeps the tally a health window compares)."""
        ...

    def report_window(self, recorder: WindowRecorder) -> None:
        """Publish what ``recorder`` (of a bundle just replaced) holds, if anything; never raises."""
        ...

    def bundle_info(self) -> dict[str, Any]:
        """The served bundle's identity as events and answers carry it (``name``, ``version``, ``sha256``, …)."""
        ...

    def event(self, kind: str, **details: Any) -> None:
        """Publish an ``events`` message; never raises (the change it reports has happened)."""
        ...

    def publish_meta(self) -> None:
        """Publish the retained ``meta`` again (after a switch, a commit or a rollback)."""
        ...

    def respond(self, topic: str, body: dict[str, Any], correlation: bytes | None) -> None:
        """Send a command answer (here: the ``progress`` answers of a commit)."""
        ...


__all__ = ["RecorderFactory", "Serving", "UpdateTarget"]
