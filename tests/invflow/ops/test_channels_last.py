"""The channels-last coupling op (invflow::coupling_cl_*) against its reference and the
channels-first coupling, opcheck, gradcheck and gradgradcheck; the fused Glow scale
(invflow.models.fused_scale) and the folded GlowNet against the layer-by-layer reference."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import invflow
from invflow import nets
from invflow.models import fused_scale
from invflow.ops import fused, reference

SCALES = ["sigmoid", "exp", "tanh"]
OP = torch.ops.invflow

# B = 1, one position, odd channel counts, 3-D and 4-D, more positions than one tile
SHAPES = [(1, 1, 1), (2, 5, 3), (3, 7, 1), (2, 3, 4, 5), (4, 256, 6), (2, 700, 7), (1, 2)]


def cl_args(shape, device, dtype, requires_grad=False):
    x = torch.randn(shape, device=device, dtype=dtype)
    h = torch.randn(shape[:-1] + (2 * shape[-1],), device=device, dtype=dtype)
    return x.requires_grad_(requires_grad), h.requires_grad_(requires_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
def test_coupling_cl_equals_reference_and_channels_first(shape, dtype, scale, device):
    x, h = cl_args(shape, device, dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    y, ld = fused.coupling_cl_forward(x, h, scale, 2.0)
    y_ref, ld_ref = reference.coupling_cl_forward(x, h, scale, 2.0)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(ld, ld_ref, **tol)
    # the same numbers as the channels-first coupling on the transposed tensors
    b, c = shape[0], shape[-1]
    xf = x.reshape(b, -1, c).transpose(1, 2)
    hf = h.reshape(b, -1, 2 * c).transpose(1, 2)
    y_cf, ld_cf = reference.coupling_forward(xf, hf, None, scale, 2.0)
    torch.testing.assert_close(y, y_cf.transpose(1, 2).reshape(shape), **tol)
    torch.testing.assert_close(ld, ld_cf, **tol)


def test_coupling_cl_value_by_hand():
    """One position, sigmoid scale: y = sigmoid(raw + 2) x + t, logdet = log sigmoid(raw + 2)."""
    x = torch.tensor([[[1.5, -2.0]]], dtype=torch.float64)
    h = torch.tensor([[[0.0, -2.0, 0.5, 1.0]]], dtype=torch.float64)
    y, ld = fused.coupling_cl_forward(x, h, "sigmoid", 2.0)
    s = torch.sigmoid(torch.tensor([2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(y, torch.stack([s[0] * 1.5 + 0.5, s[1] * -2.0 + 1.0]).view(1, 1, 2))
    torch.testing.assert_close(ld, torch.log(s).sum().view(1))


def test_coupling_cl_non_contiguous_inputs(device):
    x, h = cl_args((3, 4, 10), device, torch.float64)
    xs, hs = x[..., 1:6], torch.cat([h[..., 1:6], h[..., 11:16]], -1)[:, ::2]
    xs = xs[:, ::2]
    torch.testing.assert_close(
        fused.coupling_cl_forward(xs, hs, "sigmoid", 2.0),
        reference.coupling_cl_forward(xs, hs, "sigmoid", 2.0),
    )


@pytest.mark.parametrize("scale", SCALES)
def test_opcheck_coupling_cl(scale, device):
    x, h = cl_args((2, 6, 3), device, torch.float64, requires_grad=True)
    gy = torch.randn_like(x, requires_grad=True)
    gl = torch.randn(2, dtype=x.dtype, device=device, requires_grad=True)
    torch.library.opcheck(OP.coupling_cl_forward.default, (x, h, scale, 2.0))
    torch.library.opcheck(OP.coupling_cl_backward.default, (gy, gl, x, h, scale, 2.0))
    torch.library.opcheck(OP.coupling_cl_backward.default, (gy, None, x, h, scale, 2.0))


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 2, 3, 3)])
@pytest.mark.parametrize("scale", SCALES)
def test_gradcheck_and_gradgradcheck_coupling_cl(shape, scale, device):
    x, h = cl_args(shape, device, torch.float64, requires_grad=True)
    h.data.mul_(0.5)

    def fn(x, h):
        return fused.coupling_cl_forward(x, h, scale, 2.0)

    assert gradcheck(fn, (x, h))
    assert gradgradcheck(fn, (x, h))
    # the backward op itself, with and without a log-det gradient
    gy = torch.randn_like(x, requires_grad=True)
    gl = torch.randn(shape[0], dtype=x.dtype, device=device, requires_grad=True)
    assert gradcheck(lambda *a: OP.coupling_cl_backward(*a, scale, 2.0), (gy, gl, x, h))
    assert gradcheck(lambda gy, x, h: OP.coupling_cl_backward(gy, None, x, h, scale, 2.0), (gy, x, h))


@pytest.mark.parametrize("shape", [(2, 3, 4), (3, 700, 5), (1, 2, 3, 3)])
@pytest.mark.parametrize("scale", SCALES)
def test_double_backward_kernel_equals_autograd_of_reference(shape, scale):
    """coupling_cl_double_backward = the vector-Jacobian product of the first-order gradients of
    the reference, (d grad_y, d grad_logdet, d x, d h), computed by autograd."""
    x, h = cl_args(shape, "cpu", torch.float64, requires_grad=True)
    gy = torch.randn_like(x, requires_grad=True)
    gl = torch.randn(shape[0], dtype=x.dtype, requires_grad=True)
    u_x, u_h = torch.randn_like(x), torch.randn_like(h)
    y, ld = reference.coupling_cl_forward(x, h, scale, 2.0)
    gx, gh = torch.autograd.grad((y, ld), (x, h), (gy, gl), create_graph=True)
    want = torch.autograd.grad((gx, gh), (gy, gl, x, h), (u_x, u_h))
    got = OP.coupling_cl_double_backward(
        u_x, u_h, gy.detach(), gl.detach(), x.detach(), h.detach(), scale, 2.0
    )
    for a, b, name in zip(got, want, ("grad_y", "grad_logdet", "x", "h")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")
    # float32 (the vectorised path) against the float64 values
    got32 = OP.coupling_cl_double_backward(
        *(t.detach().float() for t in (u_x, u_h, gy, gl, x, h)), scale, 2.0
    )
    for a, b in zip(got32, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-3)


def test_penalty_second_backward_uses_kernel_and_matches_formula():
    """The second backward (grad mode off) takes the kernel, a third-order-capable backward
    (create_graph=True) the eager formula: both give the same gradients."""
    x, h = cl_args((2, 5, 3), "cpu", torch.float64, requires_grad=True)
    grads = []
    for create_graph in (False, True):
        y, ld = fused.coupling_cl_forward(x, h, "sigmoid", 2.0)
        gx, gh = torch.autograd.grad(y.square().sum() + ld.sum(), (x, h), create_graph=True)
        pen = gx.square().sum() + gh.square().sum()
        grads.append(torch.autograd.grad(pen, (x, h), create_graph=create_graph))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_opcheck_coupling_cl_double_backward():
    x, h = cl_args((2, 6, 3), "cpu", torch.float64)
    args = (
        torch.randn_like(x),
        torch.randn_like(h),
        torch.randn_like(x),
        torch.randn(2, dtype=x.dtype),
        x,
        h,
    )
    for scale in SCALES:
        torch.library.opcheck(OP.coupling_cl_double_backward.default, args + (scale, 2.0))


def test_coupling_cl_rejects_bad_shapes():
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="2C"):
        OP.coupling_cl_forward(x, torch.randn(2, 3, 7), "sigmoid", 2.0)
    with pytest.raises(RuntimeError, match="does not match"):
        OP.coupling_cl_forward(x, torch.randn(2, 4, 8), "sigmoid", 2.0)
    with pytest.raises(RuntimeError, match="scale"):
        OP.coupling_cl_forward(x, torch.randn(2, 3, 8), "relu", 2.0)


# ------------------------------------------------------------------ folded st-net, fused scale
@pytest.mark.parametrize("actnorm", [False, True])
def test_glownet_folded_equals_layer_by_layer(actnorm):
    torch.manual_seed(1)
    net = nets.GlowNet(3, 6, hidden=8, actnorm=actnorm).double()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    net.train()
    with invflow.backend("reference"):
        net(x)  # data-dependent init of the ActNorm2d layers
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert net._fold_plan() is not None
    out = {}
    for be in ("reference", "fused"):
        n, xx = copy.deepcopy(net), x.clone().requires_grad_()
        with invflow.backend(be):
            y = n(xx)
            (g,) = torch.autograd.grad(y.square().sum(), xx, create_graph=True)
            g.square().sum().backward()  # second order, as the approximate-mass penalty
        out[be] = (y, xx.grad, [p.grad for p in n.parameters()])
    torch.testing.assert_close(out["fused"][0], out["reference"][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["fused"][1], out["reference"][1], rtol=1e-10, atol=1e-10)
    for a, b in zip(out["fused"][2], out["reference"][2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_glownet_waits_for_actnorm_init():
    net = nets.GlowNet(3, 6, hidden=8, actnorm=True).train()
    assert net._fold_plan() is None  # ActNorm2d not initialised: layer by layer
    with invflow.backend("fused"):
        net(torch.randn(2, 3, 4, 4))
    assert net._fold_plan() is not None


def _glow(**kw):
    torch.manual_seed(0)
    model = invflow.Glow(3, 8, levels=2, steps=3, hidden=8, **kw).double()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64) - 0.5
    model.train()
    with torch.no_grad(), invflow.backend("reference"):
        model(x)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, x


@pytest.mark.parametrize("scale", SCALES)
def test_fused_scale_equals_reference_model(scale):
    """log p, latents, parameter gradients and the approximate-mass second-order gradients of a
    Glow whose scales run through fused_glow_scale equal the layer-by-layer reference."""
    model, x = _glow(scale=scale)
    assert fused_scale.applies(model.scales[0].flows, x)
    out = {}
    for be in ("reference", "fused"):
        m, xx = copy.deepcopy(model), x.clone().requires_grad_()
        with invflow.backend(be):
            o = m(xx)
            (g,) = torch.autograd.grad(o.log_prob.sum(), xx, create_graph=True)
            (o.log_prob.mean() + g.square().sum()).backward()
        out[be] = (o.log_prob, o.per_scale, o.latents, xx.grad, [p.grad for p in m.parameters()])
    f, r = out["fused"], out["reference"]
    torch.testing.assert_close(f[0], r[0], rtol=1e-10, atol=1e-10)  # "exp" reaches |log p| ~ 1e90
    torch.testing.assert_close(f[1], r[1], rtol=1e-10, atol=1e-10)
    for a, b in zip(f[2], r[2]):
        assert a.shape == b.shape and a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f[3], r[3], rtol=1e-9, atol=1e-9)
    for a, b in zip(f[4], r[4]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_fused_scale_float32_close_and_inverse():
    model, x = _glow()
    model = model.float()
    x = x.float()
    with invflow.backend("fused"):
        out = model(x)
        back = model.inverse(out.latents)
    with invflow.backend("reference"):
        want = model(x)
    torch.testing.assert_close(out.log_prob, want.log_prob, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-4)


def test_fused_scale_does_not_apply_before_init_or_to_other_layers():
    torch.manual_seed(0)
    model = invflow.Glow(3, 8, levels=2, steps=2, hidden=8).train()
    x = torch.rand(2, 3, 8, 8) - 0.5
    assert not fused_scale.applies(model.scales[0].flows, x)  # actnorm awaits its data init
    with invflow.backend("fused"):
        model(x)  # initialises, layer by layer
    assert fused_scale.applies(model.scales[0].flows, x)
    assert fused_scale.fused_glow_scale([invflow.Squeeze()], x) is None


@pytest.mark.parametrize("as_run", [False, True])
def test_bare_glow_steps_take_the_channels_last_path_and_equal_the_layers(as_run, monkeypatch):
    """An invflow.Sequential that is one Glow step (or a run of them) runs on the fused backend
    through the channels-last rows path; its output, log-det and first- and second-order
    gradients equal the layer-by-layer reference, and its output keeps the input's layout."""
    model, _ = _glow()
    steps = list(model.scales[0].flows)
    seq = invflow.Sequential(*steps) if as_run else steps[1]
    x = torch.rand(3, 12, 4, 4, dtype=torch.float64) - 0.5
    calls = []
    real = fused_scale._run_rows
    monkeypatch.setattr(fused_scale, "_run_rows", lambda *a: calls.append(1) or real(*a))
    out = {}
    for be in ("reference", "fused"):
        m, xx = copy.deepcopy(seq), x.clone().requires_grad_()
        with invflow.backend(be):
            y, ld = m(xx)
            (g,) = torch.autograd.grad(y.square().sum() + ld.sum(), xx, create_graph=True)
            (ld.mean() + g.square().sum()).backward()
        out[be] = (y, ld, xx.grad, [p.grad for p in m.parameters()])
    assert calls == [1]  # the fused run only
    f, r = out["fused"], out["reference"]
    assert f[0].is_contiguous()
    for a, b in zip(f[:3], r[:3]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for a, b in zip(f[3], r[3]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_bare_glow_step_falls_back_to_the_layers_for_hooks_and_bad_inputs():
    model, _ = _glow()
    step = model.scales[0].flows[0]
    x = torch.rand(3, 12, 4, 4, dtype=torch.float64)
    assert fused_scale.fused_glow_steps(fused_scale.step_list(step), x) is not None
    assert fused_scale.fused_glow_steps([step], x.float()) is None  # dtype differs from the params
    with invflow.backend("fused"), pytest.raises(ValueError, match="expected 12 channels"):
        step(torch.rand(3, 10, 4, 4, dtype=torch.float64))
    seen = []
    step.flows[2].register_forward_hook(lambda *a: seen.append(1))
    with invflow.backend("fused"):
        step(x)
    assert seen == [1]  # hooks: the layers ran
