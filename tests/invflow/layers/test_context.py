"""Conditional layers: the context reaches the st-net (broadcast or pooled), log-dets equal
brute-force Jacobians at a fixed context, inverse(forward(x)) == x, double backward, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import brute_force_logdet, perturb_

import invflow
from invflow import masks, nets
from invflow.conditioning import broadcast_context, resize_context
from invflow.models.glow import glow_step

D64 = torch.float64


def vector_coupling(d=5, k=3, scale="tanh"):
    layer = invflow.AffineCoupling(
        d, masks.Channel(0), net=lambda i, o: nets.MLP(i, o, hidden=8), scale=scale, context_channels=k
    )
    return perturb_(layer.double(), 0.3)


def image_coupling(mask, c=2, k=3):
    return perturb_(invflow.AffineCoupling(c, mask, hidden=6, context_channels=k).double(), 0.2)


def _brute_logdet(layer, x, context):
    """log|det dy/dx| per sample (``helpers.brute_force_logdet``) at each sample's context."""
    return torch.cat(
        [
            brute_force_logdet(lambda v, i=i: layer(v, context=context[i : i + 1]), x[i : i + 1])
            for i in range(len(x))
        ]
    )


@pytest.mark.parametrize("scale", ["tanh", "sigmoid", "exp"])
def test_vector_coupling_logdet_is_the_jacobian_at_fixed_context(scale):
    layer = vector_coupling(scale=scale)
    x, c = torch.randn(4, 5, dtype=D64), torch.randn(4, 3, dtype=D64)
    y, ld = layer(x, context=c)
    torch.testing.assert_close(ld, _brute_logdet(layer, x, c))
    back, inv_ld = layer.inverse(y, context=c)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inv_ld, -ld)


@pytest.mark.parametrize("mask", [masks.Checkerboard(0), masks.Channel(1), masks.Cycle(2)], ids=repr)
@pytest.mark.parametrize("image_context", [False, True])
def test_image_coupling_logdet_and_inverse_with_vector_or_image_context(mask, image_context):
    layer = image_coupling(mask)
    x = torch.randn(2, 2, 4, 4, dtype=D64)
    # an image context at twice the layer's size is average-pooled to 4 x 4
    c = torch.randn(2, 3, 8, 8, dtype=D64) if image_context else torch.randn(2, 3, dtype=D64)
    y, ld = layer(x, context=c)
    torch.testing.assert_close(ld, _brute_logdet(layer, x, c))
    back, inv_ld = layer.inverse(y, context=c)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inv_ld, -ld)


def test_changing_the_context_changes_the_output():
    layer = vector_coupling()
    x, c = torch.randn(4, 5, dtype=D64), torch.randn(4, 3, dtype=D64)
    y1, ld1 = layer(x, context=c)
    y2, ld2 = layer(x, context=c + 1.0)
    assert (y1 - y2).abs().max() > 1e-3 and (ld1 - ld2).abs().max() > 1e-3
    # the conditioning half passes unchanged whatever the context
    torch.testing.assert_close(y1[:, :2], y2[:, :2])


def test_image_context_is_pooled_to_the_layer_resolution():
    """An 8 x 8 context gives the same output as its 2 x 2 average pooling at a 4 x 4 layer."""
    layer = image_coupling(masks.Checkerboard(1))
    x, c = torch.randn(2, 2, 4, 4, dtype=D64), torch.randn(2, 3, 8, 8, dtype=D64)
    y_big, _ = layer(x, context=c)
    y_pooled, _ = layer(x, context=torch.nn.functional.avg_pool2d(c, 2))
    torch.testing.assert_close(y_big, y_pooled)
    # a constant image context equals the vector context broadcast over space
    v = torch.randn(2, 3, dtype=D64)
    y_vec, _ = layer(x, context=v)
    y_img, _ = layer(x, context=v[:, :, None, None].expand(2, 3, 4, 4))
    torch.testing.assert_close(y_vec, y_img)


def test_gradgradcheck_of_a_conditional_coupling():
    layer = vector_coupling(d=4, k=2)
    x = torch.randn(3, 4, dtype=D64, requires_grad=True)
    c = torch.randn(3, 2, dtype=D64, requires_grad=True)

    def f(x, c):
        y, ld = layer(x, context=c)
        return y, ld

    assert torch.autograd.gradcheck(f, (x, c))
    assert torch.autograd.gradgradcheck(f, (x, c))


@pytest.mark.parametrize("additive", [False, True])
def test_a_factory_gets_the_context_channels_and_a_context_aware_net_concatenates_itself(additive):
    cls = invflow.AdditiveCoupling if additive else invflow.AffineCoupling
    seen = []

    def factory(i, o):
        seen.append(i)
        return nets.MLP(i, o, hidden=8)

    layer = perturb_(cls(6, masks.Channel(0), net=factory, context_channels=4).double())
    assert seen == [3 + 4]  # FrEIA's subnet_constructor convention: in_channels + context
    aware = perturb_(
        cls(
            6,
            masks.Channel(0),
            net=nets.MLP(3, 3 * layer.params_per_entry, hidden=8, context_features=4),
            context_channels=4,
        ).double()
    )
    x, c = torch.randn(2, 6, dtype=D64), torch.randn(2, 4, dtype=D64)
    for lay in (layer, aware):
        y, _ = lay(x, context=c)
        torch.testing.assert_close(lay.inverse(y, context=c)[0], x)


