"""Edge TPU compatibility: Coral's rules per operator, the split point, and an honest compiler status."""

from __future__ import annotations

import shutil

import pytest

from edgekit.fit.check import Verdict, bundle_artifacts, check_fit
from edgekit.fit.edgetpu import NOT_FOUND, compile_edgetpu, parse_compiler_log
from edgekit.profiles import load_profile

import fit_models

CORAL = ["coral-usb-accelerator", "coral-dev-board"]


@pytest.mark.parametrize("profile", CORAL)
def test_float_island_is_refused_with_the_op_named(profile):
    report = check_fit(fit_models.float_island_cnn(), load_profile(profile), name="island")
    assert not report.fits
    row = report.row("edgetpu")
    assert row.verdict is Verdict.FAIL and "DEQUANTIZE" in row.detail
    tpu = report.edgetpu
    names = [op.name for op in tpu.ops]
    split = names.index("DEQUANTIZE")
    assert tpu.first_unsupported == split and tpu.mapped == split
    assert all(op.runs_on == "edgetpu" for op in tpu.ops[:split])
    assert all(op.runs_on == "cpu" for op in tpu.ops[split:])
    assert not tpu.ops[names.index("CUMSUM")].supported  # float tensors and not in Coral's list
    assert tpu.ops[-1].supported and tpu.ops[-1].runs_on == "cpu"  # supported, but after the split


def test_batch_two_is_refused():
    report = check_fit(fit_models.batch2_cnn(), load_profile("coral-usb-accelerator"), name="batch2")
    assert report.edgetpu.first_unsupported == 0
    assert "batch size 2" in report.row("edgetpu").detail


def test_all_int8_cnn_maps_completely():
    report = check_fit(fit_models.tiny_cnn(), load_profile("coral-dev-board"), name="tiny")
    assert report.fits
    assert report.edgetpu.first_unsupported is None and report.edgetpu.mapped == len(report.edgetpu.ops) == 4
    assert report.row("param-cache").measured == report.edgetpu.parameter_bytes > 0


def test_compiler_absent_says_so_and_adds_no_file(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no edgetpu_compiler
    model = fit_models.tiny_cnn()
    result = compile_edgetpu(model, "tiny")
    assert not result.compiled and result.model is None
    assert result.message == NOT_FOUND
    report = check_fit(model, load_profile("coral-usb-accelerator"), name="tiny")
    assert NOT_FOUND in report.row("edgetpu").detail
    assert report.to_dict()["edgetpu"]["compiler"] == {**result.to_dict()}
    assert "model_edgetpu.tflite" not in bundle_artifacts(model, report, "tiny")


SAMPLE_LOG = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 352 ms.

Input model: model.tflite
Input size: 7.18KiB
Output model: model_edgetpu.tflite
Output size: 41.09KiB
On-chip memory used for caching model parameters: 4.21MiB
On-chip memory remaining for caching model parameters: 2.70MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 6
Operation log: model_edgetpu.log

Operator                       Count      Status

CONV_2D                        1          Mapped to Edge TPU
RESHAPE                        1          Mapped to Edge TPU
DEQUANTIZE                     1          Operation is working on an unsupported data type
CUMSUM                         1          Operation not supported
QUANTIZE                       1          Mapped to Edge TPU
FULLY_CONNECTED                1          More than one subgraph is not supported
Number of operations that will run on Edge TPU: 3
Number of operations that will run on CPU: 3
"""


def test_compiler_log_is_parsed():
    out = parse_compiler_log(SAMPLE_LOG + SAMPLE_LOG)  # stdout and the .log file can both carry it
    assert out.version == "16.0.384591198"
    assert out.ops_on_edgetpu == 3 and out.ops_on_cpu == 3
    assert out.on_chip_bytes == round(4.21 * 1024 * 1024) and out.off_chip_bytes == 0
    assert ("CUMSUM", 1, "Operation not supported") in out.op_status
    assert len(out.op_status) == 6


@pytest.mark.skipif(
    shutil.which("edgetpu_compiler") is None, reason="edgetpu_compiler not installed (x86-64 Debian only)"
)
def test_real_compiler_produces_a_model():
    result = compile_edgetpu(fit_models.tiny_cnn(), "tiny")
    assert result.compiled and result.model[4:8] == b"TFL3"
    assert result.ops_on_edgetpu is not None
