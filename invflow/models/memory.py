"""Memory-free backpropagation through invertible blocks (Gomez et al. 2017, "The
Reversible Residual Network", backpropagation without storing activations).

``run_memory_free(blocks, x)`` runs a sequence of ``invflow.Flow`` blocks without storing
their activations: autograd keeps only the chain's output.  During backward each block's
input is recomputed from its output with ``block.inverse`` (no graph), the block is re-run
on it with a graph, and the gradient is propagated one block at a time, so activation
memory no longer grows with depth.  Gradients equal standard autograd's up to the
round-off of the inversions.

Double backward is not supported through this path: the recomputation builds no graph of
the backward itself.  Asking for it (``create_graph=True``) raises RuntimeError rather than
returning wrong higher-order gradients; models fall back to standard autograd whenever
their input requires grad (the approximate-mass penalty differentiates d log p / dx).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._backend import backend, backend_for
from ..layers.base import Flow


def _call(block, x, context, inverse: bool = False):
    f = block.inverse if inverse else block
    return f(x) if context is None else f(x, context=context)


class _MemoryFreeChain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, blocks, backend_name, x, context, *params):
        with torch.no_grad():
            logdet = x.new_zeros(x.shape[0])
            y = x
            for block in blocks:
                y, ld = _call(block, y, context)
                logdet = logdet + ld
        ctx.blocks = blocks
        ctx.backend_name = backend_name
        ctx.params = params
        ctx.has_context = context is not None
        ctx.save_for_backward(y, *([context] if context is not None else []))
        return y, logdet

    @staticmethod
    def backward(ctx, grad_y, grad_logdet):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "invflow: memory-free backprop does not support double backward (create_graph=True); "
                "build the model with memory_free=False or give it an input that requires grad"
            )
        y, *saved = ctx.saved_tensors
        context = saved[0] if ctx.has_context else None
        context_grad = None
        grads = {id(p): None for p in ctx.params}
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        if grad_logdet is None:
            grad_logdet = y.new_zeros(y.shape[0])
        with backend(ctx.backend_name):
            for block in reversed(ctx.blocks):
                with torch.no_grad():
                    x_in, _ = _call(block, y, context, inverse=True)
                params = [p for p in block.parameters() if p.requires_grad]
                ctx_in = [] if context is None else [context.detach().requires_grad_(True)]
                with torch.enable_grad():
                    x_in = x_in.detach().requires_grad_(True)
                    y_re, ld_re = _call(block, x_in, ctx_in[0] if ctx_in else None)
                    found = torch.autograd.grad(
                        (y_re, ld_re), [x_in, *ctx_in, *params], (grad_y, grad_logdet), allow_unused=True
                    )
                grad_y = found[0]
                if ctx_in and found[1] is not None:
                    context_grad = found[1] if context_grad is None else context_grad + found[1]
                found = found[:1] + found[1 + len(ctx_in) :]
                for p, g in zip(params, found[1:]):
                    if g is not None and id(p) in grads:
                        grads[id(p)] = g if grads[id(p)] is None else grads[id(p)] + g
                y = x_in.detach()
        return (None, None, grad_y, context_grad, *[grads[id(p)] for p in ctx.params])


def memory_free_applies(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether a model built with memory_free=True runs memory-free on its input x: in
    training mode, while recording gradients, and only if x itself does not require grad
    (a gradient with respect to x, e.g. for the approximate-mass penalty, may be
    differentiated again, so such inputs take standard autograd)."""
    return (
        bool(getattr(model, "memory_free", False))
        and model.training
        and torch.is_grad_enabled()
        and not x.requires_grad
    )


def run_memory_free(
    blocks: Sequence[Flow], x: torch.Tensor, context: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs ``blocks`` on x (given ``context``, passed to every block) like
    ``invflow.Sequential`` but stores no activations for backward (ActNorm's data-dependent
    initialisation runs inside the no-grad forward as usual); the context gets its gradient
    too (a learned embedding)."""
    blocks = list(blocks)
    params = [p for b in blocks for p in b.parameters() if p.requires_grad]
    return _MemoryFreeChain.apply(blocks, backend_for(x), x, context, *params)
