"""Self-test: before a device serves a bundle, it proves it reproduces the workstation's int8 outputs.

``golden.npz`` holds a few quantised inputs, their labels and the raw outputs LiteRT produced on the
workstation. The device runs the same inputs through its own interpreter and compares raw output
units; ``manifest["golden"]["tolerance"]`` (1 by default) absorbs the rounding differences between
kernels (XNNPACK vs builtin). A bigger difference means a different runtime behaviour, a wrong model
or a broken install, and the bundle is refused with :class:`SelfTestError` saying by how much.

Audio and sensor bundles also store each golden sample's ``raw`` input (a waveform or a window, as the
manifest's ``AudioSpec`` and ``SensorSpec`` say). The device computes the inputs itself from those with the
bundle's preprocessor, checks them against the workstation's quantised inputs (within :data:`INPUT_TOLERANCE`)
and runs the model on its own: a device that computes the features differently (a tampered spec, a different
agent version) is refused before it serves.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit_agent.contract.errors import BundleError, InputError, SelfTestError
from edgekit_agent.contract.manifest import PreprocessSpec
from edgekit_agent.infer.classify import decide
from edgekit_agent.infer.preprocess import dequantize, quantize

if TYPE_CHECKING:
    from edgekit_agent.bundle.load import Bundle
    from edgekit_agent.infer.inputs import InputPipeline
    from edgekit_agent.infer.runtime import Runtime

DEFAULT_TOLERANCE = 1
#: How far the inputs a device computes from the raw samples may be from the workstation's: one quantisation
#: step absorbs a value on a rounding boundary (numpy 1 and 2 FFTs differ in the last float bits).
INPUT_TOLERANCE = 1
#: The same for a model with float32 inputs (no quantisation step to measure in).
FLOAT_INPUT_TOLERANCE = 1e-3
_REQUIRED = ("inputs", "labels", "outputs")


@dataclass(frozen=True, slots=True)
class Golden:
    """The arrays of ``golden.npz``: quantised ``inputs`` (N, *input shape), ``labels`` (N,), the workstation's
    raw ``outputs``, and for audio and sensor bundles the ``raw`` input of each sample (None for images)."""

    inputs: np.ndarray
    labels: np.ndarray
    outputs: np.ndarray
    raw: np.ndarray | None
    tolerance: int


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
    # audio and sensor bundles: the largest |device - workstation| of the inputs computed from the raw samples
    # (raw units); None when the stored inputs were run as they are (images)
    input_max_abs_diff: int | float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        computed = (
            ""
            if self.input_max_abs_diff is None
            else f" (inputs computed from raw samples, max |diff| {self.input_max_abs_diff:g})"
        )
        return (
            f"self-test {verdict}: {self.samples} golden samples{computed}, max |diff| {self.max_abs_diff} "
            f"(tolerance {self.tolerance}), top-1 agreement {self.agreement:.0%}, "
            f"label accuracy {self.label_accuracy:.0%}"
        )


def load_golden(bundle: Bundle) -> Golden:
    """The bundle's golden file; BundleError when unusable."""
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
            raw = np.asarray(npz["raw"]) if "raw" in npz.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError(f"{path}: not a readable .npz ({exc}); re-copy or rebuild the bundle.") from None
    if not (len(inputs) == len(labels) == len(outputs)) or len(inputs) == 0:
        raise BundleError(
            f"{path}: {len(inputs)} inputs, {len(labels)} labels and {len(outputs)} outputs; "
            "they must be equal and non-zero."
        )
    if raw is not None and len(raw) != len(inputs):
        raise BundleError(f"{path}: {len(raw)} raw samples for {len(inputs)} inputs; rebuild the bundle.")
    return Golden(inputs, labels, outputs, raw, int(tolerance))


def inputs_from_raw(pre: InputPipeline, raw: np.ndarray) -> np.ndarray:
    """The quantised inputs (N, *input shape) ``pre`` computes from raw samples (N, ...)."""
    return np.stack([quantize(pre.from_raw(r), pre.tensor) for r in raw])


def input_differences(computed: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, float]:
    """Per sample, the largest |computed - stored| (raw units for quantised inputs), and the tolerance."""
    quantised = np.issubdtype(stored.dtype, np.integer)
    kind = np.int64 if quantised else np.float64
    diff = np.abs(computed.astype(kind) - stored.astype(kind)).reshape(len(stored), -1)
    return diff.max(axis=1), (INPUT_TOLERANCE if quantised else FLOAT_INPUT_TOLERANCE)


def _device_inputs(bundle: Bundle, golden: Golden) -> tuple[np.ndarray, int | float]:
    """The golden inputs as this device computes them from ``golden.raw``, and their largest difference from
    the workstation's; :class:`SelfTestError` saying how many differ, and by how much, beyond the tolerance."""
    where, kind = bundle.directory, bundle.manifest.preprocess.kind
    if golden.raw is None:
        raise BundleError(
            f"{where}: this {kind} bundle's golden.npz needs the raw samples ('raw') so the self-test can compute "
            "the inputs on the device; rebuild the bundle with this version of edgekit."
        )
    try:
        computed = inputs_from_raw(bundle.preprocessor(), golden.raw)
    except InputError as exc:
        raise SelfTestError(
            f"{where}: self-test failed: the manifest's {kind} preprocess spec cannot compute inputs from the golden "
            f"raw samples ({exc}). The spec does not belong to this model: rebuild the bundle."
        ) from None
    stored = golden.inputs
    if computed.shape != stored.shape:
        raise SelfTestError(
            f"{where}: self-test failed: the {kind} features computed from the golden raw samples are "
            f"{list(computed.shape)}, the workstation's are {list(stored.shape)}: rebuild the bundle."
        )
    per_sample, tolerance = input_differences(computed, stored)
    worst = per_sample.max().item()
    if worst > tolerance:
        bad = int((per_sample > tolerance).sum())
        values = float((np.abs(computed.astype(np.float64) - stored.astype(np.float64)) > tolerance).mean())
        raise SelfTestError(
            f"{where}: self-test failed: the {kind} features this device computes from the golden raw samples "
            f"differ from the workstation's on {bad} of {len(stored)} samples, by up to {worst:g} raw units "
            f"(tolerance {tolerance:g}; {values:.1%} of the values). The manifest's preprocess spec does not "
            "reproduce the features the model was built with (a changed spec, or an agent whose feature code "
            "differs from the workstation's edgekit): rebuild the bundle, or install the matching edgekit-agent."
        )
    return computed, worst


def run_selftest(bundle: Bundle, runtime: Runtime | None = None) -> SelfTestResult:
    """Run the golden inputs through ``runtime`` (default: ``bundle.open_runtime()``) and compare. Audio and
    sensor bundles run the inputs the device computes from the golden raw samples (checked first).

    Returns the result when every output is within the tolerance; raises :class:`SelfTestError`
    (naming the bundle, the largest difference and how many samples disagree) otherwise.
    """
    golden = load_golden(bundle)
    labels, expected, tolerance = golden.labels, golden.outputs, golden.tolerance
    inputs, input_diff = golden.inputs, None
    if not isinstance(bundle.manifest.preprocess, PreprocessSpec):
        inputs, input_diff = _device_inputs(bundle, golden)
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
        input_max_abs_diff=input_diff,
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
