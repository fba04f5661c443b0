"""Property test: fused == reference on random small shapes (hypothesis).

Kept apart from test_fused_ops.py so that a machine without hypothesis (the GPU check's
machine has only torch and pytest) still collects and runs every CUDA test; CI installs
hypothesis (the [test] extra), so this file runs there.
"""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_fused_ops import SCALES, assert_fused_matches_reference, make_args  # noqa: E402


@settings(max_examples=30, deadline=None, derandomize=True)  # same examples in CI as locally
@given(
    b=st.integers(1, 3),
    c=st.integers(1, 6),
    spatial=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    masked=st.booleans(),
    scale=st.sampled_from(SCALES),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_fused_equals_reference_property(b, c, spatial, masked, scale, dtype):
    a = make_args((b, c, *spatial), "cpu", dtype, masked=masked)
    assert_fused_matches_reference(a, scale, dtype)
