"""One scale of a multi-scale Glow (squeeze, then K steps of actnorm -> 1x1 conv -> channel
affine coupling) run as a whole in channels-last layout, for the fused backend.

Same function and log-determinant as running the layers one by one (Glow, Kingma & Dhariwal
2018, Sec. 3 / Table 1), computed with fewer passes over memory:

* the squeeze writes the channels-last layout directly: rows of C channels per pixel, a
  [B * H * W, C] matrix X;
* actnorm is folded into the 1x1 convolution: W (x + b) * exp(s) = W' x + W' b with
  W' = W diag(exp(s)), one matrix product per half (``torch.addmm``) with the log-det
  N * (sum s + log|det W|) summed once per step;
* the conditioning half comes out of that product as a dense channels-last tensor, which is
  the layout the st-net's convolutions run in (``invflow.nets.CPU_CHANNELS_LAST``), and the
  st-net's output stays channels-last: no layout conversion around the st-net;
* the channels-last coupling op (``invflow.ops.coupling_cl``) reads the transformed half
  [B, H * W, C_t] and the st-net's output [B, H * W, 2 C_t] = [raw, t] as they are;
* the st-net ``GlowNet`` runs with its ActNorm2d layers and ZeroConv2d scale folded into its
  convolutions (see ``invflow.nets.GlowNet``).

Every op is an ordinary differentiable torch op or a registered fused op with double
backward, so gradients of any order are those of the layer-by-layer computation.
``fused_glow_scale`` returns None where this path does not apply (an actnorm awaiting its
data-dependent initialisation, layers other than Glow's), and the caller runs the layers.
Importing this module registers ``sequential_fast_path`` with ``invflow.Sequential`` (a Glow
step, or a run of them, outside a model takes this path too).
"""

from __future__ import annotations

import torch

from .. import ops
from .._backend import backend_for
from ..layers import ActNorm, AffineCoupling, InvConv1x1, Sequential
from ..nets import _run_folded, fold_plans
from ..ops.reference import per_sample


def _step_parts(step):
    if type(step) is not Sequential or len(step.flows) != 3:
        return None
    an, conv, cp = step.flows
    if type(an) is not ActNorm or type(conv) is not InvConv1x1 or type(cp) is not AffineCoupling:
        return None
    if cp.split is None or cp.context_channels:  # a conditional coupling takes the layer path
        return None
    return an, conv, cp


def _hooked(module: torch.nn.Module) -> bool:
    """Whether forward hooks watch ``module`` or anything inside it (the fused path would
    silently skip them: it does not call the layers' forward)."""
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def applies(flows, x: torch.Tensor, squeeze: bool = True) -> bool:
    """Whether the channels-last path can run these steps on x ([B, C, H, W]; before the squeeze
    when ``squeeze``): Glow steps (ActNorm, InvConv1x1, channel AffineCoupling), even sizes,
    initialised actnorms, and no forward hooks on them (hooks get the layer-by-layer path)."""
    if x.dim() != 4 or (squeeze and (x.shape[2] % 2 or x.shape[3] % 2)):
        return False
    for step in flows:
        if _hooked(step):
            return False
        parts = _step_parts(step)
        if parts is None:
            return False
        an = parts[0]
        if an.training and an.needs_init():
            return False
    return True


def step_list(seq) -> list | None:
    """The Glow steps of an ``invflow.Sequential`` that is one Glow step or a run of them
    (else None): what ``fused_glow_steps`` can run."""
    if _step_parts(seq) is not None:
        return [seq]
    steps = list(seq.flows)
    if steps and all(_step_parts(st) is not None for st in steps):
        return steps
    return None


