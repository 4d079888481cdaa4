"""Fit checks against real TFLite Micro and real converted models: the arena is exact, misfits carry numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgekit.fit.check import Verdict, check_fit, require_fit
from edgekit.fit.tflm import measure_arena, tflm_agreement
from edgekit.profiles import load_all_profiles, load_profile, load_profile_file
from edgekit_agent.contract.errors import ExitStatus, FitError, ModelError

import fit_models


def _tflm_accepts(model: bytes, size: int) -> bool:
    from tflite_micro.python.tflite_micro import runtime

    try:
        runtime.Interpreter.from_bytes(model, arena_size=size)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("make", [fit_models.tiny_cnn, fit_models.wide_cnn], ids=["tiny", "wide"])
def test_measured_arena_is_the_exact_minimum(make):
    model = make()
    m = measure_arena(model)
    assert m.exact
    assert _tflm_accepts(model, m.bytes)
    assert not _tflm_accepts(model, m.bytes - 1)
    assert not _tflm_accepts(model, m.bytes - 16)


def test_arena_search_starts_from_the_arena_tflm_recorded():
    # The allocation record at the first accepted size brackets the minimum within 16 bytes: a handful of
    # probes, where a bisection from the 1 KiB floor takes about 17.
    m = measure_arena(fit_models.wide_cnn())
    assert m.exact and m.probes <= 8


def test_arena_with_margin_is_what_the_report_compares():
    model = fit_models.tiny_cnn()
    profile = load_profile("stm32h743")
    report = check_fit(model, profile, name="tiny")
    arena = measure_arena(model).bytes
    assert report.arena_bytes == arena
    assert report.arena_with_margin == math.ceil(arena * (1 + profile.margin) / 16) * 16
    row = report.row("arena")
    assert row.measured == report.arena_with_margin
    assert row.headroom == profile.ram_bytes - report.arena_with_margin
    assert report.fits


def test_model_too_big_for_the_nano_fails_with_numbers():
    model = fit_models.wide_cnn()
    nano = load_profile("arduino-nano-33-ble-sense")
    report = check_fit(model, nano, name="wide")
    assert not report.fits
    row = report.row("arena")
    assert row.verdict is Verdict.FAIL
    assert row.measured > nano.ram_bytes and row.headroom == nano.ram_bytes - row.measured
    assert f"{nano.ram_bytes:,} B" in row.detail and f"{row.measured:,} B" in row.detail
    with pytest.raises(FitError) as err:
        require_fit(report)
    msg = str(err.value)
    assert "wide" in msg and nano.name in msg and f"{-row.headroom:,} B" in msg
    assert err.value.exit_status is ExitStatus.DOES_NOT_FIT
    # The same model fits the 512 KiB AXI bank of the STM32H743: the check discriminates.
    assert check_fit(model, load_profile("stm32h743"), name="wide").fits


def test_op_missing_from_the_firmware_op_set_is_named():
    report = check_fit(fit_models.gap_cnn(), load_profile("arduino-nano-33-ble-sense"), name="gap")
    row = report.row("ops")
    assert row.verdict is Verdict.FAIL
    assert "MEAN" in row.detail and "AddMean()" in row.what_to_try
    assert "CONV_2D" not in row.detail  # registered ops are not blamed
    assert check_fit(fit_models.gap_cnn(), load_profile("stm32h743"), name="gap").row("ops").verdict is Verdict.OK


def _write_profile(tmp_path: Path, ops: list[str], flash: int = 1_000_000, runtime: int = 0) -> Path:
    path = tmp_path / "tiny-mcu.toml"
    path.write_text(
        'name = "tiny-mcu"\ntarget = "mcu"\n[memory]\n'
        f"ram_bytes = 65536\nflash_bytes = {flash}\nruntime_flash_bytes = {runtime}\nmargin = 0.1\n"
        f"[ops]\nbuiltin = {json.dumps(ops)}\n"
    )
    return path


def test_custom_profile_op_set_and_flash_budget(tmp_path):
    model = fit_models.tiny_cnn()
    profile = load_profile_file(_write_profile(tmp_path, ["CONV_2D", "MAX_POOL_2D", "RESHAPE"]))
    row = check_fit(model, profile).row("ops")
    assert row.verdict is Verdict.FAIL and "FULLY_CONNECTED" in row.detail
    flash = len(model) + 1000 - 1  # one byte short for the model plus a 1000-byte runtime
    ops = ["CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED"]
    tight = load_profile_file(_write_profile(tmp_path, ops, flash=flash, runtime=1000))
    report = check_fit(model, tight)
    assert report.row("flash").verdict is Verdict.FAIL and report.row("flash").headroom == -1
    assert report.row("ops").verdict is Verdict.OK
    roomy = load_profile_file(_write_profile(tmp_path, ops, flash=flash + 1, runtime=1000))
    assert check_fit(model, roomy).row("flash").headroom == 0


def test_every_shipped_profile_checks_the_tiny_model():
    model = fit_models.tiny_cnn()
    reports = [check_fit(model, p, name="tiny") for p in load_all_profiles()]
    targets = {r.target for r in reports}
    assert targets == {"cpu", "mcu", "edgetpu"}
    assert all(r.fits for r in reports), [r.summary() for r in reports if not r.fits]
    doc = json.loads(json.dumps([r.to_dict() for r in reports]))
    assert all(d["fits"] and d["checks"] for d in doc)


def test_input_dtype_mismatch_fails(tmp_path):
    path = tmp_path / "u8.toml"
    path.write_text(
        'name = "u8"\ntarget = "cpu"\n[tensors]\ninput_dtype = "uint8"\n'
        "[memory]\nram_bytes = 1000000\nflash_bytes = 1000000\n"
    )
    row = check_fit(fit_models.tiny_cnn(), load_profile_file(path)).row("dtypes")
    assert row.verdict is Verdict.FAIL and "uint8" in row.detail


def test_not_a_model_is_a_model_error():
    with pytest.raises(ModelError, match="not a TFLite model"):
        check_fit(b"not a flatbuffer at all", load_profile("rp2040"), name="junk.bin")


def test_tflm_agrees_with_litert_on_top1():
    model = fit_models.tiny_cnn()
    x = np.random.default_rng(1).integers(-128, 128, size=(24, 8, 8, 1), dtype=np.int8)
    agreement = tflm_agreement(model, x)
    assert 0.9 <= agreement <= 1.0


def test_golden_inputs_add_the_tflm_agreement_row_for_mcus():
    model = fit_models.tiny_cnn()
    x = np.random.default_rng(2).random((12, 8, 8, 1), dtype=np.float32)  # float: quantised by the check
    report = check_fit(model, load_profile("esp32-s3"), name="tiny", golden_inputs=x)
    row = report.row("tflm-agreement")
    assert report.tflm_agreement == row.measured and 0.9 <= report.tflm_agreement <= 1.0
    assert report.to_dict()["tflm_agreement"] == report.tflm_agreement
    cpu = check_fit(model, load_profile("raspberry-pi-4"), name="tiny", golden_inputs=x)
    assert cpu.tflm_agreement is None and "tflm-agreement" not in [r.check for r in cpu.rows]


def test_tflm_abort_is_a_failed_check_not_a_dead_process():
    """TFLite Micro aborts (SIGABRT) on a softmax whose input has no range; the check survives and says why."""
    model = fit_models.dead_logits_cnn()
    report = check_fit(model, load_profile("rp2040"), name="dead-logits")
    row = report.row("arena")
    assert row.verdict is Verdict.FAIL and row.measured == "unmeasurable"
    assert "SIGABRT" in row.detail and "SOFTMAX #3" in row.detail
    assert report.arena_bytes is None and not report.fits
    with pytest.raises(ModelError, match="crashed"):
        measure_arena(model, "dead-logits")
    # LiteRT runs it; the CPU profile's RAM check falls back to the activation sum.
    cpu = check_fit(model, load_profile("raspberry-pi-4"), name="dead-logits")
    assert cpu.fits and "all activation tensors" in cpu.row("ram").detail


def test_tflm_reproduces_the_bundle_golden_outputs(digits_bundle):
    """The workstation's golden outputs (LiteRT) come back from TFLite Micro within the manifest's tolerance."""
    from edgekit.fit.tflm import tflm_outputs

    golden = np.load(digits_bundle / "golden.npz")
    model = (digits_bundle / "model.tflite").read_bytes()
    tolerance = json.loads((digits_bundle / "manifest.json").read_text())["golden"]["tolerance"]
    outs = tflm_outputs(model, golden["inputs"])
    assert outs.shape == golden["outputs"].shape and outs.dtype == golden["outputs"].dtype
    assert np.abs(outs.astype(np.int64) - golden["outputs"].astype(np.int64)).max() <= tolerance
    assert tflm_agreement(model, golden["inputs"]) >= 0.9


def test_model_too_big_for_the_nano_flash_fails_with_numbers():
    model = fit_models.heavy_dense()
    nano = load_profile("arduino-nano-33-ble-sense")
    report = check_fit(model, nano, name="heavy")
    flash = report.row("flash")
    assert flash.verdict is Verdict.FAIL
    assert flash.measured == len(model) + nano.runtime_flash_bytes
    assert flash.headroom == nano.flash_bytes - flash.measured < 0
    assert report.row("arena").verdict is Verdict.OK  # the arena is small: only flash is over
    assert f"over by {-flash.headroom:,} B" in flash.detail
    assert check_fit(model, load_profile("stm32h743"), name="heavy").fits  # 2 MiB of flash is enough
