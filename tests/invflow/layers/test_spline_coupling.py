"""SplineCoupling (Durkan et al. 2019): brute-force Jacobian log-dets (vectors and a tiny
image), inverse == identity, fused == reference, identity at initialisation, context,
gradgradcheck of the log-det (the approximate-mass penalty differentiates through it),
save / load, argument errors."""

from __future__ import annotations

import pytest
import torch
from helpers import brute_force_logdet, functional, perturb_
from torch.autograd import gradcheck, gradgradcheck

import invflow
from invflow import masks, nets
from invflow.ops import fused

F64 = torch.float64
BACKENDS = ["reference", pytest.param("fused", marks=pytest.mark.skipif(not fused.AVAILABLE, reason="no _C"))]
VMASK = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)


def glow_net(i, o):
    return nets.GlowNet(i, o, hidden=4)


def mlp_net(i, o):
    return nets.MLP(i, o, hidden=6, layers=1)


# (name, constructor, input shape): tiny, for full Jacobians; bound 1.5 puts entries in the tails
LAYERS = [
    ("vector_mask", lambda: invflow.SplineCoupling(5, VMASK, net=mlp_net, bins=4, bound=1.5), (2, 5)),
    ("vector_channel", lambda: invflow.SplineCoupling(4, masks.Channel(1), net=mlp_net, bins=3), (2, 4)),
    (
        "image_channel",
        lambda: invflow.SplineCoupling(3, masks.Channel(0), net=glow_net, bins=3),
        (2, 3, 2, 3),
    ),
    (
        "image_checker",
        lambda: invflow.SplineCoupling(2, masks.Checkerboard(1), net=glow_net, bins=5),
        (2, 2, 2, 2),
    ),
]
IDS = [name for name, _, _ in LAYERS]


def make(builder, std=0.5):
    torch.manual_seed(0)
    return perturb_(builder().to(F64), std=std)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, builder, shape", LAYERS, ids=IDS)
