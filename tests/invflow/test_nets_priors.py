"""st-nets (invflow.nets) and latent priors (invflow.priors).

st-nets: exact zero output at initialisation, shapes, gradient flow (and double backward),
ActNorm2d data-dependent init, ZeroConv2d scaling, the Bottleneck's rank-latent_dim
information path and its spatial-size check.  Priors: log-densities against
torch.distributions, normalisation by numerical integration, sampling statistics and
input validation.  float64 wherever values are compared exactly."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import perturb_
from torch import distributions as D
from torch.autograd import gradcheck, gradgradcheck

from invflow import nets
from invflow.priors import ClassConditionalGaussianMixture, StandardNormal


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add OpenMP overhead (large on a busy
    2-core machine), so this module runs single-threaded and restores the setting after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _jacobian(net, x):
    """d net(x) / d x for one sample x [1, ...] as a [out, in] matrix, with one batched
    backward pass (st-nets are per-sample functions: copy i of x gets cotangent e_i)."""
    n_out = net(x).numel()
    xs = x.detach().repeat(n_out, *([1] * (x.dim() - 1))).requires_grad_()
    out = net(xs).reshape(n_out, n_out)
    (grad,) = torch.autograd.grad(out, xs, torch.eye(n_out, dtype=out.dtype))
    return grad.reshape(n_out, -1)


# ------------------------------------------------------------------------------ st-nets

# (name, constructor, input shape, output shape): small, odd channels and H != W.
NETS = [
    ("glow", lambda: nets.GlowNet(3, 6, hidden=8), (2, 3, 5, 4), (2, 6, 5, 4)),
    ("glow_actnorm", lambda: nets.GlowNet(3, 6, hidden=8, actnorm=True), (2, 3, 5, 4), (2, 6, 5, 4)),
    ("resnet", lambda: nets.ResNet(3, 4, hidden=8, blocks=2), (2, 3, 5, 4), (2, 4, 5, 4)),
    (
        "resnet_wn",
        lambda: nets.ResNet(3, 4, hidden=8, blocks=1, weight_norm=True),
        (2, 3, 4, 4),
        (2, 4, 4, 4),
    ),
    (
        "bottleneck",
        lambda: nets.Bottleneck(3, 4, (5, 4), hidden=6, latent_dim=3, blocks=2),
        (2, 3, 5, 4),
        (2, 4, 5, 4),
    ),
    (
        "bottleneck_b0",
        lambda: nets.Bottleneck(1, 2, 4, hidden=4, latent_dim=2, blocks=0),
        (3, 1, 4, 4),
        (3, 2, 4, 4),
    ),
    (
        "bottleneck_wn",
        lambda: nets.Bottleneck(2, 2, (4, 4), hidden=4, latent_dim=2, blocks=1, weight_norm=True),
        (2, 2, 4, 4),
        (2, 2, 4, 4),
    ),
    ("mlp", lambda: nets.MLP(5, 6, hidden=8), (3, 5), (3, 6)),
]
IDS = [n[0] for n in NETS]


@pytest.mark.parametrize("name,make,in_shape,out_shape", NETS, ids=IDS)
def test_zero_output_at_init_then_nonzero_after_perturbation(name, make, in_shape, out_shape):
    net = make().double()
    x = 3 * torch.randn(in_shape, dtype=torch.float64)
    out = net(x)  # training mode: also runs any data-dependent init
    assert out.shape == out_shape
    assert torch.count_nonzero(out) == 0
    perturb_(net)
    out = net(x)
    assert out.shape == out_shape
    assert out.abs().min() > 0 or torch.count_nonzero(out) > out.numel() // 2
    assert out.abs().max() > 1e-3


@pytest.mark.parametrize("name,make,in_shape,out_shape", NETS, ids=IDS)
def test_gradients_reach_every_parameter(name, make, in_shape, out_shape):
    net = make().double()
    x = torch.randn(in_shape, dtype=torch.float64)
    # At init the zero last layer still gets a gradient: the net is trainable from zero.
    (net(x) * torch.randn(out_shape, dtype=torch.float64)).sum().backward()
    last = [p for n, p in net.named_parameters() if n.split(".")[-1] in ("weight", "bias")][-2:]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last)

    perturb_(net)
    net.zero_grad()
    x.requires_grad_()
    (net(x) * torch.randn(out_shape, dtype=torch.float64)).sum().backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"no gradient reaches {n}"
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name,make,in_shape,out_shape", NETS, ids=IDS)
def test_double_backward_through_net(name, make, in_shape, out_shape):
    """The approximate-mass penalty (Chali et al. 2023) differentiates d log p / dx once more."""
    net = perturb_(make().double())
    x = torch.randn(in_shape, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x).square().sum(), x, create_graph=True)
    g.square().sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert any(gr.abs().sum() > 0 for gr in grads)


def test_glownet_keeps_old_signature_and_layout():
    net = nets.GlowNet(3, 6)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (1, 1), (3, 3)]
    assert convs[1].out_channels == 512
    assert isinstance(net[-1], nets.ZeroConv2d)
    assert not any(isinstance(m, nets.ActNorm2d) for m in net)
    assert all(c.bias is not None for c in convs)
    an = nets.GlowNet(3, 6, hidden=16, actnorm=True)
    assert sum(isinstance(m, nets.ActNorm2d) for m in an) == 2
    assert [c.bias is None for c in an if isinstance(c, torch.nn.Conv2d)] == [True, True, False]


def test_zeroconv2d_scales_output_by_exp_3_logs():
    torch.manual_seed(1)
    zc = nets.ZeroConv2d(3, 2).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert torch.count_nonzero(zc(x)) == 0
    with torch.no_grad():
        zc.weight.normal_()
        zc.bias.normal_()
        zc.logs.copy_(torch.tensor([0.1, -0.2]))
    plain = torch.nn.functional.conv2d(x, zc.weight, zc.bias, padding=1)
    torch.testing.assert_close(zc(x), plain * torch.exp(3 * zc.logs).view(1, -1, 1, 1))
    zc(x).sum().backward()
    assert zc.logs.grad.abs().min() > 0


def test_glownet_actnorm_data_dependent_init():
    net = nets.GlowNet(3, 4, hidden=6, actnorm=True).double()
    acts: list[torch.Tensor] = []
    norms = [m for m in net if isinstance(m, nets.ActNorm2d)]
    hooks = [m.register_forward_hook(lambda mod, inp, out: acts.append(out.detach())) for m in norms]
    x = 2.0 + 5.0 * torch.randn(16, 3, 6, 5, dtype=torch.float64)
    assert not any(bool(m.initialized) for m in norms)
    net(x)
    assert len(acts) == 2 and all(bool(m.initialized) for m in norms)
    for a in acts:
        mean = a.mean(dim=(0, 2, 3))
        std = a.std(dim=(0, 2, 3), unbiased=False)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-10, rtol=0)
        torch.testing.assert_close(std, torch.ones_like(std), atol=1e-5, rtol=0)
    # The parameters were really moved (the raw conv outputs are not normalised) ...
    assert all(m.bias.abs().max() > 1e-3 and m.logs.abs().max() > 1e-3 for m in norms)
    # ... and later batches do not re-initialise them.
    state = [(m.bias.clone(), m.logs.clone()) for m in norms]
    net(torch.randn(4, 3, 6, 5, dtype=torch.float64))
    for m, (b, s) in zip(norms, state):
        assert torch.equal(m.bias, b) and torch.equal(m.logs, s)
    for h in hooks:
        h.remove()


def test_actnorm2d_no_init_in_eval_mode_and_gradcheck():
    an = nets.ActNorm2d(3).double().eval()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(an(x), x)  # identity until initialised
    assert not bool(an.initialized)
    an.train()
    an(x)
    assert bool(an.initialized)
    assert gradcheck(
        lambda v, b, s: (v + b.view(1, -1, 1, 1)) * s.exp().view(1, -1, 1, 1) - an(v),
        (x.requires_grad_(), an.bias.detach(), an.logs.detach()),
    )
    fn = lambda v: an(v)  # noqa: E731
    assert gradcheck(fn, (x,)) and gradgradcheck(fn, (x,))
    with pytest.raises(ValueError, match=r"\[B, 3, \.\.\.\]"):
        an(torch.randn(2, 4, 2, 2, dtype=torch.float64))


def test_actnorm2d_is_not_a_flow():
    import invflow

    out = nets.ActNorm2d(2)(torch.randn(3, 2, 4, 4))
    assert isinstance(out, torch.Tensor)
    assert not isinstance(nets.ActNorm2d(2), invflow.Flow)


def test_resnet_defaults_follow_kirichenko_2020():
    net = nets.ResNet(3, 6)
    assert len(net.blocks) == 8 and net.in_conv.out_channels == 64
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert net.out_conv.kernel_size == (3, 3)
    assert torch.count_nonzero(net.out_conv.weight) == 0 and torch.count_nonzero(net.out_conv.bias) == 0


def test_st_nets_are_batch_independent():
    """No BatchNorm: a sample's output does not depend on the rest of the batch."""
    for net in (
        nets.ResNet(2, 4, hidden=8, blocks=2),
        nets.Bottleneck(2, 4, 4, hidden=4, latent_dim=3, blocks=2),
        nets.GlowNet(2, 4, hidden=8, actnorm=True),
    ):
        net = perturb_(net.double()).train()
        x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
        if any(isinstance(m, nets.ActNorm2d) for m in net.modules()):
            net(x)  # after the one-off data-dependent init the net is a per-sample function
        torch.testing.assert_close(net(x)[:2], net(x[:2]))


