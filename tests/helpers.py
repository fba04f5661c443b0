"""Helpers shared by the tests (importable as ``helpers``: tests/ is on sys.path)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


def perturb_(module: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Moves every parameter off its initial value (zero-initialised st-net outputs would
    make couplings trivial) and switches to eval mode (no data-dependent init).  The random
    weights stand in for trained ones, so ActNorm layers are marked initialised (an untrained
    model warns when evaluated)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn_like(p))
        for m in module.modules():
            if isinstance(getattr(m, "initialized", None), torch.Tensor):
                m.initialized.fill_(True)
    return module.eval()


class _Inverse(nn.Module):
    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, y):
        return self.flow.inverse(y)


def functional(module: torch.nn.Module, inverse: bool = False):
    """(fn, params): fn(x, *params) runs ``module`` (or its inverse) with the given parameter
    tensors, for gradcheck / gradgradcheck with respect to inputs and parameters together."""
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in module.named_parameters())
    target, prefix = (_Inverse(module), "flow.") if inverse else (module, "")

    def fn(x, *ps):
        return functional_call(target, {prefix + n: p for n, p in zip(names, ps)}, (x,))

    return fn, params


def brute_force_logdet(f, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of ``f`` (returning (y, ...)) at each sample of x, from the full Jacobian."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: f(v.view_as(xi))[0].flatten(), xi.flatten())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)
