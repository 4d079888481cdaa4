"""The bundle manifest: the typed contract between the workstation and the device.

``manifest.json`` is defined here, for both sides: the workstation (``edgekit.package.writer``) fills a
:class:`Manifest` and writes :meth:`Manifest.to_bytes`; the device reads it back with
:meth:`Manifest.from_bytes`, with no profile files and no TensorFlow. Unknown keys are kept (``raw`` holds the
document as read) so newer workstations can add fields; missing or wrongly typed keys are a
:class:`BundleError` that names the key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

from edgekit_agent.contract.errors import BundleError

FORMAT = "edgekit-bundle/1"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"

#: What the model's output tensor holds: softmax is applied on the device only to logits.
OutputsAre = Literal["logits", "probabilities"]
OUTPUTS_ARE: tuple[OutputsAre, ...] = ("logits", "probabilities")
#: How the output becomes a class: the largest of N outputs (softmax or logits), one sigmoid output (two classes),
#: or one sigmoid output per label, each label on its own (multi-label: a set of labels per input).
HeadKind = Literal["softmax", "sigmoid", "multilabel"]
HEAD_KINDS: tuple[HeadKind, ...] = ("softmax", "sigmoid", "multilabel")
#: A multi-label decision travels as a bit mask (bit i: labels[i]) through telemetry, whose records are float64:
#: 32 labels keep every mask exact there and in the journal's SQLite integers.
MAX_MULTILABELS = 32

_DTYPE_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "float32": (None, None),
    "int32": (None, None),
}


def _req(d: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise BundleError(f"{where}: required key '{key}' is missing; rebuild the bundle with `edgekit build`.")
    value = d[key]
    if not isinstance(value, typ) or (typ in (int, float) and isinstance(value, bool)):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise BundleError(f"{where}: key '{key}' should be {names}, got {type(value).__name__}.")
    return value


def _opt_number(d: Mapping[str, Any], key: str, default: float, where: str) -> float:
    """An optional number; a present value of the wrong type is an error, not a silent default."""
    if key not in d:
        return default
    return float(_req(d, key, (int, float), where))


def _numbers(d: Mapping[str, Any], key: str, default: tuple[float, ...], where: str) -> tuple[float, ...]:
    """An optional non-empty list of numbers (per-channel mean/std)."""
    if key not in d:
        return default
    values = _req(d, key, list, where)
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise BundleError(f"{where}: key '{key}' should be a non-empty list of numbers, got {values!r:.80}.")
    return tuple(float(v) for v in values)


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BundleError(f"{where} should be an object, got {type(value).__name__}.")
    return value


def _opt_table(d: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """An optional object (metrics, reference): absent is empty, anything but an object is an error."""
    return _table(d[key], f"{where}: '{key}'") if key in d else {}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output tensor: shape, dtype and affine quantisation (real = scale * (q - zero_point))."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> TensorSpec:
        d = _table(d, where)
        shape = _req(d, "shape", list, where)
        if not all(isinstance(s, int) and s > 0 for s in shape):
            raise BundleError(f"{where}: shape {shape} must be positive integers (static shapes only).")
        dtype = _req(d, "dtype", str, where)
        if dtype not in _DTYPE_RANGES:
            raise BundleError(f"{where}: dtype '{dtype}' is not one of {sorted(_DTYPE_RANGES)}.")
        return cls(
            name=str(d.get("name", "")),
            shape=tuple(shape),
            dtype=dtype,
            scale=float(_req(d, "scale", (int, float), where)),
            zero_point=int(_req(d, "zero_point", int, where)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
        }

    @property
    def qmin(self) -> int | None:
        return _DTYPE_RANGES[self.dtype][0]

    @property
    def qmax(self) -> int | None:
        return _DTYPE_RANGES[self.dtype][1]


@dataclass(frozen=True, slots=True)
class PreprocessSpec:
    """``kind = "image"``. How an image becomes the model's input tensor (shared by workstation evaluation and device).

    Steps: decode with Pillow → convert to ``color_mode`` ("L" grey or "RGB") → resize to
    ``width``×``height`` with ``resize`` → float32 pixels × ``scale`` → (x - mean) / std per channel →
    quantise with the input tensor's scale and zero point.
    """

    kind: ClassVar[str] = "image"
    width: int
    height: int
    color_mode: str = "L"
    resize: str = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest.preprocess") -> PreprocessSpec:
        mode = _req(d, "color_mode", str, where)
        if mode not in ("L", "RGB"):
            raise BundleError(f"{where}: color_mode '{mode}' must be 'L' (grey) or 'RGB'.")
        resize = str(d.get("resize", "bilinear"))
        if resize not in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"):
            raise BundleError(f"{where}: resize method '{resize}' is not a Pillow resampling filter.")
        spec = cls(
            width=int(_req(d, "width", int, where)),
            height=int(_req(d, "height", int, where)),
            color_mode=mode,
            resize=resize,
            scale=_opt_number(d, "scale", 1.0 / 255.0, where),
            mean=_numbers(d, "mean", (0.0,), where),
            std=_numbers(d, "std", (1.0,), where),
        )
        if spec.width <= 0 or spec.height <= 0:
            raise BundleError(f"{where}: width and height must be positive, got {spec.width}×{spec.height}.")
        if any(s == 0 for s in spec.std):
            raise BundleError(f"{where}: std must not contain 0.")
        return spec

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @property
    def shape(self) -> tuple[int, ...]:
        """The model input this makes, without the batch axis."""
        return (self.height, self.width, self.channels)


def _positive_ints(d: Mapping[str, Any], where: str, *keys: str) -> dict[str, int]:
    out = {}
    for key in keys:
        value = d[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise BundleError(f"{where}: key '{key}' should be a positive integer, got {value!r:.40}.")
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class AudioSpec:
    """How a sound clip becomes the model's input (``kind = "audio"``); the same numpy code on both sides
    (:mod:`edgekit_agent.infer.audio`).

    Steps: decode the WAV → mono → resample to ``sample_rate`` → cut or pad (zeros) to ``clip_samples`` around
    the clip's centre → frames of ``frame_length`` every ``frame_step`` samples, Hann window → power spectrum
    ``|rfft(frame, fft_length)|²`` → ``n_mels`` triangular mel filters between ``fmin`` and ``fmax`` Hz →
    ``log(x + log_offset)`` → ``(x - mean) / std`` → quantise. The input tensor is (1, frames, n_mels, 1).
    The golden samples' ``raw`` array holds float waveforms in [-1, 1] at ``sample_rate``, ``clip_samples`` long.
    """

    kind: ClassVar[str] = "audio"
    sample_rate: int = 16000
    clip_samples: int = 16000
    frame_length: int = 480  # 30 ms at 16 kHz (TFLite Micro's micro_speech uses 30 ms windows, 20 ms apart)
    frame_step: int = 320
    fft_length: int = 512
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float = 7600.0
    log_offset: float = 1e-6
    mean: float = 0.0
    std: float = 1.0

    @property
    def frames(self) -> int:
        return 1 + (self.clip_samples - self.frame_length) // self.frame_step

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.frames, self.n_mels, 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest.preprocess") -> AudioSpec:
        base = cls()
        ints = _positive_ints(
            {k: d.get(k, getattr(base, k)) for k in _AUDIO_INTS},
            where,
            *_AUDIO_INTS,
        )
        spec = cls(
            **ints,
            fmin=_opt_number(d, "fmin", base.fmin, where),
            fmax=_opt_number(d, "fmax", base.fmax, where),
            log_offset=_opt_number(d, "log_offset", base.log_offset, where),
            mean=_opt_number(d, "mean", base.mean, where),
            std=_opt_number(d, "std", base.std, where),
        )
        if spec.clip_samples < spec.frame_length or spec.fft_length < spec.frame_length:
            raise BundleError(
                f"{where}: clip_samples ({spec.clip_samples}) and fft_length ({spec.fft_length}) must be at least "
                f"frame_length ({spec.frame_length})."
            )
        if not 0.0 <= spec.fmin < spec.fmax <= spec.sample_rate / 2:
            raise BundleError(
                f"{where}: need 0 <= fmin < fmax <= sample_rate / 2, got fmin {spec.fmin}, fmax {spec.fmax}, "
                f"sample_rate {spec.sample_rate}."
            )
        if spec.std == 0 or spec.log_offset <= 0:
            raise BundleError(f"{where}: std must not be 0 and log_offset must be > 0.")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


_AUDIO_INTS = ("sample_rate", "clip_samples", "frame_length", "frame_step", "fft_length", "n_mels")


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """How a sensor recording (CSV: an optional time column, then one column per channel) becomes the model's
    input (``kind = "sensor"``), the same numpy code on both sides (:mod:`edgekit_agent.infer.sensors`).

    Steps: read the columns named in ``channels`` (in that order) → resample to ``sample_rate`` Hz on the time
    column when the file has one → ``window`` rows (training cuts a recording into windows every ``stride``
    rows; serving a file takes its central window) → ``(x - mean) / std`` per channel → quantise. The input
    tensor is (1, window, channels). The golden samples' ``raw`` array holds the windows before normalisation,
    (N, window, channels) float32.
    """

    kind: ClassVar[str] = "sensor"
    channels: tuple[str, ...]
    window: int
    stride: int
    sample_rate: float
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.channels)
        if not self.mean:
            object.__setattr__(self, "mean", (0.0,) * n)
        if not self.std:
            object.__setattr__(self, "std", (1.0,) * n)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.window, len(self.channels))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest.preprocess") -> SensorSpec:
        channels = _req(d, "channels", list, where)
        if not channels or not all(isinstance(c, str) and c for c in channels) or len(set(channels)) != len(channels):
            raise BundleError(
                f"{where}: key 'channels' should be a list of distinct column names, got {channels!r:.80}."
            )
        ints = _positive_ints(d, where, "window", "stride") if "window" in d and "stride" in d else None
        if ints is None:
            raise BundleError(f"{where}: a sensor spec needs 'window' and 'stride' (rows).")
        rate = _opt_number(d, "sample_rate", 0.0, where)
        if rate <= 0:
            raise BundleError(f"{where}: key 'sample_rate' should be a positive number of rows per second.")
        n = len(channels)
        spec = cls(
            channels=tuple(channels),
            window=ints["window"],
            stride=ints["stride"],
            sample_rate=rate,
            mean=_numbers(d, "mean", (0.0,) * n, where),
            std=_numbers(d, "std", (1.0,) * n, where),
        )
        if len(spec.mean) != n or len(spec.std) != n:
            raise BundleError(f"{where}: 'mean' and 'std' need one value per channel ({n}).")
        if any(s == 0 for s in spec.std):
            raise BundleError(f"{where}: std must not contain 0.")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "channels": list(self.channels),
            "window": self.window,
            "stride": self.stride,
            "sample_rate": self.sample_rate,
            "mean": list(self.mean),
            "std": list(self.std),
        }


#: What the manifest's ``preprocess`` describes: an image (no ``kind`` key, or ``"image"``), a sound clip or a
#: sensor window.
InputSpec = PreprocessSpec | AudioSpec | SensorSpec
INPUT_KINDS = ("image", "audio", "sensor")


def input_spec_from_dict(d: Mapping[str, Any], where: str = "manifest.preprocess") -> InputSpec:
    """The typed spec for ``d`` by its ``kind`` (absent: an image, as every manifest before audio and sensors)."""
    kind = d.get("kind", "image")
    if kind == "image":
        return PreprocessSpec.from_dict(d, where)
    if kind == "audio":
        return AudioSpec.from_dict(d, where)
    if kind == "sensor":
        return SensorSpec.from_dict(d, where)
    raise BundleError(
        f"{where}: kind {kind!r:.40} is not one of {list(INPUT_KINDS)}; this agent is older than the bundle: "
        "upgrade edgekit-agent."
    )


@dataclass(frozen=True, slots=True)
class HeadSpec:
    """The classifier head. ``softmax``: one output per label, the largest wins. ``sigmoid``: one output, the
    probability of ``labels[1]``; at or above ``threshold`` the class is ``labels[1]``, else ``labels[0]``.
    ``multilabel``: one sigmoid output per label; the prediction is the set of labels at or above ``threshold``."""

    kind: HeadKind = "softmax"
    threshold: float = 0.5

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> HeadSpec:
        d = _table(d, where)
        kind = _req(d, "kind", str, where)
        if kind not in HEAD_KINDS:
            raise BundleError(f"{where}: key 'kind' should be one of {list(HEAD_KINDS)}, got {kind!r:.40}.")
        threshold = _opt_number(d, "threshold", 0.5, where)
        if not 0.0 < threshold < 1.0:
            raise BundleError(f"{where}: key 'threshold' should be a probability between 0 and 1, got {threshold}.")
        return cls(kind=cast(HeadKind, kind), threshold=threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "threshold": self.threshold}


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class GoldenSpec:
    """The self-test's samples: ``file`` (a listed .npz of quantised inputs, labels and the workstation's raw
    outputs), how many, and how many raw units a device's outputs may differ by."""

    file: str
    samples: int
    tolerance: int | float = 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> GoldenSpec:
        d = _table(d, where)
        samples = int(_req(d, "samples", int, where))
        tolerance = d.get("tolerance", 1)
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or tolerance < 0:
            raise BundleError(f"{where}: key 'tolerance' should be a number >= 0, got {tolerance!r:.40}.")
        if samples < 0:
            raise BundleError(f"{where}: key 'samples' should be >= 0, got {samples}.")
        file = str(_req(d, "file", str, where)) if "file" in d else "golden.npz"
        return cls(file=file, samples=samples, tolerance=tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "samples": self.samples, "tolerance": self.tolerance}