def test_bottleneck_latent_layers_and_rank():
    h, w, hidden, latent = 4, 3, 5, 3
    net = nets.Bottleneck(2, 4, (h, w), hidden=hidden, latent_dim=latent, blocks=2).double()
    assert net.project.weight.shape == (latent, hidden * h * w)
    assert net.unproject.weight.shape == (hidden * h * w, latent)
    seen = []
    net.project.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    perturb_(net)
    x = torch.randn(1, 2, h, w, dtype=torch.float64)
    net(torch.randn(7, 2, h, w, dtype=torch.float64))
    assert seen == [torch.Size([7, latent])]
    # Everything passes through latent_dim numbers: rank(d out / d x) <= latent_dim,
    # while the same net without the bottleneck has (near) full rank.
    jac = _jacobian(net, x)
    assert jac.shape == (4 * h * w, 2 * h * w)
    row5 = torch.autograd.grad(net(x.requires_grad_()).flatten()[5], x)[0].flatten()
    torch.testing.assert_close(jac[5], row5)
    assert torch.linalg.matrix_rank(jac) == latent
    ref = perturb_(nets.ResNet(2, 4, hidden=hidden, blocks=2).double())
    assert torch.linalg.matrix_rank(_jacobian(ref, x.detach())) > 4 * latent


