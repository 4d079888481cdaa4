"""The interpreter shim: LiteRT, then tflite-runtime, then tensorflow.lite — whichever imports first.

Every benchmark and telemetry record carries :class:`RuntimeInfo` (engine, version, delegate, threads),
because the same int8 model runs several times faster with XNNPACK (LiteRT) than without it
(tflite-runtime 2.14 on x86), and a figure without its runtime is meaningless.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_agent.contract.errors import DelegateError, ModelError, RuntimeUnavailableError

# (engine name, module to import, attribute path of the Interpreter module) — tried in this order.
ENGINES: tuple[tuple[str, str], ...] = (
    ("litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    # `tensorflow.lite` itself is a lazy namespace without `Interpreter`; this module has it and load_delegate.
    ("tensorflow", "tensorflow.lite.python.interpreter"),
)
_VERSION_MODULES = {"litert": "ai_edge_litert", "tflite_runtime": "tflite_runtime", "tensorflow": "tensorflow"}
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """Which interpreter ran a model, and how."""

    engine: str
    version: str
    delegate: str  # "xnnpack", "none" or "edgetpu": what actually runs, not what was asked for
    num_threads: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "version": self.version,
            "delegate": self.delegate,
            "num_threads": self.num_threads,
        }


def _module_version(engine: str) -> str:
    try:
        mod = importlib.import_module(_VERSION_MODULES[engine])
    except ImportError:
        return "unknown"
    return str(getattr(mod, "__version__", "unknown"))


def load_interpreter_module(engine: str | None = None) -> tuple[str, Any]:
    """Import an interpreter module; ``engine`` forces one (``litert``, ``tflite_runtime``, ``tensorflow``).

    ``EDGEKIT_RUNTIME`` in the environment does the same as ``engine`` (useful to compare runtimes).
    """
    wanted = engine or os.environ.get("EDGEKIT_RUNTIME") or None
    names = [e for e in ENGINES if wanted is None or e[0] == wanted]
    if not names:
        raise RuntimeUnavailableError(f"unknown runtime '{wanted}'; choose one of {[e[0] for e in ENGINES]}.")
    errors = []
    for name, module in names:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - a broken install (e.g. numpy 2 with tflite-runtime) is not ImportError
            errors.append(f"{module}: {type(exc).__name__}: {exc}")
            continue
        return name, mod
    raise RuntimeUnavailableError(
        "no TFLite interpreter could be imported ("
        + "; ".join(errors)
        + "). Install one: `pip install 'edgekit[device]'` (LiteRT, 64-bit) or "
        "`pip install 'edgekit[device-legacy]'` (tflite-runtime with numpy < 2, 64-bit, Python <= 3.11)."
    )


def _interpreter_class(mod: Any) -> Any:
    return mod.Interpreter


class Runtime:
    """One loaded model, ready to invoke. Input and output tensors are raw (quantised) arrays.

    >>> rt = Runtime("model.tflite", num_threads=2)
    >>> out = rt.invoke(x_int8)       # x has the input tensor's shape and dtype
    """

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        num_threads: int | None = None,
        delegate: str = "xnnpack",
        engine: str | None = None,
        model_name: str | None = None,
    ) -> None:
        if delegate not in ("xnnpack", "none", "edgetpu"):
            raise ModelError(f"unknown delegate '{delegate}'; use 'xnnpack', 'none' or 'edgetpu'.")
        self.engine, mod = load_interpreter_module(engine)
        self.model_name = model_name or (str(model) if not isinstance(model, bytes) else "<bytes>")
        threads = int(num_threads) if num_threads else (os.cpu_count() or 1)
        kwargs: dict[str, Any] = {"num_threads": threads}
        if isinstance(model, bytes):
            kwargs["model_content"] = model
        else:
            kwargs["model_path"] = str(model)
        if delegate == "none":
            kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif delegate == "edgetpu":
            kwargs["experimental_delegates"] = [self._edgetpu_delegate(mod)]
        try:
            self._interp = _interpreter_class(mod)(**kwargs)
            self._interp.allocate_tensors()
            # Reading op and tensor names decodes strings from the file: a corrupt model raises
            # UnicodeDecodeError (a ValueError) here, so these reads belong inside the same guard.
            ops = self.ops()
            self._in = self._interp.get_input_details()
            self._out = self._interp.get_output_details()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.model_name}: the interpreter cannot load this model ({exc}).") from None
        if not self._in or not self._out:
            raise ModelError(f"{self.model_name}: the model has no input or no output tensor.")
        # tflite-runtime 2.14 accepts the XNNPACK request and then leaves int8 models to the builtin kernels
        # (docs/agent.md, "Figures"): report what ran. XNNPACK shows up as DELEGATE nodes in the execution plan.
        self.requested_delegate = delegate
        if delegate == "xnnpack" and "DELEGATE" not in ops:
            delegate = "none"
        self.info = RuntimeInfo(self.engine, _module_version(self.engine), delegate, threads)
        self._in_index = self._in[0]["index"]
        self._out_index = self._out[0]["index"]
        self.input_shape = tuple(int(s) for s in self._in[0]["shape"])
        self.input_dtype = np.dtype(self._in[0]["dtype"])
        self.output_shape = tuple(int(s) for s in self._out[0]["shape"])
        self.output_dtype = np.dtype(self._out[0]["dtype"])
        self.input_quant = tuple(self._in[0]["quantization"])  # (scale, zero_point)
        self.output_quant = tuple(self._out[0]["quantization"])
        # Bound methods looked up once: this is the per-inference hot path.
        self._set = self._interp.set_tensor
        self._invoke = self._interp.invoke
        self._get = self._interp.get_tensor

    @staticmethod
    def _edgetpu_delegate(mod: Any) -> Any:
        import platform

        lib = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
        loader: Callable[..., Any] = mod.load_delegate
        try:
            return loader(lib)
        except (OSError, ValueError) as exc:  # OSError when the library is missing, ValueError when no device
            raise DelegateError(
                f"cannot load the Edge TPU delegate {lib} ({exc}). Install libedgetpu1-std from Coral's "
                "apt repository and plug in the accelerator, or use a CPU bundle."
            ) from None

    @property
    def interpreter(self) -> Any:
        """The underlying interpreter (for op listings and tests)."""
        return self._interp

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """Run one inference on a ready input tensor (shape and dtype of the model's input); returns a copy."""
        self._set(self._in_index, x)
        self._invoke()
        return self._get(self._out_index)

    def invoke_only(self) -> None:
        """Invoke with whatever input is set (for benchmarks)."""
        self._invoke()

    def set_input(self, x: np.ndarray) -> None:
        self._set(self._in_index, x)

    def get_output(self) -> np.ndarray:
        return self._get(self._out_index)

    def dequantize_output(self, q: np.ndarray) -> np.ndarray:
        """Real-valued outputs; int64 before subtracting the zero point (as pycoral does) to avoid overflow."""
        scale, zero = self.output_quant
        if not scale:
            return q.astype(np.float32)
        return (q.astype(np.int64) - zero).astype(np.float32) * np.float32(scale)

    def ops(self) -> list[str]:
        """Operator names in execution order (private interpreter API, present in all three engines)."""
        try:
            return [op["op_name"] for op in self._interp._get_ops_details()]  # noqa: SLF001
        except AttributeError:
            return []

    def close(self) -> None:
        self._interp = None  # type: ignore[assignment]

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