def sequential_fast_path(seq: Sequential, x):
    """The fast path of ``invflow.Sequential`` (registered below): a Glow step (ActNorm ->
    InvConv1x1 -> channel AffineCoupling), or a run of them, on the fused backend runs as
    ``fused_glow_steps`` (actnorm folded into the 1x1 conv, the st-net and the coupling on
    channels-last rows); returns (y, logdet [B]), or None where it does not apply (other
    layers, other backends, autocast / half precision, wrong inputs: the layers then run, and
    raise their errors)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.dtype not in (torch.float32, torch.float64):
        return None
    if backend_for(x) != "fused" or torch.is_autocast_enabled(x.device.type):
        return None
    steps = step_list(seq)
    return None if steps is None else fused_glow_steps(steps, x)


Sequential.register_fast_path(sequential_fast_path)


def _net_channels_last(net, plan, cond: torch.Tensor) -> torch.Tensor:
    """The st-net on a channels-last [B, C, H, W] tensor; the output in any layout."""
    if plan is not None:
        return _run_folded(plan, cond)
    return net(cond)


def _folded_mix(steps, n_positions: int):
    """Actnorm folded into the 1x1 convolution of every step, computed for all steps at once:
    per step the matrix W' = W diag(exp(s)) with its rows in the order (conditioning half,
    transformed half) and the offset W' b; and the sum over the steps of their log-dets
    N * (sum s + log|det W|)."""
    ans = [st.flows[0] for st in steps]
    convs = [st.flows[1] for st in steps]
    stack = torch.stack
    if all(c.lu for c in convs):
        c0 = convs[0]
        lower = stack([c.lower for c in convs]) * c0.lower_mask + c0.eye
        log_s = stack([c.log_s for c in convs])
        diag = torch.diag_embed(stack([c.sign_s for c in convs]) * torch.exp(log_s))
        upper = stack([c.upper for c in convs]) * c0.lower_mask.t() + diag
        w = stack([c.perm for c in convs]) @ lower @ upper
        ld_w = log_s.sum()
    else:
        pairs = [c.weight_and_logdet() for c in convs]
        w = stack([p[0] for p in pairs])
        ld_w = stack([p[1] for p in pairs]).sum()
    a_s = stack([a.log_scale for a in ans])
    wp = w * torch.exp(a_s).unsqueeze(1)  # W diag(exp(s))
    cvec = (wp @ stack([a.bias for a in ans]).unsqueeze(-1)).squeeze(-1)
    splits = [st.flows[2].split for st in steps]
    logdet = n_positions * (a_s.sum() + ld_w)
    if all(cond.start == 0 for cond, _ in splits):
        return wp.unbind(0), cvec.unbind(0), logdet
    # rows in (conditioning, transformed) order by slicing: an index tensor built here would be
    # a host-to-device copy per forward (a sync, and not allowed in CUDA graph capture)
    wps = [torch.cat([wp[k, cond], wp[k, trans]]) for k, (cond, trans) in enumerate(splits)]
    cvecs = [torch.cat([cvec[k, cond], cvec[k, trans]]) for k, (cond, trans) in enumerate(splits)]
    return wps, cvecs, logdet


def fused_glow_scale(flows, x: torch.Tensor):
    """Squeeze x [B, C, H, W] and run the Glow steps ``flows``; returns (y, logdet [B]) with
    y [B, 4C, H/2, W/2] (channels-last strides), or None when the path does not apply."""
    if not applies(flows, x):
        return None
    b, c, hh, ww = x.shape
    h2, w2 = hh // 2, ww // 2
    # squeeze (output channel c * 4 + 2 i + j, as invflow.Squeeze) straight into rows [B*N, C]
    # (two copies with long inner runs are faster than one six-dimensional permutation)
    X = x.reshape(b, c, h2, 2, w2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h2, w2)
    return _run_rows(flows, X.permute(0, 2, 3, 1).reshape(b * h2 * w2, 4 * c), b, h2, w2)


def fused_glow_steps(flows, x: torch.Tensor):
    """Run the Glow steps ``flows`` on x [B, C, H, W] (no squeeze); returns (y, logdet [B])
    with y in x's memory format, or None when the path does not apply (the caller then runs
    the layers, which also raise the errors for wrong inputs)."""
    if not applies(flows, x, squeeze=False):
        return None
    an = _step_parts(flows[0])[0]
    if x.shape[1] != an.num_channels or x.dtype != an.bias.dtype or x.device != an.bias.device:
        return None
    b, c, hh, ww = x.shape
    y, logdet = _run_rows(flows, x.permute(0, 2, 3, 1).reshape(b * hh * ww, c), b, hh, ww)
    return (y.contiguous() if x.is_contiguous() else y), logdet


def _run_rows(flows, X: torch.Tensor, b: int, h2: int, w2: int):
    """The steps on channels-last rows X [B*N, C] (N = h2 * w2 positions per image); returns
    (y [B, C, h2, w2] with channels-last strides, logdet [B])."""
    C, N = X.shape[1], h2 * w2
    wps, cvecs, logdet = _folded_mix(flows, N)
    plans = fold_plans([step.flows[2].net for step in flows]) or [None] * len(flows)
    logdet = per_sample(logdet, b)
    for step, wp, cvec, plan in zip(flows, wps, cvecs, plans):
        cp = step.flows[2]
        cond_idx, trans_idx = cp.split
        cc, ct = cond_idx.stop - cond_idx.start, trans_idx.stop - trans_idx.start
        # one product for both halves (a product with few output columns runs far slower per entry)
        y_cond, y_trans = torch.addmm(cvec, X, wp.t()).split([cc, ct], dim=1)
        y_cond = y_cond.contiguous()
        cond4 = y_cond.view(b, h2, w2, cc).permute(0, 3, 1, 2)  # channels-last [B, Cc, H, W]
        h = _net_channels_last(cp.net, plan, cond4)
        if h.shape != (b, 2 * ct, h2, w2):
            raise ValueError(
                f"AffineCoupling: the st-net must return [B, {2 * ct}, ...] matching its input "
                f"{list(cond4.shape)}, got {list(h.shape)}"
            )
        h_rows = h.permute(0, 2, 3, 1).reshape(b, N, 2 * ct)  # a view when h is channels-last
        out, ld_c = ops.coupling_cl(y_trans.reshape(b, N, ct), h_rows, cp.scale, cp.clamp)
        logdet = logdet + ld_c
        parts = (y_cond, out.view(b * N, ct)) if cond_idx.start == 0 else (out.view(b * N, ct), y_cond)
        X = torch.cat(parts, dim=1)
    return X.view(b, h2, w2, C).permute(0, 3, 1, 2), logdet
