"""MCU artifacts: the C array compiles with g++ and gives back the model byte for byte; the op resolver is exact."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from edgekit.fit.check import bundle_artifacts, check_fit
from edgekit.fit.mcu import MODEL_DATA_CC, MODEL_DATA_H, MODEL_OPS_H, add_method, mcu_artifacts
from edgekit.profiles import load_profile
from edgekit_agent.contract.errors import FitError

import fit_models

MAIN_CC = r"""
#include <cstdint>
#include <cstdio>
#include "model_data.h"
int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::FILE* f = std::fopen(argv[1], "wb");
  if (!f) return 3;
  std::fwrite(g_model_data, 1, g_model_data_len, f);
  std::fclose(f);
  std::printf("len=%u align=%u arena=%zu measured=%zu\n", g_model_data_len,
              static_cast<unsigned>(reinterpret_cast<std::uintptr_t>(g_model_data) % 16),
              kTensorArenaSize, kTensorArenaMeasuredSize);
  return 0;
}
"""


@pytest.fixture(scope="module")
def tiny_artifacts():
    model = fit_models.tiny_cnn()
    report = check_fit(model, load_profile("rp2040"), name="tiny-cnn")
    return model, report, mcu_artifacts(model, "tiny-cnn", report.arena_bytes, report.arena_with_margin, report.margin)


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_c_array_compiles_and_round_trips_exactly(tiny_artifacts, tmp_path):
    model, report, files = tiny_artifacts
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "main.cc").write_text(MAIN_CC)
    exe = tmp_path / "roundtrip"
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-Wall",
            "-Werror",
            "-o",
            str(exe),
            str(tmp_path / "main.cc"),
            str(tmp_path / MODEL_DATA_CC),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    out = subprocess.run([str(exe), str(tmp_path / "back.tflite")], check=True, capture_output=True, text=True).stdout
    assert (tmp_path / "back.tflite").read_bytes() == model
    fields = dict(kv.split("=") for kv in out.split())
    assert int(fields["len"]) == len(model)
    assert fields["align"] == "0"
    assert int(fields["arena"]) == report.arena_with_margin and int(fields["arena"]) % 16 == 0
    assert int(fields["measured"]) == report.arena_bytes


def test_hex_array_parses_back_to_the_model(tiny_artifacts):
    model, _, files = tiny_artifacts
    source = files[MODEL_DATA_CC].decode()
    body = source[source.index("{") + 1 : source.index("}")]
    data = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))
    assert data == model
    assert "alignas(16)" in source


def test_op_resolver_registers_exactly_the_used_ops(tiny_artifacts):
    _, report, files = tiny_artifacts
    header = files[MODEL_OPS_H].decode()
    calls = re.findall(r"resolver\.(Add\w+)\(\)", header)
    assert calls == ["AddConv2D", "AddMaxPool2D", "AddReshape", "AddFullyConnected"]
    assert f"kOpCount = {len(report.ops)};" in header
    assert "tflite::MicroMutableOpResolver<kOpCount>" in header


def test_bundle_artifacts_dispatch_by_target(tiny_artifacts):
    model, report, files = tiny_artifacts
    assert bundle_artifacts(model, report, "tiny-cnn") == files
    assert set(files) == {MODEL_DATA_CC, MODEL_DATA_H, MODEL_OPS_H}
    cpu = check_fit(model, load_profile("raspberry-pi-4"), name="tiny-cnn")
    assert bundle_artifacts(model, cpu, "tiny-cnn") == {}


@pytest.mark.parametrize(
    ("op", "method"),
    [
        ("CONV_2D", "AddConv2D"),
        ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"),
        ("FULLY_CONNECTED", "AddFullyConnected"),
        ("AVERAGE_POOL_2D", "AddAveragePool2D"),
        ("RESIZE_NEAREST_NEIGHBOR", "AddResizeNearestNeighbor"),
        ("RELU6", "AddRelu6"),
        ("SPACE_TO_BATCH_ND", "AddSpaceToBatchNd"),
        ("HARD_SWISH", "AddHardSwish"),
        ("CUMSUM", "AddCumSum"),
        ("BATCH_MATMUL", "AddBatchMatMul"),
    ],
)
def test_add_method_names_follow_micro_mutable_op_resolver(op, method):
    assert add_method(op) == method


def test_unknown_custom_op_is_refused():
    with pytest.raises(FitError, match="MyCustomOp"):
        add_method("MyCustomOp")
