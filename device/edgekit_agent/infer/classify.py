"""Raw output tensor → class probabilities and the top-1 prediction (like pycoral's adapters/classify.py).

Whether the model ends in logits or probabilities is recorded by the workstation in
``manifest["outputs_are"]`` ("logits" or "probabilities"); softmax is applied only to logits, so
confidences on the device mean the same as the drift reference's confidence histogram.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit_agent.contract.manifest import Manifest, TensorSpec
from edgekit_agent.infer.preprocess import dequantize


@dataclass(frozen=True, slots=True)
class Prediction:
    """Top-1 class of one inference."""

    index: int
    label: str
    confidence: float  # top-1 probability in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "confidence": self.confidence}


def outputs_are(manifest: Manifest) -> str:
    """'logits' or 'probabilities' as the manifest records it; 'logits' when a manifest predates the key."""
    value = manifest.raw.get("outputs_are", "logits")
    return value if value in ("logits", "probabilities") else "logits"


def softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - np.max(x)
    e = np.exp(z)
    return (e / e.sum()).astype(np.float32)


def probabilities(raw: np.ndarray, tensor: TensorSpec, kind: str = "logits") -> np.ndarray:
    """Class probabilities (1-D) from a raw (quantised) output tensor of one sample."""
    real = dequantize(np.asarray(raw).reshape(-1), tensor)
    return softmax(real) if kind == "logits" else np.clip(real, 0.0, 1.0)


def top1(raw: np.ndarray, manifest: Manifest, labels: tuple[str, ...] | None = None) -> Prediction:
    """The top-1 :class:`Prediction` for one sample's raw output."""
    probs = probabilities(raw, manifest.outputs[0], outputs_are(manifest))
    i = int(np.argmax(probs))
    names = labels if labels is not None else manifest.labels
    return Prediction(index=i, label=names[i] if i < len(names) else str(i), confidence=float(probs[i]))
