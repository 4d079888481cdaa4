"""The one-shot path: dataset (or a model file + dataset) → train → prune → convert → evaluate → fit → bundle.

:func:`build` runs a list of steps (callables over one build state), reports progress through a
callback and returns a :class:`BuildResult`; it never prints. One bundle is written per profile
(profiles differ in input/output dtype, threads and budgets), each with the manifest the device
needs: metrics measured here with the device's own runtime, the fit report, the drift reference and
golden samples for the device's self-test.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.profiles import Profile, load_profile
from edgekit_agent.contract.errors import DatasetError, ModelError, UsageError
from edgekit_agent.contract.manifest import HeadSpec, Manifest, SensorSpec

if TYPE_CHECKING:  # the pipeline modules import TensorFlow: each step imports what it runs
    from edgekit.fit.check import FitReport
    from edgekit.pipeline.backbones import BackboneChoice
    from edgekit.pipeline.convert import ConversionResult
    from edgekit.pipeline.data import Dataset, SkippedImage, Splits
    from edgekit.pipeline.evaluate import EvalResult
    from edgekit.pipeline.prune import PruneResult
    from edgekit.pipeline.sensor_data import Windowing
    from edgekit.pipeline.train import ModelShape

GOLDEN_SAMPLES = 16
SPLIT = {"val": 0.15, "test": 0.15}
_NAME_OK = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class BuildProgress:
    """One progress report: step ``step`` of ``total`` started (``detail`` refines it, e.g. the epoch)."""

    step: int
    total: int
    label: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ProfileBuild:
    """What was built for one profile. ``directory``/``archive`` are None when it did not fit (keep_going)."""

    profile: str
    directory: Path | None
    archive: Path | None
    float_accuracy: float
    int8_accuracy: float
    samples: int
    int8_bytes: int
    float_tflite_bytes: int
    qat: bool
    fits: bool
    fit_summary: str
    chance: float = float("nan")  # the accuracy of guessing on the held-out samples (EvalResult.chance)
    exact_match: float | None = None  # multi-label: held-out int8 samples whose whole label set is right
    manifest: Manifest | None = field(default=None, repr=False, compare=False)  # as written, None without a bundle

    @property
    def near_chance(self) -> bool:
        """Held-out int8 accuracy within NEAR_CHANCE_MARGIN of guessing: the model has not learned the classes."""
        from edgekit.pipeline.evaluate import NEAR_CHANCE_MARGIN

        return bool(self.int8_accuracy < self.chance + NEAR_CHANCE_MARGIN)

    @property
    def accuracy_drop(self) -> float:
        """Float minus int8 accuracy, in percentage points."""
        return round(100.0 * (self.float_accuracy - self.int8_accuracy), 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "directory": str(self.directory) if self.directory else None,
            "archive": str(self.archive) if self.archive else None,
            "float_accuracy": self.float_accuracy,
            "int8_accuracy": self.int8_accuracy,
            "accuracy_drop_points": self.accuracy_drop,
            "samples": self.samples,
            "int8_bytes": self.int8_bytes,
            "float_tflite_bytes": self.float_tflite_bytes,
            "int8_float_ratio": round(self.int8_bytes / self.float_tflite_bytes, 4)
            if self.float_tflite_bytes
            else None,
            "qat": self.qat,
            "fits": self.fits,
            "fit_summary": self.fit_summary,
            "chance_accuracy": self.chance,
            "near_chance": self.near_chance,
            **({"int8_exact_match": self.exact_match} if self.exact_match is not None else {}),
        }


@dataclass(frozen=True, slots=True)
class BuildResult:
    """The outcome of :func:`build`: one :class:`ProfileBuild` per profile, in the order asked."""

    name: str
    version: str
    arch: str
    model_file: Path
    float_accuracy: float
    profiles: tuple[ProfileBuild, ...]
    seconds: float
    # (step, wall seconds, CPU seconds incl. child processes such as the converter), in order: where the
    # time went. CPU seconds barely change when other work shares the machine; wall seconds do.
    step_seconds: tuple[tuple[str, float, float], ...] = ()
    warnings: tuple[str, ...] = ()  # what the figures do not show: accuracy near chance, classes not measured
    skipped_images: tuple[SkippedImage, ...] = ()

    @property
    def all_fit(self) -> bool:
        return all(p.fits for p in self.profiles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "model_file": str(self.model_file),
            "float_accuracy": self.float_accuracy,
            "seconds": round(self.seconds, 2),
            "step_seconds": [
                {"step": label, "seconds": round(t, 2), "cpu_seconds": round(c, 2)} for label, t, c in self.step_seconds
            ],
            "profiles": [p.to_dict() for p in self.profiles],
            "warnings": list(self.warnings),
            "skipped_images": [s.to_dict() for s in self.skipped_images],
        }


@dataclass(slots=True)
class _ProfileWork:
    """One profile's work in progress: its steps fill in the int8 evaluation and the fit report in turn."""

    profile: Profile
    conversion: ConversionResult
    evaluation: EvalResult | None = None
    fit: FitReport | None = None

    @property
    def tflite(self) -> bytes:
        return self.conversion.tflite


