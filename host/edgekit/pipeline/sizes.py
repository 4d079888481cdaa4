"""The float32 size of a model, read from its int8 ``.tflite`` instead of paid for with a second conversion.

The float32 file holds the same graph with every constant stored as float32 and no quantisation parameters, so
its size is the int8 file's, plus three bytes per int8 weight (four per constant element in all), minus the
scales and zero points. This lands within 0.5 % of a real float32 conversion (0.02 % for the digits CNN,
0.4 % for MobileNetV2, whose per-channel parameters are a larger share; docs/pipeline.md, Convert).
"""

from __future__ import annotations

import math

from edgekit.fit import tflite_graph

_SCALE_BYTES, _ZERO_POINT_BYTES = 4, 8  # float32 scales, int64 zero points in the flatbuffer


def float32_bytes(int8_tflite: bytes, name: str = "model") -> int:
    """The size in bytes of the float32 ``.tflite`` of the model whose full-int8 conversion is ``int8_tflite``."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    graph = tflite_graph.read_graph(int8_tflite, name)  # a ModelError naming ``name`` when it is not a .tflite
    widened = sum(4 * math.prod(max(d, 1) for d in t.shape) - t.nbytes for t in graph.tensors if t.constant)
    subgraph = schema.Model.GetRootAs(int8_tflite, 0).Subgraphs(0)
    quant = 0
    for i in range(subgraph.TensorsLength()):
        q = subgraph.Tensors(i).Quantization()
        if q is not None:
            quant += _SCALE_BYTES * q.ScaleLength() + _ZERO_POINT_BYTES * q.ZeroPointLength()
    return len(int8_tflite) + widened - quant
