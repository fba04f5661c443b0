"""Layers: brute-force Jacobian log-dets, inverses, gradcheck / gradgradcheck on both
backends, fused == reference, data-dependent init and input validation."""

from __future__ import annotations

import pytest
import torch
from helpers import brute_force_logdet, functional, perturb_
from torch.autograd import gradcheck, gradgradcheck

import invflow
from invflow import masks, nets


def small_net(i, o):
    return nets.GlowNet(i, o, hidden=4)


def mlp_net(i, o):
    return nets.MLP(i, o, hidden=8)


# (name, constructor, input shape): small enough for full Jacobians, odd C and H != W.
LAYERS = [
    ("actnorm", lambda: invflow.ActNorm(3), (2, 3, 4, 2)),
    ("actnorm_vec", lambda: invflow.ActNorm(5), (3, 5)),
    ("invconv_lu", lambda: invflow.InvConv1x1(3, lu=True), (2, 3, 4, 2)),
    ("invconv_plain", lambda: invflow.InvConv1x1(3, lu=False), (2, 3, 2, 3)),
    ("invconv_vec", lambda: invflow.InvConv1x1(4), (3, 4)),
    (
        "coupling_channel0_sigmoid",
        lambda: invflow.AffineCoupling(3, masks.Channel(0), net=small_net),
        (2, 3, 4, 2),
    ),
    (
        "coupling_channel1_exp",
        lambda: invflow.AffineCoupling(3, masks.Channel(1), net=small_net, scale="exp"),
        (2, 3, 2, 3),
    ),
    (
        "coupling_checker_tanh",
        lambda: invflow.AffineCoupling(3, masks.Checkerboard(1), net=small_net, scale="tanh"),
        (2, 3, 4, 2),
    ),
    (
        "coupling_vec_mlp",
        lambda: invflow.AffineCoupling(5, masks.Channel(0), net=mlp_net, scale="exp"),
        (3, 5),
    ),
    (
        "coupling_horizontal_exp",
        lambda: invflow.AffineCoupling(2, masks.Horizontal(0), net=small_net, scale="exp"),
        (2, 2, 4, 3),
    ),
    ("coupling_cycle", lambda: invflow.AffineCoupling(2, masks.Cycle(1), net=small_net), (2, 2, 4, 4)),
    ("additive_channel", lambda: invflow.AdditiveCoupling(3, masks.Channel(1), net=small_net), (2, 3, 2, 3)),
    (
        "additive_checker",
        lambda: invflow.AdditiveCoupling(2, masks.Checkerboard(0), net=small_net),
        (2, 2, 2, 4),
    ),
    ("fixed_linear", lambda: invflow.FixedLinear(4, seed=3), (2, 4, 2, 2)),
    ("squeeze", lambda: invflow.Squeeze(), (2, 3, 4, 2)),
    (
        "glow_step",
        lambda: invflow.Sequential(
            invflow.ActNorm(3),
            invflow.InvConv1x1(3),
            invflow.AffineCoupling(3, masks.Channel(0), net=small_net),
        ),
        (2, 3, 2, 4),
    ),
]
IDS = [name for name, _, _ in LAYERS]


def build(make, device, dtype=torch.float64):
    return perturb_(make().to(device=device, dtype=dtype))


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=IDS)
def test_logdet_equals_brute_force_jacobian(name, make, shape, backend, device):
    layer = build(make, device)
    x = torch.randn(shape, dtype=torch.float64, device=device)
    _, logdet = layer(x)
    assert logdet.shape == (shape[0],)
    torch.testing.assert_close(logdet, brute_force_logdet(layer, x))


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=IDS)
def test_inverse_roundtrip_and_negated_logdet(name, make, shape, backend, device):
    layer = build(make, device)
    x = torch.randn(shape, dtype=torch.float64, device=device)
    y, logdet = layer(x)
    x_back, inv_logdet = layer.inverse(y)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(inv_logdet, -logdet)
    y_again, _ = layer(x_back)
    torch.testing.assert_close(y_again, y)


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=IDS)
def test_gradcheck_and_gradgradcheck(name, make, shape, backend, device):
    layer = build(make, device)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    fn, params = functional(layer)
    assert gradcheck(fn, (x, *params))
    assert gradgradcheck(fn, (x, *params))

    y = layer(x)[0].detach().requires_grad_()
    inv, params = functional(layer, inverse=True)
    assert gradcheck(inv, (y, *params))
    assert gradgradcheck(inv, (y, *params))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,make,shape", LAYERS, ids=IDS)