def _dtypes(profile: Profile) -> tuple[str, str]:
    """Profiles that ask for the same tensor dtypes get the same model: conversions and evaluations are shared."""
    return str(profile.input_dtype), str(profile.output_dtype)


@dataclass
class _State:
    """Mutable state the steps pass along (internal; the result handed out is frozen)."""

    dataset: Path
    out: Path
    profiles: list[Profile]
    model_path: Path | None
    epochs: int | None
    prune: float | None
    max_accuracy_drop: float
    keep_going: bool
    name: str
    version: str
    seed: int
    arch: str
    backbone: BackboneChoice | None = None
    fine_tune: int = 0
    head_kind: str | None = None  # asked for (None: the dataset's or the model file's)
    threshold: float | None = None  # asked for (None: 0.5)
    windowing: Windowing | None = None  # sensor folders: window, stride, rate (None: the defaults)
    report: Callable[[str], None] = lambda detail: None
    ds: Dataset | None = None
    splits: Splits | None = None
    model: Any = None  # a Keras 3 or tf_keras model
    model_shape: ModelShape | None = None  # of a --model file
    model_file: Path | None = None
    float_accuracy: float = 0.0
    val_accuracy: float | None = None  # of the model as trained (TrainResult.val_accuracy), for the convert step
    trained_arch: str = ""
    outputs_are: str = "probabilities"
    head: HeadSpec = HeadSpec()  # a --model file with one output is a binary sigmoid head
    pruned: PruneResult | None = None
    current: _ProfileWork | None = None  # set by each profile's convert step
    conversions: dict[tuple[str, str], ConversionResult] = field(default_factory=dict)
    evaluations: dict[tuple[str, ...], EvalResult] = field(default_factory=dict)
    built: list[ProfileBuild] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def work(self) -> _ProfileWork:
        """The profile being built (its convert step has run)."""
        assert self.current is not None, "a per-profile step ran before the profile's convert step"
        return self.current


# --- steps --------------------------------------------------------------------------------------------
def _load_data(s: _State) -> None:
    from edgekit.pipeline import backbones, data, sensor_data

    # A backbone (asked for, or the one a --model file was trained on) decides size, colour and scaling ([-1, 1]);
    # else a model file decides the image size and colour mode. The dataset must then match its input and classes.
    choice = s.backbone or (backbones.choice_of(s.model) if s.model is not None else None)
    if choice is not None:
        s.ds = backbones.load_dataset(s.dataset, choice)
    elif s.model_shape is None and sensor_data.is_sensor_folder(s.dataset):
        s.ds = data.load_sensor_folder(s.dataset, windowing=s.windowing)
    elif s.windowing is not None:
        raise UsageError(f"{s.dataset}: --window, --stride and --rate are for folders of CSV sensor recordings.")
    else:
        s.ds = data.load_dataset(s.dataset, s.model_shape.dataset_spec(s.dataset) if s.model_shape else None)
    if s.model_shape is not None:
        s.model_shape.check(s.ds, s.dataset)
    s.head = _head(s)
    s.splits = data.split_dataset(s.ds, val=SPLIT["val"], test=SPLIT["test"], seed=s.seed)
    if s.ds.spec.kind == "audio":  # feature mean/std from the training split, recorded in the spec
        from edgekit.pipeline import audio_data

        s.splits = audio_data.normalise(s.splits)
        s.ds = replace(s.ds, spec=s.splits.spec)
    s.splits = sensor_data.normalise_on_train(s.splits)  # per-channel mean/std of the training windows
    if len(s.splits.test.y) == 0:
        raise DatasetError(f"{s.dataset}: too few images for a held-out test split; add images to every class.")
    s.warnings += data.thin_classes(s.splits)
    s.warnings += [f"converted {note}" for note in s.ds.notes]  # clips resampled, cut… on loading


