"""detectors.objectives: every loss against its paper formula written out independently,
the non-finite drop rule, gradients (double backward through the fused kernels for the
approximate-mass penalty), the Trainer objectives, and the 1-D contrastive toy of Schmier et al. 2022
Fig. 3 (the learned density approaches the normalised positive difference C (p - q) 1{p>q})."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from helpers import perturb_
from torch import nn
from torch.func import functional_call

import invflow
from detectors.objectives import (
    approx_mass_objective,
    approx_mass_penalty,
    contrastive_loss,
    contrastive_objective,
    diff_dagger_objective,
    margin_loss,
    margin_objective,
    negative_loss,
    negative_objective,
    nll,
    outlier_loss,
    outlier_objective,
    supervised_outlier_loss,
)
from invflow.data import preprocess
from invflow.train import Batch, Trainer

INF, NAN = math.inf, math.nan
DLOG2 = 64 * math.log(2)  # 1 x 8 x 8 images: nats per image -> bits/dim


def _t(*v):
    return torch.tensor(v, dtype=torch.float64)


def _glow(seed: int) -> invflow.Glow:
    torch.manual_seed(seed)
    return perturb_(invflow.Glow(1, 8, levels=2, steps=1, hidden=8).double(), std=0.1)


# ----------------------------------------------------------------------------------- nll
def test_nll_mean_and_drop_rule():
    lp = _t(-1.0, -2.0, -3.0, -6.0)
    assert nll(lp).item() == pytest.approx(3.0)
    assert nll(_t(-1.0, -INF, -3.0, -5.0)).item() == pytest.approx(3.0)  # 1 of 4 dropped
    assert nll(_t(-1.0, NAN, NAN, NAN)).item() == pytest.approx(1.0)  # exactly 75% dropped: kept
    assert math.isnan(nll(_t(-1.0, NAN, NAN, -INF, -INF)).item())  # more than 75%: NaN (step skipped)


# ---------------------------------------------------------------------- outlier loss (Eq. 2)
def _eq2_sigmoid(lp_in, lp_g, T, lam):
    """-lambda log sigmoid((log p_g - log p_in) / T), the first form of Eq. 2, averaged."""
    return (-lam * torch.log(torch.sigmoid((lp_g - lp_in) / T))).mean()


def _eq2_roots(lp_in, lp_g, T, lam):
    """Second form: -lambda log( p_g^(1/T) / (p_in^(1/T) + p_g^(1/T)) ), in log space."""
    return (-lam * (lp_g / T - torch.logaddexp(lp_in / T, lp_g / T))).mean()


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4, 1e5])
def test_outlier_loss_equals_both_forms_of_eq2(scale):
    g = torch.Generator().manual_seed(0)
    lp_in = -scale * torch.rand(16, dtype=torch.float64, generator=g) - 5
    lp_g = -scale * torch.rand(16, dtype=torch.float64, generator=g) - 5
    for T, lam in ((1000.0, 6000.0), (1.0, 1.0), (37.0, 2.5)):
        got = outlier_loss(lp_in, lp_g, temperature=T, weight=lam)
        torch.testing.assert_close(got, _eq2_roots(lp_in, lp_g, T, lam), rtol=1e-10, atol=1e-9)
        if (lp_g - lp_in).abs().max() / T < 30:  # the naive sigmoid form is accurate here
            torch.testing.assert_close(got, _eq2_sigmoid(lp_in, lp_g, T, lam), rtol=1e-10, atol=1e-9)
    # defaults T = 1000, lambda = 6000 (Schirrmeister et al. 2020 S4.2)
    torch.testing.assert_close(
        outlier_loss(lp_in, lp_g), _eq2_roots(lp_in, lp_g, 1000.0, 6000.0), rtol=1e-10, atol=1e-9
    )


def test_outlier_loss_extreme_values_stay_finite():
    # log-likelihood differences of 1e6 nats: T = 1 makes the sigmoid underflow in the naive form
    lp_in, lp_g = _t(-10.0, -2e6), _t(-2e6, -10.0)
    got = outlier_loss(lp_in, lp_g, temperature=1.0, weight=1.0)
    torch.testing.assert_close(got, _eq2_roots(lp_in, lp_g, 1.0, 1.0), rtol=1e-12, atol=0)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx((2e6 - 10) / 2, rel=1e-12)  # first term ~1999990, second ~0


def test_outlier_loss_gradient_direction():
    lp_in = _t(-100.0, -2000.0, -50.0).requires_grad_()
    lp_g = _t(-200.0, -1500.0, -3000.0).requires_grad_()
    loss = outlier_loss(lp_in, lp_g)
    loss.backward()
    assert (lp_in.grad > 0).all()  # lowering log p_in(x_g) lowers the loss
    assert (lp_g.grad < 0).all()
    # analytic gradient: lambda / (N T) sigmoid((lp_in - lp_g) / T)
    expected = 6000.0 / (3 * 1000.0) * torch.sigmoid((lp_in - lp_g) / 1000.0)
    torch.testing.assert_close(lp_in.grad, expected.detach(), rtol=1e-12, atol=0)
    with torch.no_grad():
        assert outlier_loss(lp_in - 500.0, lp_g) < loss
        assert outlier_loss(lp_in + 500.0, lp_g) > loss


def test_outlier_loss_drop_rule():
    lp_in, lp_g = _t(-10.0, -20.0, -30.0, -40.0), _t(-15.0, -12.0, -31.0, -70.0)
    keep = torch.tensor([True, False, True, True])
    ref = _eq2_roots(lp_in[keep], lp_g[keep], 1000.0, 6000.0)
    for bad_in, bad_g in ((-INF, -15.0), (NAN, -12.0), (-20.0, -INF), (-20.0, NAN), (INF, -12.0)):
        a, b = lp_in.clone(), lp_g.clone()
        a[1], b[1] = bad_in, bad_g
        a.requires_grad_()
        loss = outlier_loss(a, b)
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
        loss.backward()
        assert torch.isfinite(a.grad).all() and a.grad[1] == 0
    # exactly 75% dropped is not *more* than 75%: the one finite sample counts
    a, b = lp_in.clone(), lp_g.clone()
    a[1:] = -INF
    torch.testing.assert_close(outlier_loss(a, b), _eq2_roots(lp_in[:1], lp_g[:1], 1000.0, 6000.0))
    # 4 of 5 non-finite: more than 75% dropped -> exactly zero
    a, b = _t(-1.0, -INF, NAN, -3.0, -INF), _t(-2.0, -1.0, -1.0, NAN, -5.0)
    z = outlier_loss(a, b)
    assert z.item() == 0.0 and z.shape == ()


def test_outlier_loss_errors():
    with pytest.raises(ValueError):
        outlier_loss(_t(-1.0, -2.0), _t(-1.0))
    with pytest.raises(ValueError):
        outlier_loss(_t(-1.0, -2.0).reshape(2, 1), _t(-1.0, -2.0).reshape(2, 1))
    with pytest.raises(ValueError):
        outlier_loss(_t(-1.0), _t(-1.0), temperature=0.0)


def test_supervised_outlier_loss_against_loop():
    g = torch.Generator().manual_seed(1)
    b, k = 6, 4
    class_lp = -100 * torch.rand(b, k, dtype=torch.float64, generator=g)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    lp_g = -100 * torch.rand(b, dtype=torch.float64, generator=g)
    T, lam = 10.0, 3.0
    terms = [
        -lam * torch.log(torch.sigmoid((lp_g[i] - class_lp[i, c]) / T))
        for i in range(b)
        for c in range(k)
        if c != labels[i]
    ]
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(
        supervised_outlier_loss(class_lp, labels, lp_g, T, lam), expected, rtol=1e-12, atol=0
    )
    with pytest.raises(ValueError):
        supervised_outlier_loss(class_lp, labels[:3], lp_g)


# --------------------------------------------------------------------------- margin loss
def test_margin_loss_formula_and_zero_when_separated():
    lp_in, lp_out = _t(-10.0, -20.0, -5.0), _t(-12.0, -15.0, -100.0)
    m = 3.0
    expected = torch.clamp(m + lp_out - lp_in, min=0).mean()
    torch.testing.assert_close(margin_loss(lp_in, lp_out, m), expected)
    assert expected.item() == pytest.approx((1.0 + 8.0 + 0.0) / 3)
    # separated by more than the margin everywhere: zero, and no gradient
    a = _t(-1.0, -2.0).requires_grad_()
    loss = margin_loss(a, _t(-5.0, -6.0), margin=2.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(a.grad, torch.zeros(2, dtype=torch.float64))
    # non-finite pairs are dropped
    torch.testing.assert_close(
        margin_loss(_t(-10.0, -INF, -20.0), _t(-12.0, -1.0, -15.0), m),
        torch.clamp(m + _t(-12.0, -15.0) - _t(-10.0, -20.0), min=0).mean(),
    )
    assert margin_loss(_t(NAN), _t(1.0), m).item() == 0.0


# ---------------------------------------------------------------------- contrastive loss
def test_contrastive_loss_eq3_with_clamping():
    lp_x = _t(-1.0, -2.0, -4.0)
    lp_y = _t(-0.5, -7.0, -20.0, -3.0)
    clamp = -6.0
    expected = -lp_x.mean() + torch.maximum(lp_y, torch.tensor(clamp, dtype=torch.float64)).mean()
    torch.testing.assert_close(contrastive_loss(lp_x, lp_y, clamp), expected)
    assert expected.item() == pytest.approx(7 / 3 + (-0.5 - 6 - 6 - 3) / 4)
    # Algorithm 1: mean nll(x) - mean min(nll(y), tsh), tsh = -clamp
    nll_x, nll_y = -lp_x, -lp_y
    algo = nll_x.mean() - torch.clamp(nll_y, max=-clamp).mean()
    torch.testing.assert_close(contrastive_loss(lp_x, lp_y, clamp), algo)
    # without clamping (very low clamp) it is Eq. 3 itself
    torch.testing.assert_close(contrastive_loss(lp_x, lp_y, -1e9), -lp_x.mean() + lp_y.mean())
    # gradients: +1/M on auxiliary samples above the clamp, 0 below; -1/N on inliers
    a, b = lp_x.clone().requires_grad_(), lp_y.clone().requires_grad_()
    contrastive_loss(a, b, clamp).backward()
    torch.testing.assert_close(a.grad, torch.full((3,), -1 / 3, dtype=torch.float64))
    torch.testing.assert_close(b.grad, _t(0.25, 0.0, 0.0, 0.25))
    # an auxiliary sample at -inf is simply clamped
    assert torch.isfinite(contrastive_loss(lp_x, _t(-INF, -1.0), clamp))


# ------------------------------------------------------------------------ negative loss
def test_negative_loss_eq7():
    lp_in = _t(-1.0, -3.0)
    lp_ood = _t(5.0, -100.0, 1.0, -50.0, 2.0)
    c = 0.0
    above = lp_ood > c
    expected = -lp_in.mean() + lp_ood[above].sum() / above.sum()
    torch.testing.assert_close(negative_loss(lp_in, lp_ood, c), expected)
    assert expected.item() == pytest.approx(2.0 + 8.0 / 3)
    # samples below c are ignored: changing them changes nothing
    moved = lp_ood.clone()
    moved[[1, 3]] = _t(-1e4, -0.5)
    torch.testing.assert_close(negative_loss(lp_in, moved, c), expected)
    # none above c: -mean log p_in exactly
    assert negative_loss(lp_in, _t(-1.0, -2.0), c).item() == pytest.approx(2.0)
    assert negative_loss(lp_in, _t(-1.0, -2.0), c).item() == -lp_in.mean().item()
    # gradient 1 / N_ood(>c) on the samples above c, 0 below
    b = lp_ood.clone().requires_grad_()
    negative_loss(lp_in, b, c).backward()
    torch.testing.assert_close(b.grad, above.double() / 3)


def test_negative_loss_ignores_minus_inf_ood_samples():
    # an OOD sample pushed to log p = -inf is below any threshold: ignored, not NaN
    lp_in = _t(-1.0, -3.0)
    b = _t(-INF, 4.0, -INF).requires_grad_()
    loss = negative_loss(lp_in, b, 0.0)
    assert loss.item() == pytest.approx(2.0 + 4.0)
    loss.backward()
    torch.testing.assert_close(b.grad, _t(0.0, 1.0, 0.0))
    assert negative_loss(lp_in, _t(-INF, -INF), 0.0).item() == pytest.approx(2.0)


# ------------------------------------------------------------------ approximate mass (Eq. 2)
class Quadratic(nn.Module):
    """log p(x) = -0.5 a ||x||^2 + b: d log p / dx = -a x, ||.|| = a ||x||."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(0.25, dtype=torch.float64))

    def log_prob(self, x):
        return -0.5 * self.a * x.flatten(1).pow(2).sum(1) + self.b


