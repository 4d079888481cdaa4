"""The MCU and Edge TPU profiles: budgets inside their datasheet figures, op sets edgekit can act on."""

from __future__ import annotations

import pytest

from edgekit.fit.edgetpu import SUPPORTED_OPS
from edgekit.fit.mcu import add_method
from edgekit.profiles import Delegate, Target, load_profile

KIB, MIB = 1024, 1024 * 1024
# Datasheet totals (RAM for the arena must come out of these; STM32H743: its largest contiguous bank).
DATASHEET = {
    "arduino-nano-33-ble-sense": (256 * KIB, 1 * MIB),
    "esp32-s3": (512 * KIB, 8 * MIB),
    "stm32h743": (512 * KIB, 2 * MIB),
    "rp2040": (264 * KIB, 2 * MIB),
}


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_mcu_budgets_fit_inside_the_datasheet(name):
    p = load_profile(name)
    ram, flash = DATASHEET[name]
    assert p.target is Target.MCU and p.delegate is Delegate.NONE
    assert 0 < p.ram_bytes <= ram and 0 < p.flash_bytes <= flash
    assert 0 < p.runtime_flash_bytes < p.flash_bytes
    assert 0.05 <= p.margin < 0.5  # a margin for target kernels is required on an MCU
    assert p.datasheet.startswith("https://")


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_mcu_op_sets_map_to_resolver_methods(name):
    ops = load_profile(name).ops
    assert ops and len(set(ops)) == len(ops)
    assert {"CONV_2D", "FULLY_CONNECTED", "RESHAPE", "SOFTMAX"} <= set(ops)
    assert all(add_method(op).startswith("Add") for op in ops)


@pytest.mark.parametrize("name", ["coral-usb-accelerator", "coral-dev-board"])
def test_coral_profiles_list_only_documented_ops(name):
    p = load_profile(name)
    assert p.target is Target.EDGETPU and p.delegate is Delegate.EDGETPU
    assert set(p.ops) == set(SUPPORTED_OPS)
    assert str(p.input_dtype) in ("int8", "uint8") and str(p.output_dtype) in ("int8", "uint8")