def _head(s: _State) -> HeadSpec:
    """The bundle's head: what the dataset (multi-label) or the model file (one output: sigmoid) says, or
    ``--head``; ``--threshold`` only where there is one (a sigmoid or multilabel head)."""
    from edgekit.pipeline import foreign, train

    assert s.ds is not None
    kind = s.head_kind
    if s.model_shape is not None:
        if s.ds.multilabel and isinstance(s.model, foreign.ForeignModel):
            raise UsageError(
                f"{s.model_path}: a float .tflite or ONNX model on a multi-label dataset is not supported."
            )
        has = s.model_shape.head_for(s.ds).kind
        if kind not in (None, has):
            raise UsageError(f"--head {kind}: {s.model_path} has a {has} head on the dataset {s.dataset}.")
        kind = has
    head = train.head_for_dataset(s.ds, kind, s.threshold)  # type: ignore[arg-type]
    if s.backbone is not None and head.kind != "softmax":
        raise UsageError(f"--backbone trains a softmax head; a {head.kind} head trains without --backbone.")
    return head


def _load_model(s: _State) -> None:
    from edgekit.pipeline import foreign, train

    assert s.model_path is not None
    if foreign.is_foreign(s.model_path):  # a float .tflite or ONNX file, quantised by the convert step
        s.model = foreign.load_foreign(s.model_path)
        s.model_shape = s.model.shape
    else:
        s.model = train.load_model(s.model_path)
        s.model_shape = train.model_shape(s.model, s.model_path, s.dataset)  # one image input, one (batch, classes)
    s.model_file = s.model_path
    s.trained_arch = f"file:{s.model_path.name}"
    s.float_accuracy = -1.0  # unknown until measured on this dataset's test split


def _train(s: _State) -> None:
    from edgekit.pipeline import backbones, train

    if s.backbone is not None:
        result = backbones.train_transfer(
            s.splits, s.backbone, epochs=s.epochs, fine_tune=s.fine_tune, seed=s.seed, on_epoch=_epoch_reporter(s)
        )
    else:
        result = train.train_model(
            s.splits, head=s.head, arch=s.arch, epochs=s.epochs, seed=s.seed, on_epoch=_epoch_reporter(s)
        )
    s.model, s.trained_arch, s.float_accuracy = result.model, result.arch, float(result.float_accuracy)
    s.val_accuracy = result.val_accuracy


def _epoch_reporter(s: _State) -> Callable[[int, int, dict[str, float]], None]:
    def on_epoch(epoch: int, epochs: int, logs: dict[str, float]) -> None:
        acc = logs.get("val_accuracy", logs.get("accuracy"))
        s.report(f"epoch {epoch + 1}/{epochs}" + (f", val accuracy {acc:.3f}" if acc is not None else ""))

    return on_epoch


def _prune(s: _State) -> None:
    from edgekit.pipeline import prune

    s.pruned = prune.prune_model(s.model, s.splits, sparsity=s.prune, seed=s.seed)
    s.model = s.pruned.model
    s.float_accuracy = float(s.pruned.accuracy_after)  # measured on the test split, like training's figure


def _prune_metrics(s: _State) -> dict[str, Any] | None:
    """The manifest's ``metrics.prune``: None when the model was not pruned."""
    if s.pruned is None:
        return None
    weights = sum(layer.weights for layer in s.pruned.layers)
    return {
        "target_sparsity": s.prune,
        "achieved_sparsity": round(sum(layer.zeros for layer in s.pruned.layers) / weights, 4) if weights else None,
        "float_accuracy_before": s.pruned.accuracy_before,
        "float_accuracy_after": s.pruned.accuracy_after,
        "fine_tune_steps": s.pruned.steps,
    }