def test_logdet_equals_brute_force_jacobian(name, builder, shape, backend):
    layer = make(builder)
    x = 1.2 * torch.randn(shape, dtype=F64)
    with invflow.backend(backend):
        _, logdet = layer(x)
        torch.testing.assert_close(logdet, brute_force_logdet(layer, x))
        _, inv_logdet = layer.inverse(x)
        torch.testing.assert_close(inv_logdet, brute_force_logdet(layer.inverse, x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, builder, shape", LAYERS, ids=IDS)
def test_inverse_of_forward_is_identity(name, builder, shape, backend):
    layer = make(builder)
    x = 1.2 * torch.randn(shape, dtype=F64)
    with invflow.backend(backend):
        y, logdet = layer(x)
        x_back, inv_logdet = layer.inverse(y)
    assert not torch.allclose(y, x)  # the layer does something
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(inv_logdet, -logdet, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not fused.AVAILABLE, reason="invflow._C is not built")
@pytest.mark.parametrize("name, builder, shape", LAYERS, ids=IDS)
def test_fused_equals_reference(name, builder, shape):
    layer = make(builder)
    x = 1.2 * torch.randn(shape, dtype=F64)
    for inverse in (False, True):
        run = layer.inverse if inverse else layer
        with invflow.backend("fused"):
            got = run(x)
        with invflow.backend("reference"):
            want = run(x)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name, builder, shape", LAYERS, ids=IDS)
def test_a_new_layer_is_the_identity(name, builder, shape):
    """The zero-initialised last layer of the st-net gives uniform bins and unit derivatives."""
    torch.manual_seed(0)
    layer = builder().to(F64)
    x = 2.0 * torch.randn(shape, dtype=F64)
    y, logdet = layer(x)
    torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, torch.zeros_like(logdet), rtol=0, atol=1e-12)


@pytest.mark.skipif(not fused.AVAILABLE, reason="invflow._C is not built")
def test_gradgradcheck_of_the_logdet():
    """Second derivatives of the log-det with respect to x and the st-net's weights (what the
    approximate-mass penalty of Chali et al. 2023 differentiates) through the fused op (the
    reference is plain autograd)."""
    backend = "fused"
    layer = make(
        lambda: invflow.SplineCoupling(
            3, torch.tensor([1, 0, 1]), net=lambda i, o: nets.MLP(i, o, 3, 1), bins=3
        )
    )
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    fn, params = functional(layer)
    with invflow.backend(backend):
        assert gradcheck(lambda *a: fn(*a)[1], (x, *params))
        assert gradgradcheck(lambda *a: fn(*a)[1], (x, *params), fast_mode=True)
        inv, params = functional(layer, inverse=True)
        assert gradgradcheck(lambda *a: inv(*a)[0], (x, *params), fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_approximate_mass_penalty_runs_through_splines(backend):
    """|d log p / dx|^2 differentiated once more, with respect to the weights: both backends agree."""
    layer = make(lambda: invflow.SplineCoupling(4, masks.Channel(0), net=mlp_net, bins=4))

    def penalty_grads(name):
        x = torch.randn(5, 4, dtype=F64, requires_grad=True)
        with invflow.backend(name):
            y, logdet = layer(x)
            logp = -0.5 * (y * y).sum(1) + logdet
            (gx,) = torch.autograd.grad(logp.sum(), x, create_graph=True)
            return torch.autograd.grad(gx.pow(2).sum(), list(layer.parameters()))

    torch.manual_seed(1)
    got = penalty_grads(backend)
    torch.manual_seed(1)
    want = penalty_grads("reference")
    assert any(g.abs().sum() > 0 for g in got)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- context
@pytest.mark.parametrize("backend", BACKENDS)
def test_context_conditions_the_spline(backend):
    layer = make(
        lambda: invflow.SplineCoupling(4, torch.tensor([0, 1, 1, 0]), hidden=8, bins=4, context_channels=2)
    )
    x = torch.randn(3, 4, dtype=F64)
    c1, c2 = torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
    with invflow.backend(backend):
        y1, l1 = layer(x, context=c1)
        y2, _ = layer(x, context=c2)
        x_back, il = layer.inverse(y1, context=c1)
        for i in range(3):  # brute force per sample, with that sample's context
            brute = brute_force_logdet(lambda v, i=i: layer(v, context=c1[i : i + 1]), x[i : i + 1])
            torch.testing.assert_close(l1[i : i + 1], brute)
    assert not torch.allclose(y1, y2)
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(il, -l1, rtol=1e-9, atol=1e-9)


def test_image_context():
    layer = make(
        lambda: invflow.SplineCoupling(
            2, masks.Checkerboard(0), net=None, hidden=4, bins=3, context_channels=3
        )
    )
    x = torch.randn(2, 2, 4, 4, dtype=F64)
    c = torch.randn(2, 3, dtype=F64)
    y, logdet = layer(x, context=c)
    torch.testing.assert_close(layer.inverse(y, context=c)[0], x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "context, word",
    [(None, "context"), (torch.zeros(3, 3), "context"), (torch.zeros(2, 2), "batch"), ("c", "context")],
)
def test_wrong_context_is_named(context, word):
    layer = invflow.SplineCoupling(4, torch.tensor([0, 1, 1, 0]), hidden=8, bins=4, context_channels=2)
    with pytest.raises((ValueError, TypeError), match=word):
        layer(torch.zeros(3, 4), context=context)


def test_unconditional_layer_ignores_a_context():
    layer = make(lambda: invflow.SplineCoupling(4, torch.tensor([0, 1, 1, 0]), hidden=8))
    x = torch.randn(3, 4, dtype=F64)
    for got, want in zip(layer(x, context=torch.zeros(3, 2, dtype=F64)), layer(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# ------------------------------------------------------------------- precision, saving
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gives_float32_logdets(dtype):
    layer = make(lambda: invflow.SplineCoupling(4, masks.Channel(0), net=mlp_net, bins=4)).to(dtype)
    y, logdet = layer(torch.randn(3, 4).to(dtype))
    assert y.dtype == dtype and logdet.dtype == torch.float32


SAVABLE = [  # the default st-nets (modules of registered classes; a factory is not recordable)
    ("vector_mask", lambda: invflow.SplineCoupling(5, VMASK, hidden=6, bins=4, bound=1.5), (2, 5)),
    (
        "vector_context",
        lambda: invflow.SplineCoupling(4, torch.tensor([0, 1, 1, 0]), hidden=6, context_channels=2),
        (2, 4),
    ),
    (
        "image_checker",
        lambda: invflow.SplineCoupling(2, masks.Checkerboard(1), hidden=4, bins=5),
        (2, 2, 2, 2),
    ),
]


@pytest.mark.parametrize("name, builder, shape", SAVABLE, ids=[n for n, _, _ in SAVABLE])
def test_save_and_load_round_trip(name, builder, shape, tmp_path):
    layer = make(builder)
    x = torch.randn(shape, dtype=F64)
    context = torch.randn(shape[0], 2, dtype=F64) if layer.context_channels else None
    invflow.save(invflow.Sequential(layer), tmp_path / "spline.safetensors")
    loaded = invflow.load(tmp_path / "spline.safetensors")
    got, want = loaded(x, context=context), layer(x, context=context)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert (loaded[0].bins, loaded[0].bound, loaded[0].vector) == (layer.bins, layer.bound, layer.vector)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(bins=1), ValueError, "bins"),
        (dict(bins=1000), ValueError, "bins"),
        (dict(bins=2.5), TypeError, "bins"),
        (dict(bound=0.0), ValueError, "bound"),
        (dict(bound=-1.0), ValueError, "bound"),
        (dict(bound=float("nan")), ValueError, "bound"),
        (dict(context_channels=-1), ValueError, "context_channels"),
        (dict(mask=torch.tensor([1, 0, 1])), ValueError, "mask"),
        (dict(mask=torch.tensor([1, 1, 1, 1])), ValueError, "mask"),
        (dict(mask=torch.tensor([0, 2, 1, 0])), ValueError, "mask"),
        (dict(mask="channel"), TypeError, "mask"),
    ],
)
def test_constructor_errors(kwargs, exc, word):
    args = dict(num_channels=4, mask=torch.tensor([1, 0, 1, 0]), hidden=4) | kwargs
    with pytest.raises(exc, match=word) as info:
        invflow.SplineCoupling(**args)
    assert "\n" not in str(info.value)


def test_input_errors():
    layer = invflow.SplineCoupling(4, torch.tensor([1, 0, 1, 0]), hidden=4)
    with pytest.raises(ValueError):
        layer(torch.zeros(2, 5))
    with pytest.raises(ValueError):
        layer(torch.zeros(2, 4, 1, 1))
    with pytest.raises(TypeError):
        layer(torch.zeros(2, 4, dtype=torch.int64))
