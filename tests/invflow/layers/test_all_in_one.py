"""AllInOneBlock (FrEIA's all-in-one block): brute-force log-dets, inverse(forward(x)) == x,
gradcheck / gradgradcheck, the clamped coupling and global affine formulas, permutations that
are orthogonal, context, config round trip and errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import brute_force_logdet, perturb_
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

import invflow

D, K = 5, 2
VARIANTS = {
    "hard": dict(),
    "soft": dict(permute_soft=True),
    "householder": dict(householder=2),
    "soft-householder-reverse": dict(permute_soft=True, householder=2, reverse_permutation=True),
    "sigmoid": dict(global_affine_type="sigmoid", global_affine_init=0.5),
    "exp": dict(global_affine_type="exp", global_affine_init=2.0),
}


def make(context=0, **kw):
    kw.setdefault("hidden", 8)
    block = invflow.AllInOneBlock(D, context_features=context, seed=3, **kw).double()
    return perturb_(block, 0.5)


@pytest.mark.parametrize("context", [0, K], ids=["plain", "context"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logdet_is_brute_force_and_inverse_is_exact(variant, context):
    block = make(context, **VARIANTS[variant])
    x = 2 * torch.randn(3, D, dtype=torch.float64)
    c = torch.randn(3, K, dtype=torch.float64) if context else None
    y, logdet = block(x, context=c)
    assert logdet.shape == (3,)
    for i in range(3):
        ci = None if c is None else c[i : i + 1]
        ref = brute_force_logdet(lambda v, ci=ci: block(v, context=ci), x[i : i + 1])
        torch.testing.assert_close(logdet[i : i + 1], ref, rtol=1e-10, atol=1e-10)
    x_back, inv_logdet = block.inverse(y, context=c)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(inv_logdet, -logdet, rtol=1e-10, atol=1e-10)


def test_the_formula_of_the_block():
    """y = W (Psi(g) [x1, x2 exp(clamp tanh(a_s)) + a_t] + b) with a = 0.1 net(x1), written out."""
    block = make(clamp=1.5)
    x = torch.randn(4, D, dtype=torch.float64)
    y, logdet = block(x)
    x1, x2 = x[:, :3], x[:, 3:]  # ceil(5 / 2) = 3 features condition the other 2
    a = 0.1 * block.net(x1)
    log_s = 1.5 * torch.tanh(a[:, :2])
    u = torch.cat([x1, x2 * torch.exp(log_s) + a[:, 2:]], dim=1)
    psi = 0.1 * 2 * torch.log1p(torch.exp(block.global_scale / 2))
    v = psi * u + block.global_offset
    torch.testing.assert_close(y, v[:, block.perm], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, log_s.sum(1) + psi.log().sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,init", [("softplus", 1.0), ("softplus", 0.3), ("sigmoid", 2.0), ("exp", 0.5)])
def test_global_scale_starts_at_its_init(kind, init):
    block = invflow.AllInOneBlock(D, hidden=4, global_affine_type=kind, global_affine_init=init).double()
    x = torch.randn(3, D, dtype=torch.float64)
    y, logdet = block(x)  # a fresh block: identity coupling, scale init, offset 0, a permutation
    # (g is stored in float32 before .double(): equal to float32 rounding)
    torch.testing.assert_close(y, init * x[:, block.perm], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        logdet, torch.full((3,), D * math.log(init), dtype=torch.float64), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("variant", ["soft", "householder"])
def test_permutation_matrix_is_orthogonal(variant):
    block = make(**VARIANTS[variant])
    w = block._matrix(torch.zeros(1, D, dtype=torch.float64))
    torch.testing.assert_close(w @ w.t(), torch.eye(D, dtype=torch.float64), rtol=0, atol=1e-12)


def test_householder_reflections_are_learned():
    block = make(householder=2)
    x = torch.randn(3, D, dtype=torch.float64)
    block(x)[0].square().sum().backward()
    assert block.householder_vectors.grad.abs().sum() > 0
    assert invflow.AllInOneBlock(D, hidden=4, seed=3).perm.tolist() == block.perm.tolist()  # seeded


def test_context_changes_the_output():
    block = make(context=K)
    x, c = torch.randn(4, D, dtype=torch.float64), torch.randn(4, K, dtype=torch.float64)
    y1, ld1 = block(x, context=c)
    y2, ld2 = block(x, context=c + 1.0)
    assert not torch.allclose(y1, y2)
    assert not torch.allclose(ld1, ld2)


class _Inverse(nn.Module):
    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, y, context=None):
        return self.flow.inverse(y, context=context)


@pytest.mark.parametrize("variant", ["hard", "soft-householder-reverse"])
def test_gradcheck_and_gradgradcheck(variant, backend):
    block = invflow.AllInOneBlock(4, hidden=2, layers=1, context_features=1, seed=1, **VARIANTS[variant])
    block = perturb_(block.double(), 0.5)
    names = [n for n, _ in block.named_parameters()]
    # every parameter of the block's own maps; of the MLP only its output layer (checked for speed)
    checked = ("global_scale", "global_offset", "householder_vectors", "net.2.weight")
    params = tuple(p.detach().clone().requires_grad_(n in checked) for n, p in block.named_parameters())
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)
    for target, prefix in ((block, ""), (_Inverse(block), "flow.")):

        def fn(x, c, *ps, target=target, prefix=prefix):
            return functional_call(target, {prefix + n: p for n, p in zip(names, ps)}, (x,), {"context": c})

        assert gradcheck(fn, (x, c, *params))
        assert gradgradcheck(fn, (x, c, *params))


def test_config_round_trip_and_sequential():
    block = make(context=K, permute_soft=True, householder=1)
    again = invflow.AllInOneBlock.from_config(block.config()).double()
    again.load_state_dict(block.state_dict())
    x, c = torch.randn(3, D, dtype=torch.float64), torch.randn(3, K, dtype=torch.float64)
    torch.testing.assert_close(again(x, context=c), block(x, context=c), rtol=0, atol=0)
    assert "rotation.weight" not in block.state_dict()  # rebuilt from the seed
    flow = invflow.Sequential(block, invflow.AllInOneBlock(D, hidden=4, context_features=K).double())
    y, logdet = flow(x, context=c)
    torch.testing.assert_close(flow.inverse(y, context=c)[0], x, rtol=1e-10, atol=1e-10)
    assert invflow.AllInOneBlock(D).seed != invflow.AllInOneBlock(D).seed  # fresh permutations per block
    with pytest.raises(TypeError, match="custom net"):
        invflow.AllInOneBlock(D, net=lambda i, o: nn.Linear(i, o)).config()


def test_custom_net_factory_gets_freia_sizes():
    sizes = []

    def factory(i, o):
        sizes.append((i, o))
        return nn.Linear(i, o)

    block = invflow.AllInOneBlock(7, net=factory, context_features=3)
    assert sizes == [(4 + 3, 2 * 3)]
    y, _ = block(torch.randn(2, 7), context=torch.randn(2, 3))
    assert y.shape == (2, 7)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(features=1), ValueError, "features"),
        (dict(features=4, clamp=0.0), ValueError, "clamp"),
        (dict(features=4, hidden=0), ValueError, "hidden"),
        (dict(features=4, global_affine_type="tanh"), ValueError, "global_affine_type"),
        (dict(features=4, global_affine_init=0.0), ValueError, "global_affine_init"),
        (
            dict(features=4, global_affine_type="sigmoid", global_affine_init=10.0),
            ValueError,
            "global_affine_init",
        ),
        (dict(features=4, householder=-1), ValueError, "householder"),
        (dict(features=4, permute_soft=1), TypeError, "permute_soft"),
        (dict(features=4, seed=-1), ValueError, "seed"),
        (dict(features=4, net=lambda i, o: "net"), TypeError, "nn.Module"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        invflow.AllInOneBlock(**kwargs)


def test_save_and_load_a_stack_of_both_layers(tmp_path):
    flow = invflow.Sequential(
        invflow.MaskedAutoregressive(4, hidden=8, transform="spline", context_features=2, order="reverse"),
        invflow.AllInOneBlock(4, hidden=8, context_features=2, permute_soft=True, householder=1),
        invflow.AllInOneBlock(4, hidden=8, context_features=2),
    )
    perturb_(flow, 0.3)
    invflow.save(flow, tmp_path / "flow.safetensors")
    back = invflow.load(tmp_path / "flow.safetensors")
    x, c = torch.randn(3, 4), torch.randn(3, 2)
    torch.testing.assert_close(back(x, context=c), flow(x, context=c), rtol=0, atol=0)
    torch.testing.assert_close(back.inverse(x, context=c), flow.inverse(x, context=c), rtol=0, atol=0)