def _save_model(s: _State) -> None:
    from edgekit.pipeline import foreign, train, zoo

    if isinstance(s.model, foreign.ForeignModel):  # the user's file is the model: nothing to save
        s.outputs_are = s.model.outputs_are
        s.float_accuracy = foreign.float_accuracy(s.model, s.splits.test.x, s.splits.test.y)
        return
    if s.model_file is None or s.pruned is not None:  # kept next to the bundles, so `--model` can rebuild from it
        s.model_file = train.save_model(s.model, _model_out(s))
    s.outputs_are = zoo.outputs_are(s.model)
    if s.float_accuracy < 0:  # a model file: training's (or pruning's) test-split figure does not exist
        from edgekit.pipeline import evaluate

        test = s.splits.test
        s.float_accuracy = float(evaluate.evaluate_keras(s.model, test.x, test.y, head=s.head).accuracy)


def _model_out(s: _State) -> Path:
    """``OUT/NAME.keras``, or ``OUT/NAME-pruned.keras`` when that is the ``--model`` file itself (the rebuild
    route ``--model OUT/NAME.keras --prune``): the user's model file is never overwritten."""
    path = s.out / f"{s.name}.keras"
    while s.model_path is not None and path.exists() and path.samefile(s.model_path):
        path = path.with_name(f"{path.stem}-pruned.keras")
    return path


def _convert(s: _State, profile: Profile) -> None:
    from edgekit.pipeline import convert, foreign

    key = _dtypes(profile)
    if key not in s.conversions and isinstance(s.model, foreign.ForeignModel):  # no Keras model, so no QAT
        s.conversions[key] = foreign.convert_for_profile(s.model, s.splits, profile, seed=s.seed, on_stage=s.report)
    elif key not in s.conversions:
        s.conversions[key] = convert.convert_for_profile(
            s.model,
            s.splits,
            profile,
            max_accuracy_drop=s.max_accuracy_drop,
            qat=True,
            seed=s.seed,
            name=s.name,
            on_stage=s.report,
            head=s.head,
            float_val_accuracy=s.val_accuracy if s.pruned is None else None,  # pruning changed the model
        )
    else:
        s.report(f"same {key[0]}/{key[1]} model as an earlier profile")
    s.current = _ProfileWork(profile, s.conversions[key])


def _evaluate(s: _State, profile: Profile) -> None:
    from edgekit.pipeline import evaluate

    key = (*_dtypes(profile), profile.host_delegate)  # the device's kernels: an MCU's round unlike XNNPACK's
    if key not in s.evaluations:
        s.evaluations[key] = evaluate.evaluate_tflite(
            s.work.tflite,
            s.splits.test.x,
            s.splits.test.y,
            num_classes=len(s.ds.labels),
            head=s.head,
            outputs_are=s.outputs_are,  # type: ignore[arg-type]
            delegate=profile.host_delegate,
        )
    s.work.evaluation = s.evaluations[key]


def _fit(s: _State, profile: Profile) -> None:
    from edgekit.fit import check

    s.work.fit = check.check_fit(s.work.tflite, profile, name=s.name)
    if not s.keep_going:
        check.require_fit(s.work.fit)  # FitError with every failed check's numbers


