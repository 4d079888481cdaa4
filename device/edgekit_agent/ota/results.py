"""The results of the ``swap_bundle`` actions, typed; :meth:`to_dict` is the answer's JSON ``result``
(docs/trust.md describes each)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit_agent.bundle.selftest import SelfTestResult
    from edgekit_agent.ota.health import HealthPolicy
    from edgekit_agent.ota.slots import Pointer, Slot


class _Result:
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass


@dataclass(frozen=True, slots=True)
class Begun(_Result):
    """``begin``: the chunks the device already has (a transfer cut short by a restart resumes)."""

    transfer_id: str
    chunks: int
    have: list[int]
    chunk_bytes: int


@dataclass(frozen=True, slots=True)
class ChunkStored(_Result):
    transfer_id: str
    index: int
    received: int
    chunks: int


@dataclass(frozen=True, slots=True)
class Aborted(_Result):
    transfer_id: str
    aborted: bool = True


@dataclass(frozen=True, slots=True)
class Committed(_Result):
    """``commit``: the new bundle serves; its health window runs (``phase`` trial)."""

    transfer_id: str
    bundle: dict[str, Any]  # Agent.bundle_info() of the new bundle
    signed_by: str | None
    selftest: SelfTestResult | None  # None with skip_selftest
    health: HealthPolicy
    activated_ms: float
    elapsed_ms: float
    phase: str = "trial"


@dataclass(frozen=True, slots=True)
class RolledBack(_Result):
    rolled_back_to: Slot
    took_ms: float


@dataclass(frozen=True, slots=True)
class TrialStatus(_Result):
    transfer_id: str
    elapsed_s: float
    window_s: float


@dataclass(frozen=True, slots=True)
class TransferStatus(_Result):
    transfer_id: str
    chunks: int
    have: int  # chunks received


@dataclass(frozen=True, slots=True)
class OtaStatus(_Result):
    """``status``: the active bundle, the pointer, a running health window and transfers in staging."""

    active: dict[str, Any]  # Agent.bundle_info()
    pointer: Pointer
    trial: TrialStatus | None
    transfers: list[TransferStatus]


__all__ = ["Aborted", "Begun", "ChunkStored", "Committed", "OtaStatus", "RolledBack", "TransferStatus", "TrialStatus"]