def test_sequential_passes_the_context_to_every_layer_and_ignores_it_for_unconditional_ones():
    seq = invflow.Sequential(
        invflow.ActNorm(5),
        invflow.FixedLinear(5),
        vector_coupling(),
        invflow.InvConv1x1(5),
        vector_coupling(),
    ).double()
    seq[0].initialize(torch.randn(8, 5, dtype=D64))
    x, c = torch.randn(4, 5, dtype=D64), torch.randn(4, 3, dtype=D64)
    y, ld = seq(x, context=c)
    torch.testing.assert_close(ld, _brute_logdet(seq, x, c))
    torch.testing.assert_close(seq.inverse(y, context=c)[0], x)
    # the unconditional layers accept and ignore a context
    for layer in (invflow.ActNorm(5), invflow.FixedLinear(5), invflow.InvConv1x1(5)):
        layer = layer.double().eval()
        torch.testing.assert_close(layer(x, context=c)[0], layer(x)[0])
    sq = invflow.Squeeze()
    img = torch.randn(1, 1, 4, 4, dtype=D64)
    torch.testing.assert_close(sq(img, context=torch.ones(1, 2))[0], sq(img)[0])
    plain = invflow.AffineCoupling(5, masks.Channel(0), net=lambda i, o: nets.MLP(i, o, hidden=4)).double()
    torch.testing.assert_close(plain(x, context=c)[0], plain(x)[0])


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_a_conditional_glow_step_takes_the_layer_path_on_both_backends(backend):
    """The registered fast paths of Sequential apply only without a context; a conditional
    Glow step gives the same values on both backends."""
    if backend == "fused" and not invflow.fused_available():
        pytest.skip("the extension is not built")
    torch.manual_seed(0)
    step = perturb_(glow_step(4, 0, lambda i, o: nets.GlowNet(i, o, 6), "sigmoid", True, 3).double(), 0.1)
    step[0].initialize(torch.randn(4, 4, 4, 4, dtype=D64))
    x, c = torch.randn(2, 4, 4, 4, dtype=D64), torch.randn(2, 3, dtype=D64)
    with invflow.backend("reference"):
        want = step(x, context=c)
    with invflow.backend(backend):
        got = step(x, context=c)
        with pytest.raises(ValueError, match="context of shape"):
            step(x)  # the fast path does not swallow a missing context
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "make",
    [
        lambda k: nets.MLP(3, 4, hidden=8, context_features=k),
        lambda k: nets.GlowNet(3, 4, hidden=8, context_channels=k),
        lambda k: nets.ResNet(3, 4, hidden=8, blocks=1, context_channels=k),
        lambda k: nets.Bottleneck(3, 4, image_size=4, hidden=8, latent_dim=3, blocks=2, context_channels=k),
    ],
    ids=["MLP", "GlowNet", "ResNet", "Bottleneck"],
)
def test_st_nets_see_the_context(make):
    net = perturb_(make(2).double(), 0.2)
    plain = make(0).double()
    shape = (2, 3) if isinstance(net, nets.MLP) else (2, 3, 4, 4)
    h, c = torch.randn(*shape, dtype=D64), torch.randn(2, 2, dtype=D64)
    assert (net(h, context=c) - net(h, context=-c)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="context of shape"):
        net(h)
    with pytest.raises(ValueError, match="built without one"):
        plain(h, context=c)
    with pytest.raises(ValueError, match="batch size"):
        net(h, context=c[:1])
    if not isinstance(net, nets.MLP):
        ci = torch.randn(2, 2, 8, 8, dtype=D64)
        torch.testing.assert_close(net(h, context=ci), net(h, context=resize_context(ci, (4, 4))))


def test_context_errors_name_the_argument():
    layer = vector_coupling()
    x, c = torch.randn(4, 5, dtype=D64), torch.randn(4, 3, dtype=D64)
    with pytest.raises(ValueError, match=r"AffineCoupling: a context of shape \[4, 3\] is required"):
        layer(x)
    with pytest.raises(ValueError, match="AffineCoupling.inverse: a context"):
        layer.inverse(x)
    with pytest.raises(ValueError, match="batch size 2 differs from the input's 4"):
        layer(x, context=c[:2])
    with pytest.raises(ValueError, match=r"must have shape \[4, 3\], got \[4, 2\]"):
        layer(x, context=c[:, :2])
    with pytest.raises(ValueError, match=r"must have shape \[4, 3\]"):
        layer(x, context=c.view(4, 3, 1, 1))  # a vector layer takes no image context
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer(x, context=[[0.0] * 3] * 4)
    with pytest.raises(TypeError, match="floating"):
        layer(x, context=torch.ones(4, 3, dtype=torch.long))
    img = image_coupling(masks.Checkerboard(0))
    with pytest.raises(ValueError, match="integer multiple"):
        img(torch.randn(2, 2, 4, 4, dtype=D64), context=torch.randn(2, 3, 6, 6, dtype=D64))
    with pytest.raises(ValueError, match="context_channels must be"):
        invflow.AffineCoupling(4, masks.Channel(0), context_channels=-1)


def test_broadcast_context_shapes():
    h = torch.zeros(2, 5, 3, 4)
    v = torch.arange(6.0).view(2, 3)
    b = broadcast_context(v, h)
    assert b.shape == (2, 3, 3, 4) and torch.equal(b[:, :, 2, 1], v)
    img = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)
    torch.testing.assert_close(broadcast_context(img, h), torch.nn.functional.avg_pool2d(img, 2))
    assert torch.equal(broadcast_context(v, torch.zeros(2, 7)), v)
    with pytest.raises(ValueError, match="cannot condition"):
        broadcast_context(img, torch.zeros(2, 7))