def test_fused_layer_equals_reference_layer(name, make, shape, dtype, device):
    layer = build(make, device, dtype)
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    outs = {}
    for b in ("fused", "reference"):
        with invflow.backend(b):
            y, ld = layer(x)
            grads = torch.autograd.grad((y.square().sum() + ld.sum()), [x, *layer.parameters()])
            outs[b] = (y, ld, *grads)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for got, want in zip(outs["fused"], outs["reference"]):
        torch.testing.assert_close(got, want, **tol)


def test_actnorm_data_dependent_init(backend):
    layer = invflow.ActNorm(4).double()
    x = 3.0 + 2.0 * torch.randn(64, 4, 5, 5, dtype=torch.float64)
    y, _ = layer(x)  # training mode: first forward initialises
    assert bool(layer.initialized)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)
    # std + eps with eps = 1e-6 in the denominator
    torch.testing.assert_close(
        y.std(dim=(0, 2, 3), unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0
    )
    before = layer.bias.detach().clone()
    layer(torch.randn(8, 4, 5, 5, dtype=torch.float64))  # no re-initialisation
    torch.testing.assert_close(layer.bias.detach(), before)


def test_actnorm_initialized_flag_survives_state_dict():
    a = invflow.ActNorm(2)
    a(torch.randn(4, 2, 3, 3))
    b = invflow.ActNorm(2)
    b.load_state_dict(a.state_dict())
    assert bool(b.initialized)


def test_eval_mode_does_not_initialize():
    layer = invflow.ActNorm(3).eval()
    layer(torch.randn(4, 3, 2, 2))
    assert not bool(layer.initialized)


@pytest.mark.parametrize(
    "make,bad",
    [
        (lambda: invflow.ActNorm(3), torch.randn(2, 4, 5, 5)),
        (lambda: invflow.InvConv1x1(3), torch.randn(2, 2, 5, 5)),
        (lambda: invflow.AffineCoupling(3, masks.Channel(0), net=small_net), torch.randn(2, 5, 4, 4)),
        (lambda: invflow.AffineCoupling(3, masks.Checkerboard(0), net=small_net), torch.randn(2, 3, 4)),
        (lambda: invflow.ActNorm(3), torch.randn(3)),
        (lambda: invflow.Squeeze(), torch.randn(2, 3, 5, 4)),
        (lambda: invflow.Squeeze(), torch.randn(2, 3, 4)),
    ],
)
def test_bad_shapes_raise_value_error(make, bad):
    with pytest.raises(ValueError, match="expected|must"):
        make()(bad)


def test_integer_input_raises_type_error():
    with pytest.raises(TypeError, match="floating"):
        invflow.ActNorm(3)(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


def test_constructor_rejects_impossible_configurations():
    with pytest.raises(ValueError):
        invflow.AffineCoupling(1, masks.Channel(0))
    with pytest.raises(ValueError):
        invflow.AffineCoupling(4, masks.Channel(0), scale="softplus")
    with pytest.raises(ValueError):
        masks.Channel(2)
    with pytest.raises(TypeError):
        invflow.AffineCoupling(4, "channel")
    with pytest.raises(TypeError):
        invflow.Sequential(torch.nn.Linear(2, 2))


def test_st_net_with_wrong_output_shape_is_reported():
    layer = invflow.AffineCoupling(4, masks.Channel(0), net=torch.nn.Conv2d(2, 3, 1))
    with pytest.raises(ValueError, match="st-net must return"):
        layer(torch.randn(2, 4, 3, 3))


PARITY_MASKS = [
    masks.Channel(0),
    masks.Channel(1),
    masks.Checkerboard(0),
    masks.Checkerboard(1),
    masks.Horizontal(0),
    masks.Horizontal(1),
]


@pytest.mark.parametrize("mask", PARITY_MASKS, ids=repr)
@pytest.mark.parametrize("channels", [2, 3, 5])
def test_mask_parities_are_complementary(mask, channels):
    shape = (channels, 3, 4)
    other = type(mask)(1 - mask.parity)
    a, b = mask.transformed(shape), other.transformed(shape)
    assert not (a & b).any() and (a | b).all()
    assert a.any() and (~a).any()


@pytest.mark.parametrize("mask", PARITY_MASKS + [masks.Cycle(k) for k in range(4)], ids=repr)
def test_transformed_and_conditioning_sets_are_disjoint(mask):
    shape = (3, 4, 6)
    t, c = mask.transformed(shape), mask.conditioning(shape)
    assert t.shape == c.shape == shape
    assert not (t & c).any() and t.any() and c.any()
    if not isinstance(mask, masks.Cycle):
        assert (t | c).all()  # the two sets cover the input


def test_horizontal_mask_transforms_bottom_half_first():
    t = masks.Horizontal(0).transformed((1, 4, 3))[0]
    assert not t[:2].any() and t[2:].all()


def test_cycle_of_four_couplings_visits_every_quadrant_once():
    """Kirichenko et al. 2020 App. I.1: step k transforms quadrant k+1 from quadrant k; after four steps every
    quadrant has been transformed once, conditioned on its predecessor."""
    shape = (2, 4, 6)
    quadrant = masks.Cycle.quadrants(shape)
    transformed = [masks.Cycle(k).transformed(shape) for k in range(4)]
    assert torch.stack(transformed).sum(0).eq(1).all()  # each entry transformed exactly once
    for k in range(4):
        cond = masks.Cycle(k).conditioning(shape)[0]
        trans = transformed[k][0]
        assert quadrant[cond].unique().tolist() == [k % 4]
        assert quadrant[trans].unique().tolist() == [(k + 1) % 4]


def test_cycle_coupling_ignores_the_two_other_quadrants(backend):
    """Changing a quadrant that is neither conditioning nor transformed changes nothing else."""
    layer = perturb_(invflow.AffineCoupling(1, masks.Cycle(0), net=small_net).double())
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 0, 2:, :] += 1.0  # quadrants 2 and 3 (bottom)
    y, ld = layer(x)
    y2, ld2 = layer(x2)
    torch.testing.assert_close(y[0, 0, :2, :], y2[0, 0, :2, :])
    torch.testing.assert_close(ld, ld2)


def test_coupling_leaves_conditioning_entries_unchanged(backend):
    for mask in (masks.Channel(0), masks.Channel(1), masks.Checkerboard(0)):
        layer = perturb_(invflow.AffineCoupling(3, mask, net=small_net).double())
        x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
        y, _ = layer(x)
        keep = ~mask.transformed(x.shape[1:])
        torch.testing.assert_close(y[:, keep], x[:, keep], rtol=0, atol=0)
        assert not torch.allclose(y[:, ~keep], x[:, ~keep])


def test_squeeze_layout():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, ld = invflow.Squeeze()(x)
    assert y.shape == (1, 4, 2, 2) and ld.item() == 0
    # channel 2*i + j holds offset (i, j) of each 2x2 block
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))


