"""Full-integer post-training quantisation, checked: lint, accuracy against float, and QAT when it is needed.

The converter can crash its process on recurrent layers (docs/pipeline.md, Convert), so a model holding one is
converted in a child process (:mod:`edgekit.pipeline._convert_worker`); any other model runs the same worker code in
this process, where TensorFlow is already imported, and a Keras 3 model is handed over as it is (not saved and
loaded again: the same bytes come out). A crash or a converter exception becomes a
:class:`ConversionError` that says what to do.
Calibration data always comes from the caller (never a default dataset), drawn with a seed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.pipeline.data import Splits
from edgekit.pipeline.evaluate import evaluate_keras, evaluate_tflite, head_for_width
from edgekit.pipeline.lint import LintReport, lint_full_int8
from edgekit.pipeline.sizes import float32_bytes
from edgekit.profiles import Profile
from edgekit_agent.contract.errors import ConversionError, DatasetError, ModelError
from edgekit_agent.contract.manifest import HeadSpec

# The worker command; a list so tests can point it at a process that really crashes.
WORKER_COMMAND: list[str] = [sys.executable, "-m", "edgekit.pipeline._convert_worker"]
EXIT_CONVERTER_ERROR = 3
# Layer classes the converter is known to segfault on under quantisation (Keras 3 LSTM/GRU); matched against every
# class a layer inherits from, so subclasses and wrappers such as Bidirectional count too.
CRASH_PRONE_LAYERS = re.compile(r"RNN|LSTM|GRU|Bidirectional")
DEFAULT_TIMEOUT_S = 900
StageFn = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ConversionResult:
    """A converted model and what was measured on it. Accuracies are fractions in [0, 1].

    ``kept`` says which int8 model ``tflite`` is: ``"ptq"`` (post-training quantisation) or ``"qat"``
    (quantisation-aware training, run when PTQ lost more than the allowed accuracy).
    """

    tflite: bytes = field(repr=False)
    float_tflite: bytes = field(repr=False)  # empty unless asked for (``with_float``)
    float_bytes: int  # the float32 .tflite's size: ``float_tflite``'s, else computed (edgekit.pipeline.sizes)
    lint: LintReport = field(repr=False)
    input_dtype: str
    output_dtype: str
    representative_samples: int
    seconds: float
    float_accuracy: float | None = None
    int8_accuracy: float | None = None
    ptq_int8_accuracy: float | None = None
    qat_int8_accuracy: float | None = None
    qat_ran: bool = False
    kept: str = "ptq"
    eval_split: str = ""
    eval_samples: int = 0

    @property
    def qat_used(self) -> bool:
        """True when the kept model came from quantisation-aware training."""
        return self.kept == "qat"

    @property
    def size_ratio(self) -> float:
        """int8 bytes / float32 bytes of the same model (ideal: a little over 0.25)."""
        return len(self.tflite) / self.float_bytes if self.float_bytes else float("nan")

    @property
    def accuracy_drop(self) -> float | None:
        """Float minus kept int8 accuracy, in percentage points."""
        if self.float_accuracy is None or self.int8_accuracy is None:
            return None
        return round(100.0 * (self.float_accuracy - self.int8_accuracy), 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "int8_bytes": len(self.tflite),
            "float_tflite_bytes": self.float_bytes,
            "size_ratio": round(self.size_ratio, 4),
            "input_dtype": self.input_dtype,
            "output_dtype": self.output_dtype,
            "representative_samples": self.representative_samples,
            "float_accuracy": self.float_accuracy,
            "int8_accuracy": self.int8_accuracy,
            "ptq_int8_accuracy": self.ptq_int8_accuracy,
            "qat_int8_accuracy": self.qat_int8_accuracy,
            "accuracy_drop_points": self.accuracy_drop,
            "qat_ran": self.qat_ran,
            "kept": self.kept,
            "eval_split": self.eval_split,
            "eval_samples": self.eval_samples,
            "seconds": round(self.seconds, 2),
            "lint": self.lint.to_dict(),
        }


# --- the child process -----------------------------------------------------------------------------
def _export(model: Any, workdir: Path, stem: str = "model") -> tuple[str, str]:
    """Write ``model`` where the worker can load it with a batch of 1: (path, format)."""
    from edgekit.pipeline import zoo

    if isinstance(model, (str, Path)):
        from edgekit.pipeline.train import load_model

        model = load_model(model)
    if zoo.is_tf_keras(model):
        # tf_keras models (QAT, pruned) go as a SavedModel whose signature fixes the batch at 1; a
        # SavedModel carries the fake-quant ops of a QAT model without any custom-object registry.
        import tensorflow as tf

        shape = [1, *[int(s) for s in model.inputs[0].shape[1:]]]
        fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(shape, tf.float32))
        path = workdir / f"{stem}_savedmodel"
        tf.saved_model.save(model, str(path), signatures=fn)
        return str(path), "saved_model"
    path = workdir / f"{stem}.keras"
    zoo.with_fixed_batch(model, 1).save(path)
    return str(path), "keras"


def _crash_message(rc: int, stderr: str, what: str) -> str:
    try:
        sig = signal.Signals(-rc).name
    except ValueError:
        sig = f"signal {-rc}"
    tail = "\n".join(stderr.strip().splitlines()[-5:])
    return (
        f"the TFLite converter crashed ({sig}) while converting {what}. This is a converter bug (known for "
        "Keras 3 LSTM/GRU layers under quantisation): replace the layer (e.g. unroll it or use Conv1D), "
        "or build the model with tf_keras and save it as .h5, then convert again."
        + (f"\nlast converter output:\n{tail}" if tail else "")
    )


def needs_isolation(model: Any) -> bool:
    """True when ``model`` must be converted in a child process: it holds a layer the converter is known to crash
    on (:data:`CRASH_PRONE_LAYERS`), or its layers cannot be listed (e.g. a SavedModel without Keras layers)."""
    flatten = getattr(model, "_flatten_layers", None)  # Keras 3 and tf_keras: nested models and wrapped layers
    if flatten is None:
        return True
    return any(
        CRASH_PRONE_LAYERS.search(cls.__name__) for layer in flatten(include_self=True) for cls in type(layer).__mro__
    )


def run_worker(
    job: dict[str, Any],
    workdir: Path,
    *,
    what: str = "the model",
    timeout: float = DEFAULT_TIMEOUT_S,
    isolate: bool = True,
    models: dict[str, Any] | None = None,
) -> None:
    """Run one conversion job, in a child process with ``isolate`` (else here, where ``models`` are the in-memory
    models its ``"memory"`` tasks name); raise :class:`ConversionError` on a converter failure or crash."""
    from edgekit.pipeline import _convert_worker

    job_path = workdir / "job.json"
    job_path.write_text(json.dumps(job))
    if not isolate:
        # Keras's export prints its signatures to stdout, which would land in `--json` output.
        with contextlib.redirect_stdout(io.StringIO()):
            rc = _convert_worker.run(str(job_path), models)
        _raise_for_exit(rc, "", workdir, what)
        return
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)  # the worker loads Keras 3 models with Keras 3
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONFAULTHANDLER"] = "1"  # a segfault prints the Python stack to stderr, quoted in the error
    try:
        proc = subprocess.run(
            [*WORKER_COMMAND, str(job_path)], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        raise ConversionError(
            f"the TFLite converter did not finish converting {what} within {timeout:.0f} s; "
            "try a smaller model or fewer representative samples (--representative-samples)."
        ) from None
    _raise_for_exit(proc.returncode, proc.stderr, workdir, what)


def _raise_for_exit(rc: int, stderr: str, workdir: Path, what: str) -> None:
    """A :class:`ConversionError` for the worker's exit code ``rc`` (negative: the signal that killed it)."""
    if rc == 0:
        return
    if rc < 0:
        raise ConversionError(_crash_message(rc, stderr, what))
    error_file = workdir / "error.txt"
    if rc == EXIT_CONVERTER_ERROR and error_file.is_file():
        first = error_file.read_text().strip().splitlines()[0][:600]
        raise ConversionError(
            f"the TFLite converter failed on {what}: {first}. Check that every layer has a TFLite builtin "
            "equivalent (`edgekit inspect` lists a converted model's operators) and that the model loads with "
            "keras.models.load_model."
        )
    tail = "\n".join(stderr.strip().splitlines()[-5:])
    raise ConversionError(f"the converter for {what} exited with code {rc}" + (f":\n{tail}" if tail else "."))


