"""The distributions-style API of models: rsample (differentiable samples), sample_and_log_prob
(one inverse pass, equal to log_prob), reverse-KL training, st-net constructors (net=callable),
and the sample-size limit."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import perturb_

import invflow

D64 = torch.float64


def _ready(model, scale=0.05):
    model = model.double().train()
    shape = model.input_shape
    x = torch.rand(16, *shape, dtype=D64) - 0.5 if len(shape) == 3 else torch.randn(16, *shape, dtype=D64)
    model(x)  # ActNorm's data-dependent initialisation
    return perturb_(model, scale)


MODELS = {
    "VectorFlow": lambda: invflow.VectorFlow(3, blocks=2, hidden=8),
    "Glow": lambda: invflow.Glow(1, 4, levels=2, steps=1, hidden=4),
    "Glow-split-prior": lambda: invflow.Glow(1, 4, levels=2, steps=1, hidden=4, split_prior=True),
    "RealNVP": lambda: invflow.RealNVP(1, 4, levels=2, blocks=1, hidden=4),
    "DenseGlow": lambda: invflow.DenseGlow(1, 4, levels=2, steps=1, hidden=8),
    "PatchGlow": lambda: invflow.PatchGlow(1, 4, patch_size=2, steps=1, hidden=4),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_sample_and_log_prob_equals_log_prob(name):
    torch.manual_seed(0)
    model = _ready(MODELS[name]())
    g = torch.Generator().manual_seed(3)
    x, log_p = model.sample_and_log_prob(4, temperature=0.7, generator=g)
    assert x.shape == (4, *model.input_shape) and log_p.shape == (4,)
    torch.testing.assert_close(log_p, model.log_prob(x))
    # the same draws as sample() with the same generator
    torch.testing.assert_close(
        model.sample(4, temperature=0.7, generator=torch.Generator().manual_seed(3)), x
    )


def test_rsample_is_differentiable_and_sample_is_not():
    torch.manual_seed(0)
    model = _ready(invflow.VectorFlow(3, blocks=2, hidden=8), scale=0.2)
    x = model.rsample(16)
    assert x.requires_grad
    x.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not model.sample(4).requires_grad
    # sample_and_log_prob carries gradients through both outputs
    model.zero_grad()
    x, log_p = model.sample_and_log_prob(8)
    log_p.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # and to the context of a conditional model
    cm = perturb_(invflow.VectorFlow(3, blocks=1, hidden=8, context_dim=2).double(), 0.2)
    c = torch.randn(1, 2, dtype=D64, requires_grad=True)
    cm.rsample(5, context=c).sum().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0


def _gaussian_log_prob(x, mean, cov):
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)


@pytest.fixture
def one_thread():
    """A tiny model's many small ops: threads only contend (the suite runs in parallel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reverse_kl_fits_a_vector_flow_to_a_known_gaussian(one_thread):
    """Minimise KL(q || p) = E_q[log q(x) - log p(x)] over rsample draws (Rezende & Mohamed
    2015, Sec. 4): the untrained flow (about N(0, I)) is far from the target, the trained one
    close to it."""
    torch.manual_seed(0)
    mean = torch.tensor([1.5, -1.0], dtype=D64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=D64)
    model = invflow.VectorFlow(2, blocks=2, hidden=16).double()
    model(torch.randn(256, 2, dtype=D64))  # ActNorm initialised on N(0, I): starts near identity
    g = torch.Generator().manual_seed(1)

    def kl(n=4000):
        with torch.no_grad():
            x, log_q = model.sample_and_log_prob(n, generator=g)
            return float((log_q - _gaussian_log_prob(x, mean, cov)).mean())

    before = kl()
    exact = 0.5 * (
        torch.trace(torch.linalg.inv(cov)) + mean @ torch.linalg.inv(cov) @ mean - 2 + torch.logdet(cov)
    )
    assert before > 0.5 * float(exact)  # KL(N(0, I) || p) = 5.9 nats; ActNorm's init moves it a little
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(150):
        opt.zero_grad()
        x, log_q = model.sample_and_log_prob(64, generator=g)
        loss = (log_q - _gaussian_log_prob(x, mean, cov)).mean()
        loss.backward()
        opt.step()
    after = kl()
    assert after < 0.1 < before, (before, after)


@pytest.mark.parametrize("cls", [invflow.Glow, invflow.RealNVP])
def test_glow_and_realnvp_take_an_st_net_constructor(cls, tmp_path):
    calls = []

    def subnet(c_in, c_out):  # FrEIA's subnet_constructor signature
        calls.append((c_in, c_out))
        return torch.nn.Sequential(
            torch.nn.Conv2d(c_in, 6, 3, padding=1),
            torch.nn.ReLU(),
            invflow.nets.zero_init(torch.nn.Conv2d(6, c_out, 1)),
        )

    kw = dict(levels=2, steps=1) if cls is invflow.Glow else dict(levels=2, blocks=1)
    torch.manual_seed(0)
    model = _ready(cls(1, 4, net=subnet, **kw))
    assert calls and all(o % 2 == 0 for _, o in calls)
    assert all(
        isinstance(m, torch.nn.Sequential) for m in [c.net for c in model.modules() if hasattr(c, "net")]
    )
    x = torch.rand(2, 1, 4, 4, dtype=D64) - 0.5
    out = model(x)
    torch.testing.assert_close(model.inverse(out.latents), x)
    with pytest.raises(TypeError, match="net=<callable> cannot be saved"):
        invflow.save(model, str(tmp_path / "m.safetensors"))


@pytest.mark.parametrize("method", ["sample", "rsample", "sample_and_log_prob"])
def test_sampling_more_than_2_31_elements_is_refused(method):
    model = invflow.Glow(3, 32, levels=2, steps=1, hidden=4)
    with pytest.raises(ValueError, match=r"exceed 2\*\*31 elements.*sample in batches of at most 699050"):
        getattr(model, method)(10**9)
    vf = invflow.VectorFlow(4, blocks=1, hidden=4)
    with pytest.raises(ValueError, match="sample in batches"):
        getattr(vf, method)(2**30)
    assert getattr(vf, method)(2) is not None  # small requests run
    for bad in (0, -1, 2.5):
        with pytest.raises((ValueError, TypeError), match="n must be"):
            getattr(vf, method)(bad)
    with pytest.raises(ValueError, match="temperature"):
        getattr(vf, method)(2, temperature=-1.0)


def test_sample_limit_is_exactly_2_31_elements():
    from invflow.models import base

    assert base.MAX_SAMPLE_ELEMENTS == 2**31
    model = invflow.VectorFlow(2, blocks=1, hidden=4)
    n, t = model._check_sample_args(2**30, 1.0)  # exactly 2**31 elements: allowed
    assert n == 2**30 and t == 1.0
    with pytest.raises(ValueError, match="2\\*\\*31"):
        model._check_sample_args(2**30 + 1, 1.0)
    assert math.prod(model.input_shape) == 2