def test_approx_mass_penalty_analytic_with_parameter_gradients():
    x = (0.3 * torch.randn(5, 1, 4, 4, dtype=torch.float64)).clamp(-0.5, 0.5)
    m, alpha = Quadratic(), 2.0
    r = x.flatten(1).norm(dim=1)
    loss, (mean_lp, mean_g) = approx_mass_penalty(m, x, alpha, return_terms=True)
    a = 1.5
    expected = (0.5 * a * r**2 - 0.25).mean() + alpha * a * r.mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert mean_g.item() == pytest.approx(a * r.mean().item(), rel=1e-12)
    assert mean_lp.item() == pytest.approx((-0.5 * a * r**2 + 0.25).mean().item(), rel=1e-12)
    loss.backward()  # d/da = 0.5 mean r^2 + alpha mean r: needs the graph of the input gradient
    assert m.a.grad.item() == pytest.approx((0.5 * r**2).mean().item() + alpha * r.mean().item(), rel=1e-12)
    assert m.b.grad.item() == pytest.approx(-1.0)
    assert not x.requires_grad  # the input is not modified
    with pytest.raises(TypeError):
        approx_mass_penalty(m, torch.zeros(2, 3, dtype=torch.long))


def _direct_penalty(model, x, alpha):
    xr = x.clone().requires_grad_(True)
    lp = model.log_prob(xr)
    (g,) = torch.autograd.grad(lp.sum(), xr, create_graph=True)
    return -lp.mean() + alpha * torch.sqrt((g**2).sum(dim=(1, 2, 3))).mean()


