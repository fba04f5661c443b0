"""Conditional models: VectorFlow(context_dim=K), Glow / RealNVP(context_channels=K) and the
label-embedding ClassEmbeddingFlow: change of variables at a fixed context, inverse, sampling
with a context, errors, save / load."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import perturb_
from torch.autograd.functional import jacobian

import invflow
from invflow.data import standard_normal_log_prob

D64 = torch.float64


def _ready(model, x, context, scale=0.1):
    """ActNorm initialised on (x, context), then random weights everywhere, eval mode."""
    model.train()
    model(x, context=context)
    return perturb_(model, scale)


def vector_flow(k=3, **kw):
    torch.manual_seed(0)
    m = invflow.VectorFlow(4, blocks=3, hidden=16, context_dim=k, **kw).double()
    return _ready(m, torch.randn(32, 4, dtype=D64), torch.randn(32, k, dtype=D64))


def glow(k=2, **kw):
    torch.manual_seed(0)
    m = invflow.Glow(1, 8, levels=2, steps=2, hidden=8, context_channels=k, **kw).double()
    return _ready(m, torch.rand(8, 1, 8, 8, dtype=D64) - 0.5, torch.randn(8, k, dtype=D64), 0.05)


def test_vector_flow_log_prob_is_the_change_of_variables_at_a_fixed_context():
    m = vector_flow()
    x, c = torch.randn(3, 4, dtype=D64), torch.randn(3, 3, dtype=D64)
    out = m(x, context=c)
    for i in range(3):

        def to_z(v, i=i):
            return m(v.view(1, 4), context=c[i : i + 1]).latents[0].flatten()

        z = to_z(x[i])
        want = standard_normal_log_prob(z.view(1, 4)) + torch.linalg.slogdet(jacobian(to_z, x[i]))[1]
        torch.testing.assert_close(out.log_prob[i : i + 1], want)
    torch.testing.assert_close(m.log_prob(x, context=c), out.log_prob)
    torch.testing.assert_close(m.inverse(out.latents, context=c), x)
    assert (m.log_prob(x, context=c) - m.log_prob(x, context=c + 1)).abs().max() > 1e-3


@pytest.mark.parametrize("image_context", [False, True])
@pytest.mark.parametrize("split_prior", [False, True])
def test_glow_with_a_vector_or_image_context(image_context, split_prior):
    m = glow(split_prior=split_prior)
    x = torch.rand(2, 1, 8, 8, dtype=D64) - 0.5
    c = torch.randn(2, 2, 8, 8, dtype=D64) if image_context else torch.randn(2, 2, dtype=D64)
    out = m(x, context=c)
    torch.testing.assert_close(out.per_scale.sum(1), out.log_prob)
    torch.testing.assert_close(m.inverse(out.latents, context=c), x)
    assert (m.log_prob(x, context=c) - m.log_prob(x, context=-c)).abs().max() > 1e-4
    s = m.sample(3, context=c[:1])
    assert s.shape == (3, 1, 8, 8) and torch.isfinite(s).all()


def test_realnvp_with_an_image_context():
    torch.manual_seed(0)
    m = perturb_(invflow.RealNVP(1, 4, levels=2, blocks=1, hidden=8, context_channels=2).double(), 0.05)
    x, c = torch.rand(2, 1, 4, 4, dtype=D64) - 0.5, torch.randn(2, 2, 4, 4, dtype=D64)
    out = m(x, context=c)
    torch.testing.assert_close(m.inverse(out.latents, context=c), x)
    assert (out.log_prob - m.log_prob(x, context=-c)).abs().max() > 1e-4


def test_sample_takes_a_context_of_batch_n_or_1():
    m = vector_flow()
    c = torch.randn(5, 3, dtype=D64)
    g = torch.Generator().manual_seed(1)
    one = m.sample(5, context=c[:1], generator=g)
    g = torch.Generator().manual_seed(1)
    many = m.sample(5, context=c[:1].expand(5, 3).clone(), generator=g)
    torch.testing.assert_close(one, many)
    assert m.sample(5, context=c).shape == (5, 4)
    with pytest.raises(ValueError, match="context batch size 5 must be 3 or 1"):
        m.sample(3, context=c)


def test_context_errors_at_the_model():
    m = vector_flow()
    x, c = torch.randn(4, 4, dtype=D64), torch.randn(4, 3, dtype=D64)
    cases = [
        (None, ValueError, r"VectorFlow is conditional \(context_dim=3\): pass context= of shape \[4, 3\]"),
        (c[:2], ValueError, "context batch size 2 must be 4"),
        (c[:, :2], ValueError, r"context must have shape \[4, 3\] \(context_dim=3\), got \[4, 2\]"),
        (c.view(4, 3, 1, 1), ValueError, "context must have shape"),
        (c.float(), TypeError, "context dtype torch.float32 differs from the model's torch.float64"),
        (torch.ones(4, 3, dtype=torch.long), TypeError, "context dtype torch.int64"),
        (c.tolist(), TypeError, "context must be a torch.Tensor"),
        (torch.where(c > 0, c, float("nan")), ValueError, "context contains NaN or Inf"),
        (c / 0.0, ValueError, "context contains NaN or Inf"),
    ]
    for bad, err, msg in cases:
        with pytest.raises(err, match=msg):
            m.log_prob(x, context=bad)
    with pytest.raises(ValueError, match="VectorFlow.sample: VectorFlow is conditional"):
        m.sample(2)
    with pytest.raises(ValueError, match="VectorFlow.inverse: VectorFlow is conditional"):
        m.inverse([x])
    plain = invflow.VectorFlow(4, blocks=1, hidden=4).double()
    with pytest.raises(ValueError, match=r"built without one \(context_dim=0\)"):
        plain.log_prob(x, context=c)
    g = invflow.Glow(1, 4, levels=1, steps=1, hidden=4).double()
    with pytest.raises(ValueError, match=r"built without one \(context_channels=0\)"):
        g.sample(2, context=c)
    cg = invflow.Glow(1, 4, levels=1, steps=1, hidden=4, context_channels=3).double()
    with pytest.raises(ValueError, match=r"\[2, 3\] or \[2, 3, 4, 4\]"):
        cg.log_prob(torch.zeros(2, 1, 4, 4, dtype=D64), context=torch.zeros(2, 3, 2, 2, dtype=D64))
    for bad in (-1, 1.5):
        with pytest.raises((ValueError, TypeError), match="context_dim"):
            invflow.VectorFlow(4, context_dim=bad)


def test_memory_free_conditional_gradients_equal_standard_autograd():
    torch.manual_seed(0)
    x, c0 = torch.randn(6, 4, dtype=D64), torch.randn(6, 3, dtype=D64)
    grads = []
    for free in (False, True):
        torch.manual_seed(0)
        m = invflow.VectorFlow(4, blocks=2, hidden=8, context_dim=3, memory_free=free).double()
        m.train()
        m(x, context=c0)  # ActNorm init
        perturb_(m, 0.1).train()
        c = c0.clone().requires_grad_(True)
        m.log_prob(x, context=c).sum().backward()
        grads.append([c.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("make", [vector_flow, glow], ids=["VectorFlow", "Glow"])
def test_save_and_load_keep_the_context(tmp_path, make):
    m = make()
    assert m.config().get("context_dim", m.config().get("context_channels")) in (2, 3)
    path = str(tmp_path / "m.safetensors")
    invflow.save(m, path)
    loaded = invflow.load(path).double()
    assert loaded.context_size == m.context_size and loaded.is_conditional
    shape = (2, *m.input_shape)
    x = torch.rand(*shape, dtype=D64) - 0.5
    c = torch.randn(2, m.context_size, dtype=D64)
    torch.testing.assert_close(loaded.log_prob(x, context=c), m.log_prob(x, context=c))
    # a config from before the context existed builds an unconditional model
    old = {k: v for k, v in m.config().items() if not k.startswith("context")}
    assert not type(m).from_config(old).is_conditional


# -- the class-conditional flow with a learned label embedding --------------------------
def class_flow(num_classes=3):
    torch.manual_seed(0)
    inner = invflow.VectorFlow(4, blocks=2, hidden=16, context_dim=5)
    flow = invflow.ClassEmbeddingFlow(inner, num_classes).double()
    x, y = torch.randn(30, 4, dtype=D64), torch.arange(30) % num_classes
    flow.train()
    flow(x, context=y)
    return perturb_(flow, 0.1)


def test_class_embedding_flow_conditional_and_marginal_log_probs():
    flow = class_flow()
    x = torch.randn(5, 4, dtype=D64)
    per_class = flow.class_log_probs(x)
    assert per_class.shape == (5, 3)
    for k in range(3):
        labels = torch.full((5,), k)
        torch.testing.assert_close(flow.log_prob(x, labels), per_class[:, k])
        emb = flow.embedding(labels)
        torch.testing.assert_close(flow.model.log_prob(x, context=emb), per_class[:, k])
    marginal = torch.logsumexp(per_class, 1) - math.log(3)
    out = flow(x)
    torch.testing.assert_close(out.log_prob, marginal)
    torch.testing.assert_close(out.per_scale.sum(1), marginal)
    assert (per_class[:, 0] - per_class[:, 1]).abs().max() > 1e-3  # the label matters


def test_class_embedding_flow_samples_and_inverts_per_class():
    flow = class_flow()
    assert flow.sample(4, context=2).shape == (4, 4)
    assert flow.sample(4, context=torch.tensor([0, 1, 2, 0])).shape == (4, 4)
    assert flow.sample(4).shape == (4, 4)  # labels drawn uniformly
    x, y = torch.randn(3, 4, dtype=D64), torch.tensor([2, 0, 1])
    torch.testing.assert_close(flow.inverse(flow(x, context=y).latents, context=y), x)
    s, lp = flow.sample_and_log_prob(4, context=1)
    torch.testing.assert_close(lp, flow.log_prob(s, torch.ones(4, dtype=torch.long)))


def test_class_embedding_flow_errors(tmp_path):
    flow = class_flow()
    x = torch.randn(3, 4, dtype=D64)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        flow.log_prob(x, torch.tensor([0, 1, 3]))
    with pytest.raises(TypeError, match="integer class labels"):
        flow.log_prob(x, torch.zeros(3, dtype=D64))
    with pytest.raises(ValueError, match=r"expected labels of shape \[3\]"):
        flow.log_prob(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pass the class labels"):
        flow.inverse([x])
    with pytest.raises(ValueError, match="must be conditional"):
        invflow.ClassEmbeddingFlow(invflow.VectorFlow(4, blocks=1, hidden=4), 3)
    with pytest.raises(TypeError, match="invflow model"):
        invflow.ClassEmbeddingFlow(torch.nn.Linear(2, 2), 3)
    with pytest.raises(ValueError, match="num_classes"):
        invflow.ClassEmbeddingFlow(invflow.VectorFlow(4, blocks=1, hidden=4, context_dim=2), 0)
    path = str(tmp_path / "c.safetensors")
    invflow.save(flow, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = invflow.load(path).double()
    y = torch.tensor([0, 2, 1])
    torch.testing.assert_close(loaded.log_prob(x, y), flow.log_prob(x, y))
