"""MaskedAutoregressive (MAF / IAF with a MADE conditioner): the autoregressive property from
brute-force Jacobians, log-dets against log|det J|, inverse(forward(x)) == x, one pass for
density and D passes for sampling, context, gradcheck / gradgradcheck, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import brute_force_logdet, perturb_
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

import invflow

D, K = 5, 3
TRANSFORMS = ["affine", "spline"]


def make(transform="affine", context=0, **kw):
    kw.setdefault("hidden", 8)
    kw.setdefault("bins", 4)
    kw.setdefault("bound", 2.0)
    layer = invflow.MaskedAutoregressive(D, transform=transform, context_features=context, **kw).double()
    return perturb_(layer, 0.5)


def inputs(context=0, batch=4):
    x = 1.5 * torch.randn(batch, D, dtype=torch.float64)  # some entries in the spline's tails
    c = torch.randn(batch, context, dtype=torch.float64) if context else None
    return x, c


def jacobian(f, x):
    return torch.autograd.functional.jacobian(f, x)


@pytest.mark.parametrize("order", [None, "reverse", [2, 0, 4, 1, 3]], ids=["identity", "reverse", "random"])
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("inverse_direction", [False, True], ids=["maf", "iaf"])
def test_jacobian_is_triangular_in_the_order(order, transform, inverse_direction):
    layer = make(transform, context=K, hidden=16, order=order, inverse_direction=inverse_direction)
    x, c = inputs(K, batch=2)
    rank = torch.empty(D, dtype=torch.long)
    rank[torch.tensor(layer.order)] = torch.arange(D)
    later = rank[None, :] > rank[:, None]  # [i, j]: j comes after i in the order
    below = rank[None, :] < rank[:, None]
    for direction in ("forward", "inverse"):
        run = layer if direction == "forward" else layer.inverse
        for b in range(x.shape[0]):
            J = jacobian(lambda v, b=b: run(v[None], context=c[b : b + 1])[0][0], x[b])
            assert torch.all(J[later] == 0), (direction, J)  # output i ignores x_j after i
            assert torch.all(J.diagonal() != 0)
        assert torch.any(J[below] != 0)  # ... and does depend on earlier ones (not a trivial test)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("context", [0, K], ids=["plain", "context"])
@pytest.mark.parametrize("inverse_direction", [False, True], ids=["maf", "iaf"])
def test_logdet_is_brute_force_and_inverse_is_exact(transform, context, inverse_direction):
    layer = make(transform, context, inverse_direction=inverse_direction)
    x, c = inputs(context, batch=2)
    y, logdet = layer(x, context=c)
    assert logdet.shape == (x.shape[0],)
    for i in range(x.shape[0]):
        ci = None if c is None else c[i : i + 1]
        ref = brute_force_logdet(lambda v, ci=ci: layer(v, context=ci), x[i : i + 1])
        torch.testing.assert_close(logdet[i : i + 1], ref, rtol=1e-10, atol=1e-10)
    x_back, inv_logdet = layer.inverse(y, context=c)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(inv_logdet, -logdet, rtol=1e-10, atol=1e-10)
    ci = None if c is None else c[:1]
    ref = brute_force_logdet(lambda v: layer.inverse(v, context=ci), y[:1])
    torch.testing.assert_close(inv_logdet[:1], ref, rtol=1e-10, atol=1e-10)


def count_made_calls(layer, fn):
    calls = []
    handle = layer.made.register_forward_hook(lambda *_: calls.append(1))
    try:
        fn()
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_density_in_one_pass_sampling_in_d_passes(transform):
    x, _ = inputs()
    maf, iaf = make(transform), make(transform, inverse_direction=True)
    assert count_made_calls(maf, lambda: maf(x)) == 1
    assert count_made_calls(maf, lambda: maf.inverse(x)) == D
    assert count_made_calls(iaf, lambda: iaf.inverse(x)) == 1  # IAF: fast sampling
    assert count_made_calls(iaf, lambda: iaf(x)) == D


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_iaf_is_the_maf_run_backwards(transform):
    maf = make(transform, context=K)
    iaf = invflow.MaskedAutoregressive(
        D, hidden=8, transform=transform, context_features=K, bins=4, bound=2.0, inverse_direction=True
    ).double()
    iaf.load_state_dict(maf.state_dict())
    x, c = inputs(K)
    for a, b in (
        (iaf(x, context=c), maf.inverse(x, context=c)),
        (iaf.inverse(x, context=c), maf(x, context=c)),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_context_changes_every_output(transform):
    layer = make(transform, context=K, hidden=16)
    x, c = inputs(K, batch=8)
    y1, ld1 = layer(x, context=c)
    y2, ld2 = layer(x, context=c + 1.0)
    assert torch.all((y1 - y2).abs().amax(0) > 1e-6)  # the first dimension in the order included
    assert not torch.allclose(ld1, ld2)
    z, _ = layer.inverse(y1, context=c + 1.0)
    assert not torch.allclose(z, x)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_fresh_layer_is_the_identity(transform):
    layer = invflow.MaskedAutoregressive(D, hidden=8, transform=transform, bins=4, scale="tanh").double()
    x, _ = inputs()
    y, logdet = layer(x)
    tol = 1e-12 if transform == "affine" else 1e-6  # the spline's unit-derivative bias is float32
    torch.testing.assert_close(y, x, rtol=0, atol=tol)
    torch.testing.assert_close(logdet, torch.zeros_like(logdet), rtol=0, atol=tol)


class _Inverse(nn.Module):
    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, y, context=None):
        return self.flow.inverse(y, context=context)


def functional(layer, inverse=False, checked=None):
    """(fn, params): fn(x, context, *params) runs the layer (or its inverse) with the given
    parameter tensors, for gradcheck with respect to inputs, context and parameters together;
    only the parameters named in ``checked`` (all when None) require grad."""
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(
        p.detach().clone().requires_grad_(checked is None or n in checked)
        for n, p in layer.named_parameters()
    )
    target, prefix = (_Inverse(layer), "flow.") if inverse else (layer, "")

    def fn(x, c, *ps):
        return functional_call(target, {prefix + n: p for n, p in zip(names, ps)}, (x,), {"context": c})

    return fn, params


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("context", [0, 2], ids=["plain", "context"])
def test_gradcheck_and_gradgradcheck(transform, context, backend):
    """gradcheck and gradgradcheck element by element with respect to x and the context,
    gradcheck also with respect to the MADE's output bias (what feeds the op); both by random
    projections over every parameter (torch's fast mode: the D-pass inverse makes the
    element-wise second-order check over ~100 parameters minutes long)."""
    dim = 3
    layer = invflow.MaskedAutoregressive(
        dim, hidden=3, layers=1, transform=transform, context_features=context, bins=3, bound=2.0
    ).double()
    perturb_(layer, 0.5)
    x = torch.randn(2, dim, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, context, dtype=torch.float64, requires_grad=True) if context else None
    plans = ((), False, True), (("made.net.2.bias",), False, False), (None, True, True)
    for inverse in (False, True):
        for checked, fast, second in plans:
            fn, params = functional(layer, inverse, checked)
            args = (x, c, *params)
            if not context:
                fn, args = (lambda f: lambda x, *ps: f(x, None, *ps))(fn), (x, *params)
            assert gradcheck(fn, args, fast_mode=fast)
            if second:  # y and the log-det, through the MADE and the op
                assert gradgradcheck(fn, args, fast_mode=fast)


def test_config_round_trip_and_stacking():
    layer = make("spline", context=K, order="reverse", inverse_direction=True)
    again = invflow.MaskedAutoregressive.from_config(layer.config()).double()
    again.load_state_dict(layer.state_dict())
    x, c = inputs(K)
    torch.testing.assert_close(again(x, context=c), layer(x, context=c), rtol=0, atol=0)
    assert not any("mask" in k for k in layer.state_dict())  # rebuilt from the configuration
    flow = invflow.Sequential(make("affine", context=K), make("spline", context=K, order="reverse"))
    y, logdet = flow(x, context=c)
    x_back, inv_logdet = flow.inverse(y, context=c)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(inv_logdet, -logdet, rtol=1e-10, atol=1e-10)


def test_float32_and_the_conditioner_outputs():
    layer = perturb_(invflow.MaskedAutoregressive(D, hidden=8, transform="spline", bins=4), 0.3)
    x = torch.randn(6, D)
    y, logdet = layer(x)
    assert y.dtype == logdet.dtype == torch.float32
    torch.testing.assert_close(layer.inverse(y)[0], x, rtol=1e-4, atol=1e-4)
    assert layer.made(x).shape == (6, (3 * 4 - 1) * D)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(features=1), ValueError, "features"),
        (dict(features=4.0), TypeError, "features"),
        (dict(features=4, transform="rqs"), ValueError, "transform"),
        (dict(features=4, transform="spline", bins=1), ValueError, "bins"),
        (dict(features=4, transform="spline", bound=0.0), ValueError, "bound"),
        (dict(features=4, bound=float("inf")), ValueError, "bound"),
        (dict(features=4, scale="softplus"), ValueError, "scale"),
        (dict(features=4, clamp=-1.0), ValueError, "clamp"),
        (dict(features=4, hidden=2), ValueError, "MaskedAutoregressive: hidden must be >= 3"),
        (dict(features=4, hidden=3, context_features=2), ValueError, "hidden must be >= 4"),
        (dict(features=4, layers=0), ValueError, "layers"),
        (dict(features=4, context_features=-1), ValueError, "context_features"),
        (dict(features=4, order=[0, 1, 1, 2]), ValueError, "permutation"),
        (dict(features=4, order="forward"), ValueError, "order"),
        (dict(features=4, order=3), TypeError, "order"),
        (dict(features=4, inverse_direction="yes"), TypeError, "inverse_direction"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        invflow.MaskedAutoregressive(**kwargs)


@pytest.mark.parametrize("cls", [invflow.MaskedAutoregressive, invflow.AllInOneBlock])
def test_bad_inputs_of_the_vector_layers(cls):
    layer = cls(4, hidden=4, context_features=2)
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="context of shape"):
        layer(x)
    with pytest.raises(ValueError, match="context must have shape"):
        layer.inverse(x, context=torch.randn(3, 5))
    with pytest.raises(ValueError, match="batch size"):
        layer(x, context=torch.randn(2, 2))
    with pytest.raises(TypeError, match="floating"):
        layer(x, context=torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="4 channels"):
        layer(torch.randn(3, 5), context=torch.randn(3, 2))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(3, 4, 2), context=torch.randn(3, 2))
    plain = cls(4, hidden=4)
    torch.testing.assert_close(plain(x, context=torch.randn(3, 9)), plain(x))  # ignored


@pytest.mark.parametrize("name", ["maf-affine", "maf-spline", "iaf-spline", "all-in-one"])
def test_device_and_backends_agree_with_the_cpu_reference(name, device):
    if name == "all-in-one":
        block = invflow.AllInOneBlock(D, hidden=8, context_features=K, permute_soft=True, householder=1)
        layer = perturb_(block.double(), 0.5)
    else:
        kind, transform = name.split("-")
        layer = make(transform, context=K, inverse_direction=kind == "iaf")
    x, c = inputs(K)
    with invflow.backend("reference"):
        y_ref, ld_ref = layer(x, context=c)
    layer = layer.to(device)
    for backend in ("fused", "reference"):
        with invflow.backend(backend):
            y, ld = layer(x.to(device), context=c.to(device))
            x_back, inv_ld = layer.inverse(y, context=c.to(device))
        torch.testing.assert_close(y.cpu(), y_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ld.cpu(), ld_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(x_back.cpu(), x, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(inv_ld, -ld, rtol=1e-9, atol=1e-9)