def _backends():
    return ["reference", "fused"] if invflow.fused_available() else ["reference"]


def test_approx_mass_penalty_on_glow_equals_direct_double_autograd_both_backends():
    model = _glow(3)
    x = (
        0.25 * torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ).clamp(-0.5, 0.5)
    results = {}
    for name in _backends():
        with invflow.backend(name):
            model.zero_grad()
            loss = approx_mass_penalty(model, x, alpha=2.0)
            direct = _direct_penalty(model, x, 2.0)
            torch.testing.assert_close(loss, direct, rtol=1e-12, atol=1e-12)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            assert len(grads) >= len(list(model.parameters())) - 2  # (almost) every parameter is reached
            for n, gr in grads.items():
                assert torch.isfinite(gr).all(), n
            # the gradient-norm term alone has parameter gradients (true double backward)
            model.zero_grad()
            gx = approx_mass_penalty(model, x, alpha=1.0) - approx_mass_penalty(model, x, alpha=0.0)
            gx.backward()
            assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0
            results[name] = (loss.detach(), grads)
    if len(results) == 2:
        (l_ref, g_ref), (l_fused, g_fused) = results["reference"], results["fused"]
        torch.testing.assert_close(l_fused, l_ref, rtol=1e-10, atol=1e-10)
        assert g_ref.keys() == g_fused.keys()
        for n in g_ref:
            torch.testing.assert_close(g_fused[n], g_ref[n], rtol=1e-8, atol=1e-10, msg=n)


