"""Training objectives with non-finite samples: dropped samples leave clean gradients (the
loss and gradient equal those of the batch without them); numeric arguments are checked."""

from __future__ import annotations

import pytest
import torch

import invflow
from detectors import objectives
from invflow.train import Batch, drop_non_finite, finite_mean, log_prob_dropping_non_finite, nll


def _vector_flow(seed=0):
    torch.manual_seed(seed)
    m = invflow.VectorFlow(4, blocks=2, hidden=8).double()
    m.train()(torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 100)))
    return m


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _bad_batch():
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[2, 0] = 1.7e308  # finite input whose latent overflows: log p = -inf, backward 0 * inf
    return x, x[[0, 1, 3, 4]]


def test_naive_dropping_gives_nan_gradients_that_drop_non_finite_avoids():
    model = _vector_flow()
    x, _ = _bad_batch()
    finite_mean(-model.log_prob(x)).backward()
    assert not all(torch.isfinite(g).all() for g in _grads(model))  # the fault, reproduced
    model.zero_grad()
    finite_mean(-log_prob_dropping_non_finite(model, x)).backward()
    assert all(torch.isfinite(g).all() for g in _grads(model))


def test_nll_objective_gradient_equals_the_batch_without_the_bad_sample():
    model = _vector_flow()
    x, good = _bad_batch()
    loss, _ = nll(model, Batch(x))
    loss.backward()
    got = _grads(model)
    model.zero_grad()
    want_loss, _ = nll(model, Batch(good))
    want_loss.backward()
    assert loss.item() == want_loss.item()
    for g, w in zip(got, _grads(model)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda lp, ref: objectives.outlier_loss(lp, ref, temperature=10.0, weight=2.0),
        lambda lp, ref: objectives.margin_loss(ref, lp, margin=3.0),
        lambda lp, ref: objectives.nll(lp),
    ],
)
def test_outlier_and_margin_losses_gradients_equal_the_batch_without_the_bad_sample(loss_fn):
    model, reference = _vector_flow(0), _vector_flow(1)
    x, good = _bad_batch()
    with torch.no_grad():
        ref_x, ref_good = reference.log_prob(x), reference.log_prob(good)
    loss = loss_fn(log_prob_dropping_non_finite(model, x), ref_x)
    loss.backward()
    got = _grads(model)
    model.zero_grad()
    loss_fn(model.log_prob(good), ref_good).backward()
    for g, w in zip(got, _grads(model)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_trainer_objectives_with_draws_take_the_step():
    model = _vector_flow()
    x, _ = _bad_batch()
    outliers = torch.randn(8, 4, dtype=torch.float64)
    batch = Batch(x=x, generator=torch.Generator().manual_seed(0))
    loss, _ = objectives.margin_objective(outliers)(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in _grads(model))


def test_drop_non_finite_keeps_the_values_and_leaves_all_bad_or_no_grad_alone():
    calls = []

    def fn(t):
        calls.append(len(t))
        return t.sum(1) * torch.where(t[:, 0] > 0, torch.tensor(float("inf"), dtype=t.dtype), t.new_ones(()))

    x = torch.tensor([[1.0, 2.0], [-1.0, 2.0], [-2.0, 1.0]], dtype=torch.float64, requires_grad=True)
    out = drop_non_finite(fn, x)
    assert calls == [3, 2] and out[0].item() == float("inf")
    torch.testing.assert_close(out[1:], torch.tensor([1.0, -1.0], dtype=torch.float64))
    with torch.no_grad():
        drop_non_finite(fn, x)
    assert calls == [3, 2, 3]


BAD_NUMBERS = [float("nan"), float("inf"), -1.0, "1", None]


@pytest.mark.parametrize("bad", BAD_NUMBERS)
@pytest.mark.parametrize(
    "call",
    [
        lambda b: objectives.outlier_loss(torch.zeros(3), torch.zeros(3), temperature=b),
        lambda b: objectives.outlier_loss(torch.zeros(3), torch.zeros(3), weight=b),
        lambda b: objectives.margin_loss(torch.zeros(3), torch.zeros(3), margin=b),
        lambda b: objectives.contrastive_loss(
            torch.zeros(3), torch.zeros(3), clamp=b if b != -1.0 else float("-inf")
        ),
        lambda b: objectives.negative_loss(
            torch.zeros(3), torch.zeros(3), threshold=b if b != -1.0 else float("nan")
        ),
        lambda b: objectives.approx_mass_penalty(
            _vector_flow(), torch.zeros(2, 4, dtype=torch.float64), alpha=b
        ),
        lambda b: objectives.outlier_objective(_vector_flow(), torch.zeros(2, 4), temperature=b),
        lambda b: objectives.approx_mass_objective(alpha=b),
    ],
)
def test_objective_numeric_arguments_are_validated(call, bad):
    if bad is None:
        bad = float("nan")
    with pytest.raises((ValueError, TypeError)) as err:
        call(bad)
    assert "must be" in str(err.value)