def _representative(x: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 3 or len(x) == 0:  # (N, H, W, C) images, (N, window, channels) sensor windows
        raise DatasetError(
            "full-integer conversion needs representative samples (N, ...) from the training data to "
            f"calibrate activation ranges; got shape {x.shape}. edgekit never calibrates on made-up data."
        )
    n = min(int(num_samples), len(x))
    if n < 1:
        raise DatasetError(f"num_samples must be at least 1, got {num_samples}.")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    return x[idx]


def convert_int8(
    model: Any,
    representative_x: np.ndarray,
    *,
    input_dtype: str = "int8",
    output_dtype: str = "int8",
    num_samples: int = 200,
    seed: int = 0,
    strict: bool = True,
    with_float: bool = False,
    name: str = "model",
    timeout: float = DEFAULT_TIMEOUT_S,
) -> ConversionResult:
    """Full-integer PTQ of a Keras model (Keras 3, tf_keras, or a model file path).

    ``num_samples`` representative inputs are drawn from ``representative_x`` with ``seed``. ``with_float``
    also converts to float32 (``float_tflite``); without it the float32 size is computed. The result
    is linted; with ``strict`` (the default) float islands or wrong input/output dtypes raise
    :class:`QuantizationError` naming the operators.
    """
    return convert_int8_many(
        [model],
        representative_x,
        input_dtype=input_dtype,
        output_dtype=output_dtype,
        num_samples=num_samples,
        seed=seed,
        strict=strict,
        with_float=with_float,
        names=[name],
        timeout=timeout,
    )[0]


def convert_int8_many(
    models: Sequence[Any],
    representative_x: np.ndarray,
    *,
    input_dtype: str = "int8",
    output_dtype: str = "int8",
    num_samples: int = 200,
    seed: int = 0,
    strict: bool = True,
    with_float: bool = False,
    names: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[ConversionResult]:
    """:func:`convert_int8` for several models in one worker run (one child process when any needs isolation).

    All models are calibrated on the same representative sample, so their results compare like with like
    (e.g. before and after pruning).
    """
    if input_dtype not in ("int8", "uint8") or output_dtype not in ("int8", "uint8"):
        raise ModelError(f"input/output dtype must be int8 or uint8, got {input_dtype}/{output_dtype}.")
    from edgekit.pipeline import zoo

    names = list(names or [f"model {i + 1}" for i in range(len(models))])
    start = time.perf_counter()
    if any(isinstance(m, (str, Path)) for m in models):
        from edgekit.pipeline.train import load_model

        models = [load_model(m) if isinstance(m, (str, Path)) else m for m in models]
    rep = _representative(representative_x, num_samples, seed)
    outputs: list[tuple[bytes, bytes]] = []
    isolate = any(needs_isolation(m) for m in models)
    in_memory: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as tmp:
        work = Path(tmp)
        np.save(work / "representative.npy", rep)
        tasks = []
        for i, model in enumerate(models):
            if isolate or zoo.is_tf_keras(model):  # tf_keras models go as a SavedModel (see _export)
                path, fmt = _export(model, work, stem=f"model{i}")
            else:
                path, fmt = f"model{i}", "memory"
                in_memory[path] = zoo.with_fixed_batch(model, 1)
            tasks.append(
                {
                    "kind": "int8",
                    "model": path,
                    "format": fmt,
                    "input_dtype": input_dtype,
                    "output_dtype": output_dtype,
                    "out": str(work / f"int8_{i}.tflite"),
                }
            )
            if with_float:
                tasks.append({"kind": "float", "model": path, "format": fmt, "out": str(work / f"float_{i}.tflite")})
        job = {"representative": str(work / "representative.npy"), "tasks": tasks}
        run_worker(job, work, what=", ".join(names), timeout=timeout, isolate=isolate, models=in_memory)
        for i in range(len(models)):
            outputs.append(
                (
                    (work / f"int8_{i}.tflite").read_bytes(),
                    (work / f"float_{i}.tflite").read_bytes() if with_float else b"",
                )
            )
    seconds = time.perf_counter() - start
    results = []
    for name, (tflite, float_tflite) in zip(names, outputs):
        report = lint_full_int8(
            tflite, input_dtype=input_dtype, output_dtype=output_dtype, strict=strict, name=f"{name} (int8)"
        )
        results.append(
            ConversionResult(
                tflite=tflite,
                float_tflite=float_tflite,
                float_bytes=len(float_tflite) or float32_bytes(tflite, name),
                lint=report,
                input_dtype=input_dtype,
                output_dtype=output_dtype,
                representative_samples=int(len(rep)),
                seconds=seconds,
            )
        )
    return results


# --- per-layer quantisation error ------------------------------------------------------------------
def run_debugger(
    model: Any, representative_x: np.ndarray, *, num_samples: int = 100, seed: int = 0
) -> list[dict[str, Any]]:
    """Rows of TF's QuantizationDebugger layer statistics, computed in the converter's child process."""
    rep = _representative(representative_x, num_samples, seed)
    with tempfile.TemporaryDirectory(prefix="edgekit-debug-") as tmp:
        work = Path(tmp)
        model_path, fmt = _export(model, work)
        np.save(work / "representative.npy", rep)
        out = work / "layers.json"
        job = {
            "representative": str(work / "representative.npy"),
            "tasks": [
                {
                    "kind": "debug",
                    "model": model_path,
                    "format": fmt,
                    "input_dtype": "int8",
                    "output_dtype": "int8",
                    "out": str(out),
                }
            ],
        }
        run_worker(job, work, what="the model (quantisation debugger)")
        return list(json.loads(out.read_text()))


@dataclass(frozen=True, slots=True)
class LayerError:
    """Quantisation error of one layer's output (TF QuantizationDebugger), ``rmse_over_scale`` ranks them."""

    op: str
    tensor: str
    rmse_over_scale: float
    mean_error: float
    max_abs_error: float
    scale: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "tensor": self.tensor,
            "rmse_over_scale": self.rmse_over_scale,
            "mean_error": self.mean_error,
            "max_abs_error": self.max_abs_error,
            "scale": self.scale,
        }


def per_layer_errors(
    model: Any, representative_x: np.ndarray, top: int = 10, *, num_samples: int = 100, seed: int = 0
) -> list[LayerError]:
    """The ``top`` layers with the largest quantisation error (RMSE in units of the layer's output scale).

    A value near 0.3 is plain rounding noise (uniform error of one step has RMSE 1/√12 ≈ 0.29); much more
    points at a layer whose range int8 cannot hold well. Runs TF's QuantizationDebugger in the converter's
    subprocess (it invokes the converter).
    """
    rows = run_debugger(model, representative_x, num_samples=num_samples, seed=seed)
    errors = []
    for r in rows:
        scale = float(r.get("scale") or 0.0)
        mse = float(r.get("mean_squared_error") or 0.0)
        errors.append(
            LayerError(
                op=str(r.get("op", "")),
                tensor=str(r.get("tensor", "")),
                rmse_over_scale=float(np.sqrt(mse) / scale) if scale else float("nan"),
                mean_error=float(r.get("mean_error") or 0.0),
                max_abs_error=float(r.get("max_abs_error") or 0.0),
                scale=scale,
            )
        )
    errors.sort(key=lambda e: -np.nan_to_num(e.rmse_over_scale, nan=-1.0))
    return errors[:top]


# --- quantisation-aware training ---------------------------------------------------------------------
def quantization_aware_training(
    model: Any, splits: Splits, *, epochs: int = 3, seed: int = 0, learning_rate: float = 1e-4, batch_size: int = 32
) -> Any:
    """Fine-tune a copy of ``model`` with fake quantisation (tfmot, on tf_keras: docs/pipeline.md, Convert),
    with the loss of its head: cross-entropy over N classes, or binary cross-entropy for one sigmoid output
    or a multi-label dataset's sigmoid outputs."""
    from edgekit.pipeline import zoo

    tfmot = zoo.import_tfmot()
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    base = zoo.to_tf_keras(model)
    try:
        qat = tfmot.quantization.keras.quantize_model(base)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(
            f"model '{model.name}': quantisation-aware training does not support it ({exc}); tfmot cannot handle "
            "e.g. Conv+ReLU followed by BatchNorm. Convert with --no-qat or change the layer order to Conv→BN→ReLU."
        ) from None
    loss, targets = zoo.head_loss(base, tf_keras.losses, multilabel=splits.train.multilabel)
    qat.compile(tf_keras.optimizers.Adam(learning_rate), loss)
    qat.fit(splits.train.x, targets(splits.train.y), epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return qat


def convert_for_profile(
    model: Any,
    splits: Splits,
    profile: Profile,
    *,
    max_accuracy_drop: float = 1.0,
    qat: bool = True,
    force_qat: bool = False,
    qat_epochs: int = 3,
    num_samples: int = 200,
    seed: int = 0,
    name: str = "model",
    on_stage: StageFn | None = None,
    with_float: bool = False,
    head: HeadSpec | None = None,
    float_val_accuracy: float | None = None,
) -> ConversionResult:
    """Convert for a profile's input/output dtypes, measure float vs int8, and run QAT when PTQ loses too much.

    ``head`` decides classes for the accuracy figures (default: what the model's output width says; a
    multi-label dataset's is the caller's to give, with its threshold).

    Accuracy is measured on the validation split (the test split when there is none). QAT runs when
    int8 is more than ``max_accuracy_drop`` points below float (or always with ``force_qat``); the better
    int8 model is kept. The result records both figures and which was kept. ``float_val_accuracy`` is
    ``model``'s validation accuracy when the caller measured it already (training does: TrainResult.val_accuracy).
    """
    stage = on_stage or (lambda _msg: None)
    in_dt, out_dt = str(profile.input_dtype), str(profile.output_dtype)
    split_name, part = ("val", splits.val) if len(splits.val.y) else ("test", splits.test)
    if len(part.y) == 0:
        raise DatasetError("no validation or test samples to compare float and int8 accuracy; use a larger dataset.")
    stage("post-training quantisation")
    ptq = convert_int8(
        model,
        splits.train.x,
        input_dtype=in_dt,
        output_dtype=out_dt,
        num_samples=num_samples,
        seed=seed,
        with_float=with_float,
        name=name,
    )
    stage("measuring float and int8 accuracy")
    from edgekit.pipeline import zoo

    n_cls = len(splits.labels)
    # The Keras model says what its output is; the int8 model is judged the same way.
    head, kind = head or head_for_width(int(model.outputs[0].shape[-1])), zoo.outputs_are(model)
    if float_val_accuracy is not None and split_name == "val":
        float_acc = float_val_accuracy
    else:
        float_acc = evaluate_keras(model, part.x, part.y, num_classes=n_cls, head=head).accuracy
    ptq_acc = evaluate_tflite(
        ptq.tflite, part.x, part.y, num_threads=1, num_classes=n_cls, head=head, outputs_are=kind
    ).accuracy
    result = replace(
        ptq,
        float_accuracy=float_acc,
        int8_accuracy=ptq_acc,
        ptq_int8_accuracy=ptq_acc,
        eval_split=split_name,
        eval_samples=int(len(part.y)),
    )
    drop = 100.0 * (float_acc - ptq_acc)
    if not (qat and (force_qat or drop > max_accuracy_drop)):
        return result
    stage(
        f"quantisation-aware training (int8 lost {drop:.2f} points)" if not force_qat else "quantisation-aware training"
    )
    start = time.perf_counter()
    qat_model = quantization_aware_training(model, splits, epochs=qat_epochs, seed=seed)
    stage("converting the quantisation-aware model")
    qres = convert_int8(
        qat_model,
        splits.train.x,
        input_dtype=in_dt,
        output_dtype=out_dt,
        num_samples=num_samples,
        seed=seed,
        with_float=False,
        name=f"{name} (QAT)",
    )
    qat_acc = evaluate_tflite(
        qres.tflite, part.x, part.y, num_threads=1, num_classes=n_cls, head=head, outputs_are=kind
    ).accuracy
    seconds = result.seconds + (time.perf_counter() - start)
    if qat_acc > ptq_acc:
        return replace(
            result,
            tflite=qres.tflite,
            lint=qres.lint,
            int8_accuracy=qat_acc,
            qat_int8_accuracy=qat_acc,
            qat_ran=True,
            kept="qat",
            seconds=seconds,
        )
    return replace(result, qat_int8_accuracy=qat_acc, qat_ran=True, kept="ptq", seconds=seconds)