@dataclass(frozen=True, slots=True)
class Manifest:
    """A bundle's ``manifest.json``, parsed (:meth:`from_bytes`) or filled by the workstation (:meth:`to_bytes`).

    ``profile``, ``metrics``, ``fit`` and ``reference`` are JSON objects made by the workstation's own typed
    results (profile, metrics, fit report, drift reference); the device reads only a few keys of them.
    ``raw`` is the document as read (unknown keys included); a manifest built in memory has none.
    """

    name: str
    version: str
    created: str
    profile: Mapping[str, Any]  # the workstation profile: name, target, runtime {num_threads, delegate}, budgets
    model: FileEntry
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocess: InputSpec
    labels: tuple[str, ...]
    files: tuple[FileEntry, ...]
    outputs_are: OutputsAre = "logits"  # a manifest written before the key existed is read as logits
    head: HeadSpec = HeadSpec()  # a manifest written before the key existed is a softmax head
    golden: GoldenSpec | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    fit: Mapping[str, Any] | None = None  # None: no fit checker was installed on the workstation
    reference: Mapping[str, Any] = field(default_factory=dict)  # drift statistics; empty: no drift monitoring
    format: str = FORMAT
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def profile_name(self) -> str:
        return str(self.profile["name"])

    @property
    def target(self) -> str:
        return str(self.profile.get("target", "cpu"))

    @property
    def runtime(self) -> Mapping[str, Any]:
        """Runtime settings from the profile: num_threads, delegate."""
        return self.profile.get("runtime", {})

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise BundleError(f"manifest lists no file '{name}'.")

    # --- (de)serialisation ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = MANIFEST_NAME) -> Manifest:
        if not isinstance(d, Mapping):
            raise BundleError(f"{source}: top level must be a JSON object.")
        fmt = _req(d, "format", str, source)
        if fmt != FORMAT:
            raise BundleError(
                f"{source}: format '{fmt}' is not supported by this agent (it reads '{FORMAT}'); "
                "upgrade edgekit-agent or rebuild the bundle."
            )
        model = _req(d, "model", dict, source)
        files_raw = _req(d, "files", dict, source)
        files = []
        for fname, meta in files_raw.items():
            where = f"{source}: files['{fname}']"
            if not isinstance(meta, dict):
                raise BundleError(f"{where} must be an object with bytes and sha256.")
            files.append(FileEntry(fname, int(_req(meta, "bytes", int, where)), str(_req(meta, "sha256", str, where))))
        model_file = _req(model, "file", str, f"{source}: model")
        if model_file not in files_raw:
            raise BundleError(f"{source}: the model file '{model_file}' is not listed in 'files'.")
        profile = _req(d, "profile", dict, source)
        _req(profile, "name", str, f"{source}: profile")
        labels = _req(d, "labels", list, source)
        outputs = tuple(
            TensorSpec.from_dict(t, f"{source}: outputs[{i}]") for i, t in enumerate(_req(d, "outputs", list, source))
        )
        inputs = tuple(
            TensorSpec.from_dict(t, f"{source}: inputs[{i}]") for i, t in enumerate(_req(d, "inputs", list, source))
        )
        if not inputs or not outputs:
            raise BundleError(f"{source}: a model needs at least one input and one output tensor.")
        outputs_are = d.get("outputs_are", "logits")
        if outputs_are not in OUTPUTS_ARE:
            raise BundleError(
                f"{source}: key 'outputs_are' should be one of {list(OUTPUTS_ARE)}, got {outputs_are!r:.40}."
            )
        head = HeadSpec.from_dict(d["head"], f"{source}: head") if "head" in d else HeadSpec()
        units = math.prod(outputs[0].shape[1:])
        if head.kind == "sigmoid" and (units, len(labels)) != (1, 2):
            raise BundleError(
                f"{source}: a sigmoid head needs one output and two labels; the model has {units} output(s) and "
                f"there are {len(labels)} labels. Rebuild the bundle with `edgekit build`."
            )
        if head.kind == "multilabel" and not (units == len(labels) and 2 <= units <= MAX_MULTILABELS):
            raise BundleError(
                f"{source}: a multilabel head needs one output per label, 2 to {MAX_MULTILABELS} of them; the model "
                f"has {units} output(s) and there are {len(labels)} labels. Rebuild the bundle with `edgekit build`."
            )
        fit = d.get("fit")
        return cls(
            format=fmt,
            name=str(_req(d, "name", str, source)),
            version=str(_req(d, "version", str, source)),
            created=str(d.get("created", "")),
            profile=profile,
            model=next(f for f in files if f.name == model_file),
            inputs=inputs,
            outputs=outputs,
            preprocess=input_spec_from_dict(_req(d, "preprocess", dict, source), f"{source}: preprocess"),
            labels=tuple(str(x) for x in labels),
            files=tuple(files),
            outputs_are=cast(OutputsAre, outputs_are),
            head=head,
            golden=GoldenSpec.from_dict(d["golden"], f"{source}: golden") if "golden" in d else None,
            metrics=_opt_table(d, "metrics", source),
            fit=None if fit is None else _table(fit, f"{source}: 'fit'"),
            reference=_opt_table(d, "reference", source),
            raw=dict(d),
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str = MANIFEST_NAME) -> Manifest:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(
                f"{source} is not valid JSON ({exc}); the bundle is corrupt, rebuild or re-copy it."
            ) from None
        except RecursionError:  # "[[[[…" deeper than the interpreter's recursion limit
            raise BundleError(f"{source} is nested too deeply to be a manifest; the bundle is corrupt.") from None
        return cls.from_dict(doc, source)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read {path}: {exc.strerror}; is this a bundle directory?") from None
        return cls.from_bytes(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (every key the workstation writes; ``fit`` is null without a fit checker)."""
        doc: dict[str, Any] = {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "profile": dict(self.profile),
            "model": {"file": self.model.name, "bytes": self.model.bytes, "sha256": self.model.sha256},
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "preprocess": self.preprocess.to_dict(),
            "labels": list(self.labels),
            "outputs_are": self.outputs_are,
            "head": self.head.to_dict(),
            "metrics": dict(self.metrics),
            "fit": dict(self.fit) if self.fit is not None else None,
            "reference": dict(self.reference),
            "files": {f.name: {"bytes": f.bytes, "sha256": f.sha256} for f in self.files},
        }
        if self.golden is not None:
            doc["golden"] = self.golden.to_dict()
        return doc

    def to_bytes(self) -> bytes:
        """The bytes to write as ``manifest.json`` (and to sign)."""
        return dump_manifest(self.to_dict())


def dump_manifest(doc: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a manifest: sorted keys, UTF-8, trailing newline (signatures cover exactly these)."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