def test_bottleneck_input_validation():
    net = nets.Bottleneck(2, 4, (4, 6), hidden=4, latent_dim=2, blocks=1)
    with pytest.raises(ValueError, match=r"\(4, 6\)"):
        net(torch.randn(2, 2, 6, 4))
    with pytest.raises(ValueError, match=r"\(4, 6\)"):
        net(torch.randn(2, 2, 8, 12))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(2, 3, 4, 6))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(2, 2, 24))
    assert nets.Bottleneck(1, 2, 5, hidden=2, latent_dim=1).image_size == (5, 5)
    for bad in [dict(image_size=(4,)), dict(image_size=(0, 4)), dict(image_size=4, latent_dim=0)]:
        kw = dict(image_size=4, hidden=2) | bad
        with pytest.raises(ValueError):
            nets.Bottleneck(1, 2, **kw)


def test_nets_drive_a_coupling_as_identity_at_init():
    import invflow
    from invflow import masks

    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    for factory in (
        lambda i, o: nets.ResNet(i, o, hidden=4, blocks=1),
        lambda i, o: nets.Bottleneck(i, o, 4, hidden=4, latent_dim=2, blocks=1),
        lambda i, o: nets.GlowNet(i, o, hidden=4, actnorm=True),
    ):
        layer = invflow.AffineCoupling(4, masks.Checkerboard(0), net=factory, scale="exp").double()
        y, logdet = layer(x)
        torch.testing.assert_close(y, x)
        torch.testing.assert_close(logdet, torch.zeros(2, dtype=torch.float64))


# ------------------------------------------------------------------------------ priors


@pytest.mark.parametrize("shape", [(4, 3), (4, 2, 3, 5), (6,)])
def test_standard_normal_log_prob(shape):
    z = 2 * torch.randn(shape, dtype=torch.float64)
    lp = StandardNormal().log_prob(z)
    expected = D.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0).log_prob(z)
    expected = expected.reshape(shape[0], -1).sum(1)
    assert lp.shape == (shape[0],)
    torch.testing.assert_close(lp, expected)


