"""The multi-scale loop of invflow.models.base.MultiScaleModel (Dinh et al. 2017, Sec. 3.6;
Schirrmeister et al. 2020, Eq. 3) gives bitwise the numbers of each model's own loop as the
models wrote it before it was shared: per_scale, latents, log_prob, inverse and sampling with a
fixed generator, on both backends (the ``backend`` fixture)."""

from __future__ import annotations

import pytest
import torch

import invflow
from invflow._backend import backend_for
from invflow.data import standard_normal_log_prob
from invflow.models.base import MultiScaleModel, split_latent
from invflow.models.fused_scale import fused_glow_scale


def glow_forward(m: invflow.Glow, x):
    """Glow's loop as the model wrote it, the channels-last fused scales included."""
    h, per_scale, latents = x, [], []
    last = len(m.scales) - 1
    fused = backend_for(h) == "fused" and h.dtype in (torch.float32, torch.float64)
    for i in range(len(m.scales)):
        res = fused_glow_scale(m.scales[i].flows, h) if fused else None
        if res is None:
            h, _ = m.squeeze(h)
            h, logdet = m.scales[i](h)
        else:
            h, logdet = res
            if i == last:
                h = h.contiguous()
        if i < last:
            h, z = split_latent(h)
            log_pz = m.priors[i].log_prob(z, h) if m.split_prior else standard_normal_log_prob(z)
        else:
            z, log_pz = h, standard_normal_log_prob(h)
        latents.append(z)
        per_scale.append(log_pz + logdet)
    return per_scale, latents


def glow_inverse(m: invflow.Glow, latents):
    h = latents[-1]
    for i in reversed(range(len(m.scales))):
        if i < len(m.scales) - 1:
            h = torch.cat([h, latents[i]], dim=1)
        h, _ = m.scales[i].inverse(h)
        h, _ = m.squeeze.inverse(h)
    return h


def glow_split_prior_sample(m: invflow.Glow, n, temperature, generator):
    g = dict(generator=generator, dtype=torch.float64)
    h = temperature * torch.randn((n, *m.latent_shapes()[-1]), **g)
    for i in reversed(range(len(m.scales))):
        if i < len(m.scales) - 1:
            mean, log_sigma = m.priors[i](h)
            z = mean + temperature * torch.exp(log_sigma) * torch.randn(mean.shape, **g)
            h = torch.cat([h, z], dim=1)
        h, _ = m.scales[i].inverse(h)
        h, _ = m.squeeze.inverse(h)
    return h


def realnvp_forward(m: invflow.RealNVP, x):
    h, per_scale, latents = x, [], []
    for i in range(len(m.pre)):
        h, logdet = m.pre[i](h)
        if i < len(m.post):
            h, _ = m.squeeze(h)
            h, ld = m.post[i](h)
            logdet = logdet + ld
            h, z = split_latent(h)
        else:
            z = h
        latents.append(z)
        per_scale.append(standard_normal_log_prob(z) + logdet)
    return per_scale, latents


def realnvp_inverse(m: invflow.RealNVP, latents):
    h = latents[-1]
    for i in reversed(range(len(m.pre))):
        if i < len(m.post):
            h = torch.cat([h, latents[i]], dim=1)
            h, _ = m.post[i].inverse(h)
            h, _ = m.squeeze.inverse(h)
        h, _ = m.pre[i].inverse(h)
    return h


def dense_forward(m: invflow.DenseGlow, x):
    h, per_scale, latents = x.flatten(1), [], []
    for i, seq in enumerate(m.scales):
        h, logdet = seq(h)
        if i < len(m.scales) - 1:
            h, z = split_latent(h)
        else:
            z = h
        latents.append(z)
        per_scale.append(standard_normal_log_prob(z) + logdet)
    return per_scale, latents


def dense_inverse(m: invflow.DenseGlow, latents):
    h = latents[-1]
    for i in reversed(range(len(m.scales))):
        if i < len(m.scales) - 1:
            h = torch.cat([h, latents[i]], dim=1)
        h, _ = m.scales[i].inverse(h)
    return h.view(h.shape[0], *m.input_shape)


def vector_forward(m: invflow.VectorFlow, x):
    z, logdet = m.flow(x)
    return [standard_normal_log_prob(z) + logdet], [z]


def vector_inverse(m: invflow.VectorFlow, latents):
    return m.flow.inverse(latents[0])[0]


MODELS = [
    ("glow", lambda: invflow.Glow(2, 8, levels=3, steps=2, hidden=4), (2, 8, 8), glow_forward, glow_inverse),
    (
        "glow_split_prior",
        lambda: invflow.Glow(2, 8, levels=2, steps=1, hidden=4, split_prior=True),
        (2, 8, 8),
        glow_forward,
        glow_inverse,
    ),
    (
        "realnvp",
        lambda: invflow.RealNVP(1, 8, levels=3, blocks=1, hidden=4),
        (1, 8, 8),
        realnvp_forward,
        realnvp_inverse,
    ),
    (
        "dense_glow",
        lambda: invflow.DenseGlow(1, 4, levels=3, steps=2, hidden=8),
        (1, 4, 4),
        dense_forward,
        dense_inverse,
    ),
    ("vector_flow", lambda: invflow.VectorFlow(5, blocks=2, hidden=8), (5,), vector_forward, vector_inverse),
]


def bitwise(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("name, make, shape, forward, inverse", MODELS, ids=[m[0] for m in MODELS])
def test_shared_loop_is_bitwise_the_models_own_loop(name, make, shape, forward, inverse, backend):
    model = make().double()
    assert isinstance(model, MultiScaleModel)
    x = (torch.rand(4, *shape, dtype=torch.float64) - 0.5) * 0.9
    model.train()(x)  # data-dependent init, then parameters away from the identity
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.eval()
        out = model(x)
        per_scale, latents = forward(model, x)
        assert bitwise(out.per_scale, torch.stack(per_scale, dim=1))
        assert bitwise(out.log_prob, torch.stack(per_scale, dim=1).sum(1))
        assert len(out.latents) == len(latents)
        assert all(bitwise(a, b) for a, b in zip(out.latents, latents))
        assert bitwise(model.inverse(out.latents), inverse(model, latents))
        s = model.sample(3, temperature=0.7, generator=torch.Generator().manual_seed(5))
        if getattr(model, "split_prior", False):
            expected = glow_split_prior_sample(model, 3, 0.7, torch.Generator().manual_seed(5))
        else:  # z_1 .. z_L drawn in this order, then the inverse
            g = torch.Generator().manual_seed(5)
            zs = [0.7 * torch.randn((3, *z), generator=g, dtype=torch.float64) for z in model.latent_shapes()]
            expected = inverse(model, zs)
        assert bitwise(s, expected)
