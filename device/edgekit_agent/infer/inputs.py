"""One way in for every kind of input: :func:`make_preprocessor` picks the preprocessor the manifest's
``preprocess`` spec asks for (image, sound clip or sensor window). The agent, the self-test and the workstation's
evaluation only use the :class:`InputPipeline` interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit_agent.contract.manifest import AudioSpec, InputSpec, SensorSpec, TensorSpec


class InputPipeline(Protocol):
    """Files (paths or bytes) or raw samples → model input. ``floats`` and ``from_raw`` give the normalised float
    input without a batch axis; ``from_array`` and calling it give the quantised input with a batch axis of 1."""

    spec: InputSpec
    tensor: TensorSpec
    suffixes: tuple[str, ...]  # the files a watched folder serves with this bundle

    def floats(self, source: str | Path | bytes) -> np.ndarray: ...

    def from_raw(self, samples: object) -> np.ndarray: ...

    def from_array(self, x: np.ndarray) -> np.ndarray: ...

    def __call__(self, source: str | Path | bytes) -> np.ndarray: ...


def make_preprocessor(spec: InputSpec, tensor: TensorSpec) -> InputPipeline:
    """The preprocessor for ``spec`` and the model's first input tensor (raises :class:`InputError` when they
    do not match). Audio and sensor code is imported only by bundles that use it."""
    if isinstance(spec, AudioSpec):
        from edgekit_agent.infer.audio import AudioPreprocessor

        return AudioPreprocessor(spec, tensor)
    if isinstance(spec, SensorSpec):
        from edgekit_agent.infer.sensors import SensorPreprocessor

        return SensorPreprocessor(spec, tensor)
    from edgekit_agent.infer.preprocess import Preprocessor

    return Preprocessor(spec, tensor)