def test_standard_normal_sample():
    prior = StandardNormal()
    for t in (1.0, 0.7):
        s = prior.sample((4000, 5), temperature=t, dtype=torch.float64)
        assert s.shape == (4000, 5) and s.dtype == torch.float64
        assert abs(s.std().item() - t) < 0.03 * t
        assert abs(s.mean().item()) < 0.03
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(prior.sample((2, 3), generator=g1), prior.sample((2, 3), generator=g2))
    assert torch.count_nonzero(prior.sample((2, 3), temperature=0.0)) == 0
    with pytest.raises(ValueError, match="temperature"):
        prior.sample((2, 3), temperature=-1.0)
    with pytest.raises(TypeError, match="floating"):
        prior.log_prob(torch.ones(2, 3, dtype=torch.long))


def _mixture(num_classes=3, shape=(2, 3), learn_scale=True, seed=1):
    torch.manual_seed(seed)
    prior = ClassConditionalGaussianMixture(num_classes, shape, learn_scale=learn_scale).double()
    with torch.no_grad():
        prior.means.normal_(0, 1.5)
        if learn_scale:
            prior.log_stds.uniform_(-0.7, 0.7)
    return prior


def test_mixture_init_is_standard_normal():
    prior = ClassConditionalGaussianMixture(4, (3, 2, 2)).double()
    z = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    ref = StandardNormal().log_prob(z)
    torch.testing.assert_close(prior.log_prob(z), ref)
    torch.testing.assert_close(prior.log_prob(z, torch.tensor([0, 1, 2, 3, 0])), ref)
    assert {n for n, _ in prior.named_parameters()} == {"means", "log_stds"}
    fixed = ClassConditionalGaussianMixture(4, 5, learn_scale=False)
    assert [n for n, _ in fixed.named_parameters()] == ["means"] and fixed.shape == (5,)


@pytest.mark.parametrize("learn_scale", [True, False])
def test_mixture_class_conditional_log_prob_matches_torch(learn_scale):
    prior = _mixture(learn_scale=learn_scale)
    z = torch.randn(6, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    stds = prior.log_stds.exp() if learn_scale else torch.ones_like(prior.means)
    expected = D.Normal(prior.means[y], stds[y]).log_prob(z).sum(dim=(1, 2))
    torch.testing.assert_close(prior.log_prob(z, y), expected)
    per_class = prior.class_log_probs(z)
    assert per_class.shape == (6, 3)
    for k in range(3):
        expected_k = D.Normal(prior.means[k], stds[k]).log_prob(z).sum(dim=(1, 2))
        torch.testing.assert_close(per_class[:, k], expected_k)
    torch.testing.assert_close(per_class.gather(1, y[:, None]).squeeze(1), expected)


def test_mixture_log_prob_is_uniform_logsumexp():
    prior = _mixture(num_classes=4, shape=(3,))
    z = 2 * torch.randn(7, 3, dtype=torch.float64)
    lp = prior.log_prob(z)
    torch.testing.assert_close(lp, torch.logsumexp(prior.class_log_probs(z), dim=1) - math.log(4))
    mix = D.MixtureSameFamily(
        D.Categorical(logits=torch.zeros(4, dtype=torch.float64)),
        D.Independent(D.Normal(prior.means, prior.log_stds.exp()), 1),
    )
    torch.testing.assert_close(lp, mix.log_prob(z))
    # far from every mode, logsumexp stays finite where exp() would underflow
    assert torch.isfinite(prior.log_prob(torch.full((1, 3), 200.0, dtype=torch.float64))).all()


def test_mixture_1d_density_integrates_to_one():
    prior = ClassConditionalGaussianMixture(3, (1,)).double()
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-3.0], [0.5], [4.0]]))
        prior.log_stds.copy_(torch.tensor([[math.log(0.3)], [0.0], [math.log(2.0)]]))
    grid = torch.linspace(-30, 30, 120_001, dtype=torch.float64)
    with torch.no_grad():
        dens = prior.log_prob(grid[:, None]).exp()
        assert abs(torch.trapezoid(dens, grid).item() - 1.0) < 1e-7
        per_class = prior.class_log_probs(grid[:, None]).exp()
        masses = torch.trapezoid(per_class, grid, dim=0)
        torch.testing.assert_close(masses, torch.ones(3, dtype=torch.float64))
        # mixture weights are uniform: the density is the mean of the class densities
        torch.testing.assert_close(dens, per_class.mean(dim=1))