@pytest.mark.parametrize("name", ["reference", "fused"])
def test_approx_mass_penalty_gradcheck_wrt_parameters(name):
    if name == "fused" and not invflow.fused_available():
        pytest.skip("the extension invflow._C is not built")
    model = _glow(4)
    x = (
        0.25 * torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ).clamp(-0.5, 0.5)
    names = [
        "scales.0.flows.0.flows.0.bias",
        "scales.0.flows.0.flows.0.log_scale",
        "scales.0.flows.0.flows.1.log_s",
        "scales.0.flows.0.flows.2.net.6.bias",
        "scales.0.flows.0.flows.2.net.6.logs",
        "scales.1.flows.0.flows.0.log_scale",
        "scales.1.flows.0.flows.1.log_s",
    ]
    params = dict(model.named_parameters())
    leaves = tuple(params[n].detach().clone().requires_grad_() for n in names)

    class Wrapped:
        def __init__(self, ps):
            self.ps = ps

        def log_prob(self, xx):
            return functional_call(model, dict(zip(names, self.ps)), (xx,)).log_prob

    def f(*ps):
        return approx_mass_penalty(Wrapped(ps), x, alpha=2.0)

    with invflow.backend(name):
        assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------- trainer objectives
@pytest.fixture(scope="module")
def uint8_data():
    g = torch.Generator().manual_seed(7)
    x_in = torch.randint(60, 200, (24, 1, 8, 8), dtype=torch.uint8, generator=g)
    x_out = torch.randint(0, 256, (24, 1, 8, 8), dtype=torch.uint8, generator=g)
    return x_in, x_out


