"""Self-test: before a device serves a bundle, it proves it reproduces the workstation's int8 outputs.

``golden.npz`` holds a few quantised inputs, their labels and the raw outputs LiteRT produced on the
workstation. The device runs the same inputs through its own interpreter and compares raw output
units; ``manifest["golden"]["tolerance"]`` (1 by default) absorbs the rounding differences between
kernels (XNNPACK vs builtin). A bigger difference means a different runtime behaviour, a wrong model
or a broken install, and the bundle is refused with :class:`SelfTestError` saying by how much.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit_agent.contract.errors import BundleError, SelfTestError
from edgekit_agent.infer.classify import decide
from edgekit_agent.infer.preprocess import dequantize

if TYPE_CHECKING:
    from edgekit_agent.bundle.load import Bundle
    from edgekit_agent.infer.runtime import Runtime

DEFAULT_TOLERANCE = 1
_REQUIRED = ("inputs", "labels", "outputs")


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    """How the device's outputs on the golden samples compare with the workstation's."""

    samples: int
    max_abs_diff: int  # largest |device - workstation| over all outputs, in raw (quantised) units
    mismatches: int  # samples with at least one output beyond the tolerance
    agreement: float  # fraction of samples whose top-1 class matches the workstation's
    label_accuracy: float  # fraction of samples whose top-1 class is the true label
    passed: bool
    tolerance: int = DEFAULT_TOLERANCE
    engine: str = ""
    delegate: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"self-test {verdict}: {self.samples} golden samples, max |diff| {self.max_abs_diff} "
            f"(tolerance {self.tolerance}), top-1 agreement {self.agreement:.0%}, "
            f"label accuracy {self.label_accuracy:.0%}"
        )


def load_golden(bundle: Bundle) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(inputs, labels, outputs, tolerance) from the bundle's golden file; BundleError when unusable."""
    spec = bundle.manifest.golden
    if spec is None:
        raise BundleError(
            f"{bundle.directory}: the manifest has no 'golden' section, so the bundle cannot be self-tested; "
            "rebuild it with `edgekit build` or pass --skip-selftest."
        )
    bundle.manifest.file(spec.file)  # must be a listed (hence hash-verified) file
    path = bundle.directory / spec.file
    tolerance = spec.tolerance  # validated by the manifest reader: a number >= 0
    try:
        # allow_pickle=False: a .npz from elsewhere must never run code when it is opened
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as npz:
            missing = [k for k in _REQUIRED if k not in npz.files]
            if missing:
                raise BundleError(
                    f"{path}: arrays {missing} are missing; it needs {list(_REQUIRED)}. Rebuild the bundle."
                )
            inputs, labels, outputs = (np.asarray(npz[k]) for k in _REQUIRED)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError(f"{path}: not a readable .npz ({exc}); re-copy or rebuild the bundle.") from None
    if not (len(inputs) == len(labels) == len(outputs)) or len(inputs) == 0:
        raise BundleError(
            f"{path}: {len(inputs)} inputs, {len(labels)} labels and {len(outputs)} outputs; "
            "they must be equal and non-zero."
        )
    return inputs, labels, outputs, int(tolerance)


def run_selftest(bundle: Bundle, runtime: Runtime | None = None) -> SelfTestResult:
    """Run the golden inputs through ``runtime`` (default: ``bundle.open_runtime()``) and compare.

    Returns the result when every output is within the tolerance; raises :class:`SelfTestError`
    (naming the bundle, the largest difference and how many samples disagree) otherwise.
    """
    inputs, labels, expected, tolerance = load_golden(bundle)
    own = runtime is None
    rt = bundle.open_runtime() if runtime is None else runtime
    try:
        want_in = (len(inputs), *rt.input_shape[1:])
        if inputs.shape != want_in or inputs.dtype != rt.input_dtype:
            raise BundleError(
                f"{bundle.directory}: golden inputs are {inputs.dtype}{list(inputs.shape)}, the model takes "
                f"{rt.input_dtype}{list(rt.input_shape)}; golden.npz does not belong to this model."
            )
        try:
            got = np.stack([rt.invoke(inputs[i : i + 1])[0] for i in range(len(inputs))])
        except (RuntimeError, ValueError) as exc:
            # A model that loads but cannot run (e.g. "Input tensor 1 lacks data" from a corrupted buffer
            # index; found by tests/device/test_fuzz_tflite.py) fails its self-test instead of crashing later.
            raise SelfTestError(
                f"{bundle.directory}: self-test failed: "
                f"the interpreter cannot run the model on the golden samples ({exc}); "
                "the model is corrupt. Re-copy or rebuild the bundle."
            ) from None
        info = rt.info
    finally:
        if own:
            rt.close()
    if got.shape != expected.shape:
        raise BundleError(
            f"{bundle.directory}: golden outputs have shape {list(expected.shape)}, the model gives {list(got.shape)}."
        )
    diff = np.abs(got.astype(np.int64) - expected.astype(np.int64)).reshape(len(got), -1)
    per_sample = diff.max(axis=1)
    m = bundle.manifest
    top_got = decide(dequantize(got, m.outputs[0]), m.head, m.outputs_are)[0]  # the head decides, as when serving
    top_want = decide(dequantize(expected, m.outputs[0]), m.head, m.outputs_are)[0]
    result = SelfTestResult(
        samples=len(got),
        max_abs_diff=int(per_sample.max()),
        mismatches=int((per_sample > tolerance).sum()),
        agreement=float((top_got == top_want).mean()),
        label_accuracy=float((top_got == labels.reshape(-1)).mean()),
        passed=bool(per_sample.max() <= tolerance),
        tolerance=tolerance,
        engine=info.engine,
        delegate=info.delegate,
    )
    if not result.passed:
        worst = int(per_sample.argmax())
        err = SelfTestError(
            f"{bundle.directory}: self-test failed on {info.engine} {info.version} ({info.delegate}): outputs differ "
            f"from the workstation's by up to {result.max_abs_diff} raw units (tolerance {tolerance}) on "
            f"{result.mismatches} of {result.samples} golden samples (worst: sample {worst}); top-1 agreement "
            f"{result.agreement:.0%}. Refusing to serve: check the runtime install, rebuild the bundle, or pass "
            "--skip-selftest to serve anyway."
        )
        err.result = result  # type: ignore[attr-defined]  # for callers that report it (events, MQTT)
        raise err
    return result