def test_invconv_lu_weight_is_p_l_u():
    layer = perturb_(invflow.InvConv1x1(5, lu=True).double())
    w, logdet = layer.weight_and_logdet()
    torch.testing.assert_close(logdet, torch.linalg.slogdet(w)[1])


def test_actnorm_init_flag_mirror_survives_state_dict_round_trip():
    """The Python mirror of ``initialized`` (no host sync / graph break per forward) follows
    initialize() and load_state_dict(), so a loaded uninitialised layer still initialises."""
    torch.manual_seed(0)
    layer = invflow.ActNorm(3)
    fresh = {k: v.clone() for k, v in layer.state_dict().items()}
    x = 3 + 2 * torch.randn(64, 3, 4, 4)
    layer(x)
    assert layer._ready and bool(layer.initialized)
    y, _ = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    layer.load_state_dict(fresh)  # back to uninitialised: must re-initialise on x2
    assert not layer._ready
    x2 = -1 + 0.5 * torch.randn(64, 3, 4, 4)
    y2, _ = layer(x2)
    torch.testing.assert_close(y2.std((0, 2, 3)), torch.ones(3), atol=1e-2, rtol=0)
    trained = layer.state_dict()
    other = invflow.ActNorm(3)
    other.load_state_dict(trained)  # initialised weights: must not re-initialise
    y3, _ = other(x)
    torch.testing.assert_close(y3, layer(x)[0])