def _objectives(uint8_data):
    _, x_out = uint8_data
    general = _glow(11)
    return {
        "outlier": outlier_objective(general, x_out),
        "outlier_small_batch": outlier_objective(
            general, x_out, temperature=10.0, weight=2.0, outlier_batch=3
        ),
        "diff_dagger": diff_dagger_objective(_glow(12), x_out),
        "margin": margin_objective(x_out),
        "margin_fixed": margin_objective(x_out, margin=5.0, weight=0.5),
        "contrastive": contrastive_objective(x_out, clamp=-500.0),
        "negative": negative_objective(x_out, threshold=-200.0),
        "approx_mass": approx_mass_objective(alpha=2.0),
    }


@pytest.mark.parametrize(
    "which",
    [
        "outlier",
        "outlier_small_batch",
        "diff_dagger",
        "margin",
        "margin_fixed",
        "contrastive",
        "negative",
        "approx_mass",
    ],
)
def test_trainer_objectives_run_three_steps(uint8_data, tmp_path, which):
    x_in, _ = uint8_data
    torch.manual_seed(0)
    model = invflow.Glow(1, 8, levels=2, steps=1, hidden=8).double()
    before = [p.detach().clone() for p in model.parameters()]
    objective = _objectives(uint8_data)[which]
    trainer = Trainer(
        model,
        x_in,
        out_dir=str(tmp_path),
        objective=objective,
        steps=3,
        batch_size=8,
        progress=False,
        checkpoint_every=100,
    )
    summary = trainer.fit()
    assert summary["steps"] == 3 and summary["skipped"] == 0
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[-1]["step"] == "3"
    assert math.isfinite(float(rows[-1]["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained
    # the objective called by hand: a finite scalar with a graph, and scalar logs
    batch = trainer._batch(3)
    out = objective(model, batch)
    loss, logs = out
    assert loss.shape == () and torch.isfinite(loss) and loss.requires_grad
    assert all(torch.as_tensor(v).numel() == 1 for v in logs.values())


def _draws(data, n, seed, dtype=torch.float64):
    """The samples the objectives draw from ``data`` with a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(data), (n,), generator=g)
    return preprocess(data[idx], dequantize=True, generator=g, dtype=dtype)


def test_trainer_objective_values(uint8_data):
    x_in, x_out = uint8_data
    model, general = _glow(21), _glow(22)
    x = preprocess(x_in[:6], dequantize=False, dtype=torch.float64)
    n = len(x)

    def batch(seed):
        return Batch(x=x, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        lp_x = model.log_prob(x)
        xo = _draws(x_out, n, 1)
        lp_o, lp_g = model.log_prob(xo), general.log_prob(xo)
        loss, logs = outlier_objective(general, x_out)(model, batch(1))
        nll_x = -lp_x.mean()
        l_o = _eq2_roots(lp_o, lp_g, 1000.0, 6000.0)
        torch.testing.assert_close(loss, (nll_x + l_o) / DLOG2, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(torch.as_tensor(logs["outlier"]), l_o, rtol=1e-10, atol=1e-10)
        assert float(logs["bpd"]) == pytest.approx(float(nll_x / DLOG2 + 8), rel=1e-10)

        # Diff-dagger: the trained (general) model gets in-distribution samples as outliers
        loss, _ = diff_dagger_objective(general, x_out)(model, batch(1))
        torch.testing.assert_close(
            loss, (nll_x + _eq2_roots(lp_o, lp_g, 1000.0, 6000.0)) / DLOG2, rtol=1e-10, atol=1e-10
        )

        loss, logs = margin_objective(x_out)(model, batch(1))
        m = 64 * math.log(2)
        torch.testing.assert_close(
            loss, (nll_x + torch.clamp(m + lp_o - lp_x, min=0).mean()) / DLOG2, rtol=1e-10, atol=1e-10
        )

        loss, _ = contrastive_objective(x_out, clamp=-40.0)(model, batch(1))
        torch.testing.assert_close(
            loss, (-lp_x.mean() + torch.clamp(lp_o, min=-40.0).mean()) / DLOG2, rtol=1e-10, atol=1e-10
        )

        c = float(lp_o.median())
        loss, _ = negative_objective(x_out, threshold=c)(model, batch(1))
        above = lp_o > c
        torch.testing.assert_close(
            loss, (-lp_x.mean() + lp_o[above].sum() / above.sum()) / DLOG2, rtol=1e-10, atol=1e-10
        )

    loss, logs = approx_mass_objective(alpha=2.0)(model, batch(1))
    torch.testing.assert_close(loss, _direct_penalty(model, x, 2.0) / DLOG2, rtol=1e-10, atol=1e-12)
    assert float(logs["grad_norm_x"]) > 0


# --------------------------------------------------------- Schmier et al. 2022 Fig. 3: the 1-D toy
class GaussianMixture1D(nn.Module):
    """A normalised density on R with learnable parameters: sum_k w_k N(mu_k, sigma_k^2)."""

    def __init__(self, k: int = 8):
        super().__init__()
        self.mu = nn.Parameter(torch.linspace(-3, 3, k, dtype=torch.float64))
        self.log_sigma = nn.Parameter(torch.zeros(k, dtype=torch.float64))
        self.logits = nn.Parameter(torch.zeros(k, dtype=torch.float64))

    def log_prob(self, x):
        z = (x[:, None] - self.mu) / self.log_sigma.exp()
        comp = -0.5 * z**2 - self.log_sigma - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(comp + torch.log_softmax(self.logits, 0), 1)


def test_contrastive_toy_learns_normalised_positive_difference():
    """p = N(0, 1) inliers, q = N(1, 2) contrastive with the 2 read as the *variance*
    (std sqrt 2): trained with Eq. 3 (clamp -6), the density approaches
    p_bar = C (p - q) 1{p > q}, which lives on (-2.84, 0.84), and is small where q > p."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = GaussianMixture1D()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(500):
        x = torch.randn(512, dtype=torch.float64, generator=g)
        y = 1.0 + math.sqrt(2.0) * torch.randn(512, dtype=torch.float64, generator=g)
        loss = contrastive_loss(model.log_prob(x), model.log_prob(y), clamp=-6.0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    grid = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    dx = float(grid[1] - grid[0])
    p = torch.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi)
    q = torch.exp(-((grid - 1) ** 2) / 4) / math.sqrt(4 * math.pi)
    p_bar = (p - q).clamp(min=0)
    p_bar = p_bar / (p_bar.sum() * dx)
    with torch.no_grad():
        learned = model.log_prob(grid).exp()

    def tv(a, b):
        return 0.5 * float((a - b).abs().sum()) * dx

    assert float(learned.sum()) * dx == pytest.approx(1.0, abs=1e-3)  # a normalised density
    # p > q  <=>  x^2 + 2x - (1 + 2 log 2) < 0  <=>  x in -1 -+ sqrt(2 + 2 log 2)
    lo, hi = -1 - math.sqrt(2 + 2 * math.log(2)), -1 + math.sqrt(2 + 2 * math.log(2))
    inside = (grid > lo) & (grid < hi)
    assert torch.equal(inside, p > q)
    # learned is much closer to p_bar than p itself is (TV(p, p_bar) ~ 0.28)
    assert tv(p, p_bar) > 0.25
    assert tv(learned, p_bar) < 0.1 < tv(p, p_bar) / 2.5
    # little mass where q > p (p itself has 20% there), and the mode moved left of p's
    assert float(learned[~inside].sum()) * dx < 0.05 < 0.2 < float(p[~inside].sum()) * dx
    assert float(learned[grid > 1.5].max()) < 0.01
    # where q > p the clamp stops the push-down near log p = clamp (Sec. 5: log p < epsilon)
    assert float(learned[(grid > 2) & (grid < 4)].max()) < 2 * math.exp(-6.0)
    # as an anomaly score (-log p_theta), q's typical region is rated anomalous vs p's
    assert float(learned[(grid - 2.0).abs().argmin()]) < 0.01 * float(learned[(grid + 0.5).abs().argmin()])
