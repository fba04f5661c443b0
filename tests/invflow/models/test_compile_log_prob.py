"""``torch.compile(model.log_prob, fullgraph=True)``: the input checks break no graph (they
become ``torch._assert_async`` checks inside it, invflow.validation.assert_values), the compiled
log-density equals the eager one, and bad values are still refused by the compiled code.

Two compiles in all (module-scoped fixtures), with the ``aot_eager`` backend: graph breaks come
from Dynamo's tracing, and AOT autograd runs every op (the fused kernels too) on fake tensors,
as inductor does before it generates code, without inductor's C++ compile time."""

from __future__ import annotations

import pytest
import torch

import invflow
from invflow.validation import assert_values


def _compiled(model, x):
    model.train()(x)  # ActNorm's data-dependent initialisation
    model.eval()
    eager = model.log_prob(x)
    compiled = torch.compile(model.log_prob, fullgraph=True, backend="aot_eager")  # fails on any graph break
    return model, compiled, compiled(x), eager


@pytest.fixture(scope="module")
def glow():
    torch.manual_seed(0)
    x = 0.2 * torch.randn(4, 1, 4, 4, dtype=torch.float64)
    model = invflow.Glow(1, 4, levels=2, steps=1, hidden=4).double()
    return x, *_compiled(model, x)


@pytest.fixture(scope="module")
def vector_flow():
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64)
    model = invflow.VectorFlow(5, blocks=1, hidden=8).double()
    return x, *_compiled(model, x)


@pytest.mark.parametrize("name", ["glow", "vector_flow"])
def test_compiled_log_prob_has_no_graph_break_and_equals_eager(name, request):
    x, model, compiled, value, eager = request.getfixturevalue(name)
    assert value.shape == (x.shape[0],) and torch.isfinite(value).all()
    torch.testing.assert_close(value, eager, rtol=1e-12, atol=1e-12)
    other = 0.5 * x.flip(0)  # new values, same shape: the same graph
    torch.testing.assert_close(compiled(other), model.log_prob(other), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["glow", "vector_flow"])
def test_the_compiled_checks_still_refuse_non_finite_input(name, request):
    x, _, compiled, _, _ = request.getfixturevalue(name)
    bad = x.clone()
    bad.view(-1)[3] = float("nan")
    with pytest.raises(RuntimeError, match="input contains NaN or Inf"):
        compiled(bad)


def test_the_compiled_image_check_refuses_raw_pixels(glow):
    x, _, compiled, _, _ = glow
    with pytest.raises(RuntimeError, match="looks like raw pixel values"):
        compiled(x.abs() * 255)


def test_assert_values_raises_value_error_in_eager_mode():
    assert assert_values(torch.tensor(True), "never raised")
    with pytest.raises(ValueError, match="^f: bad$"):
        assert_values(torch.tensor(False), "f: bad")
