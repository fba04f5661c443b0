"""``invflow.NormalizingFlow``: any layer stack as a model.  log_prob against the change of
variables computed by hand (brute-force Jacobian, float64), per-scale terms, inverse, sampling,
context, save / load, and its argument errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

import invflow
from invflow import masks, nets

D = 4


def _coupling(d, parity, hidden=8, k=0):
    return invflow.AffineCoupling(
        d,
        masks.Channel(parity),
        net=nets.MLP(
            d - d // 2 if parity == 0 else d // 2,
            2 * (d // 2 if parity == 0 else d - d // 2),
            hidden=hidden,
            context_features=k,
        ),
        scale="tanh",
        context_channels=k,
    )


def _perturb(model, context=None):
    """ActNorm initialised on data, then every parameter perturbed (the zero-initialised st-nets
    would make the couplings identities)."""
    torch.manual_seed(3)
    x = torch.randn(16, *model.input_shape, dtype=torch.float64)
    model.train()(x) if context is None else model.train()(x, context=context.expand(16, -1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _two_scale_vector_model(prior=None):
    """Scale 1 on 4 dims, split 2 | 2, scale 2 on the 2 that continue."""
    torch.manual_seed(0)
    s1 = invflow.Sequential(invflow.ActNorm(D), _coupling(D, 0), invflow.InvConv1x1(D), _coupling(D, 1))
    s2 = invflow.Sequential(invflow.InvConv1x1(2), _coupling(2, 0))
    return _perturb(invflow.NormalizingFlow([s1, s2], event_shape=D, prior=prior).double()).eval()


def _normal_log_prob(z):
    return (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_log_prob_is_the_change_of_variables_by_brute_force():
    model = _two_scale_vector_model()
    x = torch.randn(5, D, dtype=torch.float64)
    s1, s2 = model.scales

    def T(v):  # R^4 -> R^4: x -> (z_2, z_1), from the layers alone
        h, _ = s1(v.unsqueeze(0))
        z1 = h[:, 2:]
        z2, _ = s2(h[:, :2])
        return torch.cat([z2, z1], 1)[0]

    out = model(x)
    for b in range(x.shape[0]):
        jac = jacobian(T, x[b])
        expected = _normal_log_prob(T(x[b])) + torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(out.log_prob[b], expected, rtol=1e-10, atol=1e-10)
        # the second scale's term alone: log N(z_2) + log|det d z_2 / d h|
        h = s1(x[b : b + 1])[0][0, :2]
        jac2 = jacobian(lambda v: s2(v.unsqueeze(0))[0][0], h)
        c2 = _normal_log_prob(s2(h.unsqueeze(0))[0][0]) + torch.linalg.slogdet(jac2)[1]
        torch.testing.assert_close(out.per_scale[b, 1], c2, rtol=1e-10, atol=1e-10)
    assert out.per_scale.shape == (5, 2)
    torch.testing.assert_close(out.per_scale.sum(1), out.log_prob, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.log_prob(x), out.log_prob)
    assert [tuple(z.shape) for z in out.latents] == [(5, 2), (5, 2)]


def test_inverse_sampling_and_sample_log_prob():
    model = _two_scale_vector_model()
    x = torch.randn(6, D, dtype=torch.float64)
    out = model(x)
    torch.testing.assert_close(model.inverse(out.latents), x, rtol=1e-10, atol=1e-10)
    assert model.latent_shapes() == [(2,), (2,)]
    g = torch.Generator().manual_seed(0)
    xs = model.sample(7, generator=g)
    assert xs.shape == (7, D) and xs.dtype == torch.float64 and torch.isfinite(xs).all()
    zero = model.sample(2, temperature=0.0)
    torch.testing.assert_close(zero, model.inverse([torch.zeros(2, 2, dtype=torch.float64)] * 2))
    xs, lp = model.sample_and_log_prob(5)
    torch.testing.assert_close(lp, model.log_prob(xs), rtol=1e-9, atol=1e-9)


def test_a_multiscale_image_stack_with_squeezes():
    torch.manual_seed(0)

    def scale(c, parity):
        return invflow.Sequential(
            invflow.Squeeze(),
            invflow.ActNorm(4 * c),
            invflow.InvConv1x1(4 * c),
            invflow.AffineCoupling(4 * c, masks.Channel(parity), hidden=8),
        )

    model = invflow.NormalizingFlow([scale(1, 0), scale(2, 1)], event_shape=(1, 8, 8)).double()
    assert not model.scales[0][1].initialized and model.training  # construction ran in eval, restored
    assert model.latent_shapes() == [(2, 4, 4), (8, 2, 2)] and model.is_image_model
    x = 0.2 * torch.randn(4, 1, 8, 8, dtype=torch.float64)
    model = _perturb(model).eval()
    out = model(x)
    assert out.per_scale.shape == (4, 2)
    torch.testing.assert_close(out.per_scale.sum(1), out.log_prob, rtol=0, atol=1e-10)
    torch.testing.assert_close(model.inverse(out.latents), x, rtol=1e-9, atol=1e-9)
    assert model.sample(3).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="look like 0..255 pixel values"):
        model(x.abs() * 255)


def test_it_saves_and_loads_with_its_layers(tmp_path):
    model = _two_scale_vector_model(prior=[invflow.priors.StandardNormal(), invflow.priors.StandardNormal()])
    path = tmp_path / "m.safetensors"
    invflow.save(model, path)
    back = invflow.load(path)
    assert type(back) is invflow.NormalizingFlow and back.latent_shapes() == model.latent_shapes()
    x = torch.randn(5, D, dtype=torch.float64)
    assert torch.equal(back.log_prob(x), model.log_prob(x))
    assert len(back.prior) == 2


def test_a_conditional_stack():
    torch.manual_seed(0)
    k = 3
    flow = invflow.Sequential(invflow.ActNorm(D), _coupling(D, 0, k=k), _coupling(D, 1, k=k))
    x, c = torch.randn(5, D, dtype=torch.float64), torch.randn(5, k, dtype=torch.float64)
    model = _perturb(invflow.NormalizingFlow(flow, event_shape=(D,), context_dim=k).double(), c[:1]).eval()
    lp = model.log_prob(x, context=c)
    assert not torch.allclose(lp, model.log_prob(x, context=c + 1))  # the layers see the context
    out = model(x, context=c)
    torch.testing.assert_close(model.inverse(out.latents, context=c), x, rtol=1e-10, atol=1e-10)
    assert model.sample(4, context=c[:1]).shape == (4, D)
    with pytest.raises(ValueError, match="context"):
        model.log_prob(x)


def test_a_custom_prior_is_used_for_density_and_sampling():
    class Wide(torch.nn.Module):
        """N(0, 2^2 I)."""

        def log_prob(self, z):
            return _normal_log_prob(z / 2).reshape(z.shape[0], -1).sum(1) - z[0].numel() * math.log(2)

        def sample(self, shape, temperature=1.0, generator=None, device=None, dtype=None):
            return 2 * temperature * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    flow = invflow.Sequential(invflow.InvConv1x1(D))
    model = invflow.NormalizingFlow(flow, D, prior=Wide()).double().eval()
    x = torch.randn(3, D, dtype=torch.float64)
    z = model(x).latents[0]
    torch.testing.assert_close(model.log_prob(x), Wide().log_prob(z))  # |det W| = 1 (a rotation)
    assert model.sample(20000, generator=torch.Generator().manual_seed(0)).std().item() == pytest.approx(
        2, rel=0.05
    )


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda: invflow.NormalizingFlow(invflow.nets.MLP(2, 2), 2),
            TypeError,
            "flow must be an invflow.Flow",
        ),
        (lambda: invflow.NormalizingFlow([], 2), ValueError, "non-empty list"),
        (
            lambda: invflow.NormalizingFlow(invflow.ActNorm(3), (4,)),
            ValueError,
            r"scale 0 does not take inputs of shape \[B, 4\].*3 channels",
        ),
        (lambda: invflow.NormalizingFlow(invflow.ActNorm(3), (0,)), ValueError, "event_shape"),
        (lambda: invflow.NormalizingFlow(invflow.ActNorm(3), "3"), TypeError, "event_shape"),
        (
            lambda: invflow.NormalizingFlow([invflow.ActNorm(1), invflow.ActNorm(1)], 1),
            ValueError,
            "split needs at least 2 channels",
        ),
        (
            lambda: invflow.NormalizingFlow(invflow.ActNorm(2), 2, prior=torch.nn.Linear(2, 2)),
            TypeError,
            "prior must be",
        ),
        (
            lambda: invflow.NormalizingFlow(
                invflow.ActNorm(2), 2, prior=[invflow.priors.StandardNormal()] * 2
            ),
            ValueError,
            "2 priors for 1 scales",
        ),
        (lambda: invflow.NormalizingFlow(invflow.ActNorm(2), 2, context_dim=-1), ValueError, "context_dim"),
        (lambda: invflow.NormalizingFlow(invflow.ActNorm(2), 2, images="yes"), TypeError, "images"),
    ],
)
def test_argument_errors(make, error, message):
    with pytest.raises(error, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_a_stack_with_a_factory_st_net_says_why_it_cannot_be_saved(tmp_path):
    flow = invflow.AffineCoupling(D, masks.Channel(0), net=lambda i, o: nets.MLP(i, o, hidden=8))
    model = invflow.NormalizingFlow(flow, D)
    with pytest.raises(
        TypeError,
        match="NormalizingFlow argument 'flow' \\(AffineCoupling\\) argument 'net'.*code that a checkpoint cannot record",
    ):
        invflow.save(model, tmp_path / "m.safetensors")