def test_mixture_labelled_gradient_reaches_only_its_class():
    prior = _mixture(num_classes=3, shape=(2, 3))
    z = torch.randn(4, 2, 3, dtype=torch.float64)
    prior.log_prob(z, torch.tensor([1, 1, 1, 1])).sum().backward()
    for k in (0, 2):
        assert torch.count_nonzero(prior.means.grad[k]) == 0
        assert torch.count_nonzero(prior.log_stds.grad[k]) == 0
    assert prior.means.grad[1].abs().sum() > 0 and prior.log_stds.grad[1].abs().sum() > 0


def test_mixture_sample():
    prior = _mixture(num_classes=3, shape=(2, 2))
    with torch.no_grad():
        for t in (1.0, 0.5):
            s = prior.sample(6000, y=2, temperature=t)
            assert s.shape == (6000, 2, 2) and s.dtype == torch.float64
            torch.testing.assert_close(s.mean(0), prior.means[2], atol=0.1, rtol=0)
            torch.testing.assert_close(s.std(0), t * prior.log_stds[2].exp(), atol=0, rtol=0.06)
        z, labels = prior.sample(3000, return_labels=True)
        assert z.shape == (3000, 2, 2) and labels.shape == (3000,)
        counts = torch.bincount(labels, minlength=3)
        assert counts.min() > 850  # uniform mixture weights
        y = torch.tensor([0, 1, 2, 0])
        z0 = prior.sample(4, y=y, temperature=0.0)
        torch.testing.assert_close(z0, prior.means[y])
        torch.testing.assert_close(prior.sample(2, y=torch.tensor(1), temperature=0.0), prior.means[[1, 1]])
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        assert torch.equal(prior.sample(3, generator=g1), prior.sample(3, generator=g2))


def test_mixture_input_validation():
    prior = _mixture(num_classes=3, shape=(2, 3))
    z = torch.randn(4, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        prior.log_prob(z, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        prior.log_prob(z, torch.tensor([0, -1, 2, 0]))
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        prior.log_prob(z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="one-hot"):
        prior.log_prob(z, torch.eye(3, dtype=torch.long)[[0, 1, 2, 0]])
    with pytest.raises(TypeError, match="integer"):
        prior.log_prob(z, torch.tensor([0.0, 1.0, 2.0, 0.0]))
    for bad in (torch.randn(4, 3, 2), torch.randn(4, 6), torch.randn(4, 2, 3, 1)):
        labelled = lambda v: prior.log_prob(v, torch.zeros(4, dtype=torch.long))  # noqa: E731
        for call in (prior.log_prob, prior.class_log_probs, labelled):
            with pytest.raises(ValueError, match=r"\[B, 2, 3\]"):
                call(bad.double())
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        prior.sample(2, y=3)
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        prior.sample(2, y=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="temperature"):
        prior.sample(2, temperature=float("nan"))
    with pytest.raises(ValueError, match="meta"):
        prior.log_prob(torch.empty(4, 2, 3, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match="meta"):
        prior.log_prob(z, torch.zeros(4, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="n must be"):
        prior.sample(-1)
    with pytest.raises(TypeError, match="integer"):
        prior.sample(2, y=1.0)
    with pytest.raises(ValueError):
        ClassConditionalGaussianMixture(0, (2,))
    with pytest.raises(ValueError):
        ClassConditionalGaussianMixture(2, (2, 0))


@pytest.mark.parametrize("kind,actnorm", [("glow", False), ("glow", True), ("resnet", False)])
def test_cpu_channels_last_st_nets_match_nchw(kind, actnorm, monkeypatch):
    """CPU st-nets run their convolutions in channels_last (faster oneDNN path); the result,
    its gradients and the output layout must equal the NCHW computation."""
    torch.manual_seed(0)
    net = (
        nets.GlowNet(6, 8, hidden=16, actnorm=actnorm)
        if kind == "glow"
        else nets.ResNet(6, 8, hidden=16, blocks=2)
    )
    net = net.double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    results = {}
    for flag in (False, True):
        monkeypatch.setattr(nets, "CPU_CHANNELS_LAST", flag)
        net.eval()
        y = net(x)
        assert y.is_contiguous()
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        results[flag] = (y.detach(), gx)
    torch.testing.assert_close(results[True][0], results[False][0])
    torch.testing.assert_close(results[True][1], results[False][1])
