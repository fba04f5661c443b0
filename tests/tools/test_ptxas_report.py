"""tools/ptxas_report.py, the spill gate of the CUDA compile check: it reads `-Xptxas -v`
logs, pairs each entry function with its spills and registers, and fails on any spill."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import ptxas_report  # noqa: E402

CLEAN = """\
ptxas info    : 28 bytes gmem
ptxas info    : Compiling entry function '_Z4fastPf' for 'sm_90'
ptxas info    : Function properties for _Z4fastPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 56 registers, used 1 barriers, 4096 bytes smem
ptxas info    : Compile time = 30.010 ms
"""

SPILLING = """\
ptxas info    : Function properties for _Z6helperv
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z4slowPd' for 'sm_90'
ptxas info    : Function properties for _Z4slowPd
    7408 bytes stack frame, 10508 bytes spill stores, 10508 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 8192 bytes smem
"""


def test_parse_pairs_each_entry_with_its_own_properties():
    kernels = ptxas_report.parse(CLEAN + SPILLING)
    assert [(k.name, k.registers, k.spill_stores, k.spill_loads) for k in kernels] == [
        ("_Z4fastPf", 56, 0, 0),
        ("_Z4slowPd", 255, 10508, 10508),
    ]
    assert not kernels[0].spills and kernels[1].spills


@pytest.mark.parametrize("text, code", [(CLEAN, 0), (CLEAN + SPILLING, 1), ("no ptxas output\n", 1)])
def test_exit_code_fails_on_any_spill_or_an_empty_log(tmp_path, text, code, capsys):
    log = tmp_path / "k.log"
    log.write_text(text)
    table = tmp_path / "ptxas.txt"
    assert ptxas_report.main([str(log), "--out", str(table)]) == code
    if code == 1 and "slow" in text:
        assert "SPILL 10508 B stores" in capsys.readouterr().err
        assert "255" in table.read_text()


def test_a_spill_in_a_device_function_alone_is_not_an_entry():
    """Non-entry 'Function properties' blocks (called device functions) are not reported on
    their own; their cost shows in the entry that calls them."""
    kernels = ptxas_report.parse(SPILLING.replace("10508 bytes", "0 bytes"))
    assert len(kernels) == 1 and not kernels[0].spills