def _bundle(s: _State, profile: Profile) -> None:
    from edgekit.fit import check
    from edgekit.package.writer import write_bundle
    from edgekit.pipeline import data
    from edgekit.pipeline.reference import compute_reference

    conv, ev, fit = s.work.conversion, s.work.evaluation, s.work.fit
    assert ev is not None and fit is not None, "the bundle step runs after the profile's evaluate and fit steps"
    tflite = conv.tflite
    qat = bool(conv.qat_ran)
    built = ProfileBuild(
        profile=profile.name,
        directory=None,
        archive=None,
        float_accuracy=s.float_accuracy,
        int8_accuracy=float(ev.accuracy),
        samples=int(ev.samples),
        int8_bytes=len(tflite),
        float_tflite_bytes=conv.float_bytes,
        qat=qat,
        fits=fit.fits,
        fit_summary=fit.summary(),
        chance=ev.chance,
        exact_match=ev.exact_match,
    )
    if not fit.fits:  # keep_going: report it, but never ship a bundle that does not fit
        from edgekit.package.writer import remove_bundle

        # Nor leave an earlier build's bundle for this profile behind: OUT/*.tar.gz must all be current.
        for path in remove_bundle(s.out, s.name, profile.name):
            s.report(f"removed the earlier bundle {path}")
        s.built.append(built)
        return

    test = s.splits.test
    ref = compute_reference(
        tflite,
        s.splits.train.x,
        test.x,
        len(s.ds.labels),
        outputs_are=s.outputs_are,  # type: ignore[arg-type]
        head=s.head,
    )
    metrics = {
        "float_accuracy": round(s.float_accuracy, 6),
        "int8_accuracy": round(float(ev.accuracy), 6),
        "accuracy_drop_points": round(100.0 * (s.float_accuracy - float(ev.accuracy)), 3),
        "samples": int(ev.samples),
        "split": {"seed": s.seed, "train": round(1 - SPLIT["val"] - SPLIT["test"], 4), **SPLIT},
        "sizes": {
            "keras_bytes": _size(s.model_file),
            "float_tflite_bytes": conv.float_bytes,
            "int8_tflite_bytes": len(tflite),
            "int8_float_ratio": round(len(tflite) / conv.float_bytes, 4) if conv.float_bytes else None,
        },
        "qat": qat,
        "quantization": {
            "kept": conv.kept,
            "ptq_int8_accuracy": conv.ptq_int8_accuracy,
            "qat_int8_accuracy": conv.qat_int8_accuracy,
            "measured_on": conv.eval_split,
            "representative_samples": conv.representative_samples,
        },
        "prune": _prune_metrics(s),
        "arch": s.trained_arch,
        "max_accuracy_drop": s.max_accuracy_drop,
    }
    if ev.multilabel:  # int8_accuracy above is the mean per-label accuracy
        metrics["multilabel"] = {
            "int8_exact_match": ev.exact_match,
            "per_label": dict(zip(s.ds.labels, ev.per_label())),
        }
    if s.backbone is not None:
        metrics["backbone"] = {**s.backbone.to_dict(), "fine_tune_epochs": s.fine_tune}
    extra_files = check.bundle_artifacts(tflite, fit, s.name, s.ds.spec)  # MCU C sources, the Edge TPU model
    if fit.target == "mcu" and isinstance(s.splits.spec, SensorSpec):
        from edgekit.fit.mcu import sensor_header

        extra_files.update(sensor_header(tflite, s.splits.spec, s.name))
    n = min(GOLDEN_SAMPLES, len(test.y))
    info = write_bundle(
        s.out,
        name=s.name,
        profile=profile,
        tflite=tflite,
        preprocess=s.splits.spec,  # a sensor spec's mean/std come from the training split
        labels=list(s.ds.labels),
        golden_x=test.x[:n],
        golden_y=data.label_masks(test.y[:n]) if s.ds.multilabel else test.y[:n],
        golden_raw=test.raw[:n] if test.raw is not None else None,
        version=s.version,
        metrics=metrics,
        fit=fit.to_dict() if fit is not None else None,
        reference=ref.to_dict(),
        extra_files=extra_files,
        outputs_are=ref.outputs_are,
        head=s.head,
    )
    s.built.append(replace(built, directory=info.directory, archive=info.archive, manifest=info.manifest))


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the converter of a recurrent model runs in one)."""
    own = time.process_time()
    try:
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own + ru.ru_utime + ru.ru_stime
    except ImportError:  # Windows has no resource module: own CPU time only
        return own


def _size(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    if path.is_dir():  # a SavedModel directory
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _backbone_choice(
    name: str | None,
    weights: str | Path | None,
    fine_tune: int,
    alpha: float | None,
    image_size: tuple[int, int] | None,
    model_path: Path | None,
    arch: str,
    profiles: Sequence[Profile],
) -> BackboneChoice | None:
    """The checked backbone, its ImageNet weights fetched now: being offline fails in seconds, not after loading."""
    if name is None:
        given = [
            flag for flag, v in (("--backbone-weights", weights), ("--alpha", alpha), ("--image-size", image_size)) if v
        ]
        if given or fine_tune:
            raise UsageError(
                f"{', '.join(given or ['--fine-tune'])}: only for a pretrained backbone; add --backbone mobilenet_v2."
            )
        return None
    if model_path is not None or arch != "auto":
        raise UsageError("--backbone trains a new model: it does not combine with --model or --arch.")
    if fine_tune < 0:
        raise UsageError(f"fine-tune epochs cannot be negative, got {fine_tune}.")
    from edgekit.pipeline import backbones

    choice = backbones.choose(name, alpha=alpha, size=image_size, weights=weights, profiles=profiles)
    if choice.weights is None:
        backbones.imagenet_weights(choice)
    return choice


# --- the public function ----------------------------------------------------------------------------
def plan(
    prune: float | None, profiles: Sequence[Profile], from_model: bool
) -> list[tuple[str, Callable[[_State], None]]]:
    """The steps :func:`build` will run, as (label, callable) pairs: a table, not an if-chain."""
    # A model file is loaded first: its input decides the size and colour mode the dataset is loaded at.
    steps: list[tuple[str, Callable[[_State], None]]] = (
        [("load the model", _load_model), ("load and split the dataset", _load_data)]
        if from_model
        else [("load and split the dataset", _load_data), ("train", _train)]
    )
    if prune:
        steps.append((f"prune to {prune:.0%} sparsity", _prune))
    steps.append(("save and evaluate the float model", _save_model))
    per_profile = (("convert", _convert), ("evaluate int8", _evaluate), ("check fit", _fit), ("write bundle", _bundle))
    for p in profiles:
        steps += [(f"{label} ({p.name})", functools.partial(fn, profile=p)) for label, fn in per_profile]
    return steps


def default_name(dataset: Path) -> str:
    """The bundle name for a dataset: its folder (or file stem), reduced to safe characters."""
    stem = dataset.name if dataset.is_dir() else dataset.stem
    return _NAME_OK.sub("-", stem).strip("-.") or "model"


def build(
    dataset: str | Path,
    profiles: Sequence[str | Path | Profile],
    out: str | Path,
    *,
    model: str | Path | None = None,
    epochs: int | None = None,
    prune: float | None = None,
    max_accuracy_drop: float = 1.0,
    keep_going: bool = False,
    name: str | None = None,
    version: str = "1.0.0",
    seed: int = 0,
    arch: str = "auto",
    backbone: str | None = None,
    backbone_weights: str | Path | None = None,
    fine_tune: int = 0,
    alpha: float | None = None,
    image_size: tuple[int, int] | None = None,
    head: str | None = None,
    threshold: float | None = None,
    windowing: Windowing | None = None,
    on_progress: Callable[[BuildProgress], None] | None = None,
) -> BuildResult:
    """Build one verified full-int8 bundle per profile from a dataset (and optionally a model file).

    Profiles are names of shipped profiles, paths to TOML files or :class:`Profile` objects; all are
    loaded before any work starts, so a typo fails in milliseconds. Raises :class:`DatasetError`,
    :class:`ModelError`, :class:`ProfileError`, :class:`ConversionError` / :class:`QuantizationError`
    and :class:`FitError` (unless ``keep_going``, which skips a profile that does not fit and records it).

    ``backbone`` (a key of ``edgekit.pipeline.backbones.BACKBONES``) starts from pretrained weights: Keras'
    ImageNet ones, or ``backbone_weights``; ``fine_tune`` epochs then train the top of the base too.
    ``alpha`` and ``image_size`` (height, width) default to what the profiles suit.

    ``head`` ("softmax", "sigmoid" or "multilabel") is the one to train (default: multilabel for a
    multi-label dataset, else softmax; a ``model`` file's outputs decide its own); ``threshold`` is a sigmoid
    or multilabel head's (default 0.5), a :class:`UsageError` on a softmax head. Both go into the manifest.
    ``alpha`` and ``image_size`` (height, width) default to what the profiles suit. ``windowing`` cuts a folder
    of CSV sensor recordings (:mod:`edgekit.pipeline.sensor_data`; default 2 s windows every 1 s).
    """
    started = time.perf_counter()
    if not profiles:
        raise UsageError("no profile given; name at least one (see `edgekit profiles`).")
    loaded = [p if isinstance(p, Profile) else load_profile(p) for p in profiles]
    if len({p.name for p in loaded}) != len(loaded):
        raise UsageError(f"profile given twice: {[p.name for p in loaded]}.")
    dataset = Path(dataset)
    if not dataset.exists():
        from edgekit.pipeline.data import missing_dataset

        # A typo gets "did you mean" the folders that exist; only a path like no other gets "make one".
        raise missing_dataset(
            dataset, "dataset folder or .npz file", f"make the demo one with `edgekit datasets digits {dataset}`."
        )
    model_path = Path(model) if model is not None else None
    if model_path is not None and not model_path.exists():
        raise ModelError(f"{model_path}: no such model file (.keras, .h5, a SavedModel directory, .tflite or .onnx).")
    if prune is not None and model_path is not None:
        from edgekit.pipeline.foreign import is_foreign  # no TensorFlow import

        if is_foreign(model_path):
            raise UsageError(f"--prune fine-tunes a Keras model; {model_path} is not one: build without --prune.")
    if prune is not None and not 0.0 < prune < 1.0:
        raise UsageError(f"prune sparsity must be a fraction between 0 and 1 (e.g. 0.5), got {prune}.")
    if epochs is not None and epochs < 1:
        raise UsageError(f"epochs must be at least 1, got {epochs}.")
    if Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out {out} is a file; give a directory for the bundles (it is created if missing).")
    if max_accuracy_drop < 0:
        raise UsageError(f"max accuracy drop is in percentage points and cannot be negative, got {max_accuracy_drop}.")
    choice = _backbone_choice(backbone, backbone_weights, fine_tune, alpha, image_size, model_path, arch, loaded)

    state = _State(
        dataset=dataset,
        out=Path(out),
        profiles=loaded,
        model_path=model_path,
        epochs=epochs,
        prune=prune,
        max_accuracy_drop=max_accuracy_drop,
        keep_going=keep_going,
        name=_NAME_OK.sub("-", name) if name else default_name(dataset),
        version=version,
        seed=seed,
        arch=arch,
        backbone=choice,
        fine_tune=fine_tune,
        head_kind=head,
        threshold=threshold,
        windowing=windowing,
    )
    steps = plan(prune, loaded, model_path is not None)
    notify = on_progress or (lambda event: None)
    timings: list[tuple[str, float, float]] = []
    for i, (label, step) in enumerate(steps, start=1):
        state.report = lambda detail, i=i, label=label: notify(BuildProgress(i, len(steps), label, detail))
        notify(BuildProgress(i, len(steps), label))
        t0, c0 = time.perf_counter(), _cpu_seconds()
        step(state)
        timings.append((label, time.perf_counter() - t0, _cpu_seconds() - c0))
    notify(BuildProgress(len(steps), len(steps), "done"))
    state.warnings += [_near_chance(p) for p in state.built if p.near_chance]
    return BuildResult(
        name=state.name,
        version=version,
        arch=state.trained_arch,
        model_file=state.model_file or Path(),
        float_accuracy=state.float_accuracy,
        profiles=tuple(state.built),
        seconds=time.perf_counter() - started,
        step_seconds=tuple(timings),
        warnings=tuple(state.warnings),
        skipped_images=state.ds.skipped if state.ds is not None else (),
    )


def _near_chance(p: ProfileBuild) -> str:
    return (
        f"{p.profile}: held-out int8 accuracy {p.int8_accuracy:.1%} is near chance ({p.chance:.1%}, what guessing "
        f"the most common class or any class scores on these {p.samples} images): the model has not learned to "
        "tell the classes apart. Do not deploy it; add images per class, train longer, or start from a "
        "pretrained backbone."
    )


__all__ = ["BuildProgress", "BuildResult", "ProfileBuild", "build", "default_name", "plan"]
