"""Dropping non-finite samples in a user's own training loop: the documented pattern
(``finite_mean(-log_prob_dropping_non_finite(model, x))``) gives the kept samples' gradient, and
``finite_mean`` warns once when its values would NaN every gradient."""

from __future__ import annotations

import warnings

import pytest
import torch

import invflow
import invflow.train
from invflow.train import NonFiniteGradientWarning, drop_non_finite, finite_mean, log_prob_dropping_non_finite


@pytest.fixture(autouse=True)
def _fresh_warning(monkeypatch):
    monkeypatch.setattr(invflow.train, "_warned_nan_gradients", False)


def _glow_and_bad_batch():
    """A tiny initialised Glow and a batch whose sample 0 is finite but gives log p = NaN
    (its activations overflow float32)."""
    torch.manual_seed(0)
    model = invflow.Glow(1, 4, levels=1, steps=2, hidden=8)
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1)) - 0.5
    model.train()(x)  # ActNorm's data-dependent initialisation
    x[0, 0, 0, 0] = 3e38
    return model, x


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _no_warning_of(category, fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    assert not [w for w in caught if issubclass(w.category, category)], [str(w.message) for w in caught]
    return out


def test_the_documented_pattern_gives_the_kept_samples_gradient():
    model, x = _glow_and_bad_batch()
    assert not torch.isfinite(model.log_prob(x)[0])
    loss = _no_warning_of(
        NonFiniteGradientWarning, lambda: finite_mean(-log_prob_dropping_non_finite(model, x))
    )
    loss.backward()
    got = _grads(model)
    assert all(torch.isfinite(g).all() for g in got)
    model.zero_grad()
    want = (-model.log_prob(x[1:])).mean()
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    for g, w in zip(got, _grads(model)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_the_naive_pattern_warns_once_and_its_gradients_are_nan():
    model, x = _glow_and_bad_batch()
    with pytest.warns(
        NonFiniteGradientWarning, match=r"may make every gradient NaN.*log_prob_dropping_non_finite"
    ):
        loss = finite_mean(-model.log_prob(x))
    loss.backward()
    assert not any(torch.isfinite(g).all() for g in _grads(model))  # what the warning is for
    _no_warning_of(NonFiniteGradientWarning, lambda: finite_mean(-model.log_prob(x)))  # once


def test_no_warning_without_a_graph_or_without_non_finite_values():
    model, x = _glow_and_bad_batch()
    with torch.no_grad():
        values = -model.log_prob(x)
    _no_warning_of(NonFiniteGradientWarning, lambda: finite_mean(values))
    _no_warning_of(NonFiniteGradientWarning, lambda: finite_mean(-model.log_prob(x[1:])))
    leaf = torch.tensor([1.0, float("inf"), 3.0], requires_grad=True)  # no network behind it
    _no_warning_of(NonFiniteGradientWarning, lambda: finite_mean(leaf).backward())
    assert leaf.grad.tolist() == [0.5, 0.0, 0.5]
    # drop_non_finite on any per-sample function, later arithmetic included
    dropped = drop_non_finite(lambda t: model(t).log_prob, x)
    _no_warning_of(NonFiniteGradientWarning, lambda: finite_mean(2.0 * (-dropped) + 1.0))


def test_finite_mean_argument_errors():
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        finite_mean([1.0, 2.0])
    with pytest.raises(ValueError, match="max_dropped"):
        finite_mean(torch.zeros(2), max_dropped=1.5)
