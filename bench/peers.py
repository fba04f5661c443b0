"""The peers compare.py measures invflow against: FrEIA 0.2 and normflows 1.7 versions of a
Glow step and of the multi-scale Glow (Kingma and Dhariwal 2018), carrying invflow's weights
so that every implementation computes the same log p.

Both packages are optional (``pip install -e .[bench]``): :func:`missing` gives the one line a
row prints when one is not installed; the builders import them only when called.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import version

import torch
from torch import nn
from torch.nn import functional as F

import invflow
from invflow.data import standard_normal_log_prob

FREIA, FREIA_AIO, NORMFLOWS = "FrEIA", "FrEIA-AllInOne", "normflows"
MODULE = {FREIA: "FrEIA", FREIA_AIO: "FrEIA", NORMFLOWS: "normflows"}  # row -> package
PIP = {
    FREIA: "pip install FrEIA, or pip install -e .[bench]",
    FREIA_AIO: "pip install FrEIA, or pip install -e .[bench]",
    NORMFLOWS: "pip install normflows, or pip install -e .[bench]",
}


def versions() -> dict:
    """Package -> installed version, or None when it cannot be imported."""
    out = {}
    for name in ("FrEIA", "normflows"):
        try:
            import_module(name)
            out[name] = version(name)
        except Exception:  # noqa: BLE001 - any failure means "not usable"
            out[name] = None
    return out


def missing(row: str) -> str | None:
    """ "not installed (how to install)" when the package of peer row ``row`` is missing, else None."""
    try:
        import_module(MODULE[row])
    except ImportError:
        return f"not installed ({PIP[row]})"
    return None


# ------------------------------------------------------------------- weight transfer
def glow_log_scale(raw: torch.Tensor) -> torch.Tensor:
    """FrEIA clamp_activation giving Glow's scale: clamp(=1) * f(raw) = log sigmoid(raw + 2)."""
    return F.logsigmoid(raw + 2.0)


def _copy_invconv_to_normflows(conv: invflow.InvConv1x1, nf_conv) -> None:
    with torch.no_grad():
        nf_conv.P.copy_(conv.perm)
        nf_conv.L.copy_(conv.lower)
        nf_conv.U.copy_(conv.upper)
        nf_conv.log_S.copy_(conv.log_s)
        nf_conv.sign_S.copy_(conv.sign_s)


def _copy_actnorm_to_normflows_inverse(an: invflow.ActNorm, nf_an) -> None:
    """normflows' ActNorm runs backwards in the data direction: x -> (x - t) * exp(-s)."""
    with torch.no_grad():
        nf_an.s.copy_(-an.log_scale.view_as(nf_an.s))
        nf_an.t.copy_(-an.bias.view_as(nf_an.t))
        nf_an.data_dep_init_done.fill_(1.0)


def _copy_glownet_to_normflows(net: nn.Module, param_map) -> None:
    """invflow GlowNet -> normflows ConvNet2d: the three convs (the last is zero-initialised in
    both; invflow's ZeroConv2d ``logs`` has no normflows counterpart and is 0 = scale 1) and
    the hidden ActNorm2d layers (net_actnorm=True)."""
    from invflow.nets import ActNorm2d

    src_convs = [m for m in net if isinstance(m, nn.Conv2d)]
    dst_convs = [m for m in param_map.net if isinstance(m, nn.Conv2d)]
    src_an = [m for m in net if isinstance(m, ActNorm2d)]
    dst_an = [m for m in param_map.net if type(m).__name__ == "ActNorm"]
    assert len(src_convs) == len(dst_convs) == 3 and len(src_an) == len(dst_an)
    with torch.no_grad():
        for s, d in zip(src_convs, dst_convs):
            d.weight.copy_(s.weight)
            if d.bias is not None:
                d.bias.copy_(s.bias if s.bias is not None else torch.zeros_like(d.bias))
        for s, d in zip(src_an, dst_an):  # ActNorm2d: (x + b) e^logs = x e^s + t
            d.actNorm.s.copy_(s.logs.view_as(d.actNorm.s))
            d.actNorm.t.copy_((s.bias * torch.exp(s.logs)).view_as(d.actNorm.t))
            d.actNorm.data_dep_init_done.fill_(1.0)


def _freia_actnorm(mod, bias: torch.Tensor, log_scale: torch.Tensor) -> None:
    """FrEIA ActNorm computes x e^scale + bias; invflow's (x + b) e^log_s."""
    with torch.no_grad():
        mod.scale.copy_(log_scale.view_as(mod.scale))
        mod.bias.copy_((bias * torch.exp(log_scale)).view_as(mod.bias))
    mod.init_on_next_batch = False


def _nf_glow_block(channels: int, hidden: int, parity: int, net_actnorm: bool):
    import normflows as nf

    return nf.flows.GlowBlock(
        channels,
        hidden,
        scale=True,
        scale_map="sigmoid",
        split_mode="channel" if parity == 0 else "channel_inv",
        leaky=0.0,
        init_zeros=True,
        use_lu=True,
        net_actnorm=net_actnorm,
    )


def _nf_copy_step(step: invflow.Sequential, block) -> None:
    an, conv, cp = step.flows
    coupling_block, nf_conv, nf_an = block.flows
    _copy_actnorm_to_normflows_inverse(an, nf_an)
    _copy_invconv_to_normflows(conv, nf_conv)
    _copy_glownet_to_normflows(cp.net, coupling_block.flows[1].param_map)


def _parity(cp: invflow.AffineCoupling) -> int:
    return 0 if cp.split[0].start == 0 else 1


def _freia_log_prob(inn) -> Callable:
    def log_prob(x):
        z, jac = inn(x)
        return standard_normal_log_prob(z) + jac

    return log_prob


# ----------------------------------------------------------------------- a Glow step
def freia_step(step: invflow.Sequential, channels: int, size: int, device: str):
    """(FrEIA SequenceINN, log_prob) equal to the Glow step ``step`` (ActNorm, InvConv1x1,
    AffineCoupling) on [B, channels, size, size]: ActNorm -> Fixed1x1Conv (the 1x1 weight
    frozen) -> AffineCouplingOneSided with Glow's sigmoid scale via clamp_activation."""
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    an, conv, cp = step.flows
    inn = Ff.SequenceINN(channels, size, size)
    inn.append(Fm.ActNorm)
    w = conv.weight_and_logdet()[0].detach()
    inn.append(Fm.Fixed1x1Conv, M=w.t().cpu().clone())  # conv2d with M^T: y = W x
    net = copy.deepcopy(cp.net)
    inn.append(
        Fm.AffineCouplingOneSided,
        subnet_constructor=lambda cin, cout: net,
        clamp=1.0,
        clamp_activation=glow_log_scale,
        split_len=cp.split[0].stop,
    )
    inn = inn.to(device).eval()
    _freia_actnorm(inn.module_list[0], an.bias, an.log_scale)
    return inn, _freia_log_prob(inn)


def freia_allinone_step(channels: int, size: int, hidden: int, device: str):
    """(FrEIA SequenceINN, log_prob) of FrEIA's idiomatic AllInOneBlock with a GlowNet st-net of
    width ``hidden``: its own maths (tanh clamp, softplus global affine, hard permutation) and
    its own random weights."""
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    inn = Ff.SequenceINN(channels, size, size)
    inn.append(
        Fm.AllInOneBlock,
        affine_clamping=2.0,
        permute_soft=False,
        subnet_constructor=lambda cin, cout: invflow.nets.GlowNet(cin, cout, hidden),
    )
    inn = inn.to(device).eval()
    return inn, _freia_log_prob(inn)


def normflows_step(step: invflow.Sequential, channels: int, hidden: int, device: str):
    """(normflows GlowBlock, log_prob) equal to the Glow step ``step`` (normflows shifts before
    it scales and has no output scale in the st-net's last conv; the weights are converted)."""
    block = _nf_glow_block(channels, hidden, 0, net_actnorm=False).to(device)
    _nf_copy_step(step, block)
    block.eval()

    def log_prob(x):
        z, logdet = block.inverse(x)  # normflows flows run data -> latent in .inverse
        return standard_normal_log_prob(z) + logdet

    return block, log_prob


# ------------------------------------------------------------------ the whole model
def freia_glow(model: invflow.Glow, device: str):
    """FrEIA GraphINN equal to ``model`` (same weights).  FrEIA's one-sided coupling always
    conditions on the first half; a parity-1 invflow step (conditions on the second half)
    is emulated exactly by folding the half swap S into the fixed 1x1 matrix (S W) and the
    next layer's parameters, so no extra op runs."""
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    c, s = model.input_shape[0], model.input_shape[1]
    nodes = [Ff.InputNode(c, s, s, name="x")]
    node = nodes[0]
    outs, pending = [], []
    for j, scale in enumerate(model.scales):
        node = Ff.Node(node, Fm.IRevNetDownsampling, {})  # same channel order as invflow.Squeeze
        nodes.append(node)
        c *= 4
        assert c % 2 == 0
        idx = torch.cat([torch.arange(c // 2, c), torch.arange(0, c // 2)])
        swap = torch.eye(c)[idx]  # swap @ v = [v2, v1]
        swapped = False
        for step in scale.flows:
            an, conv, cp = step.flows
            bias, log_scale = an.bias.detach().cpu(), an.log_scale.detach().cpu()
            if swapped:
                bias, log_scale = bias[idx], log_scale[idx]
            w = conv.weight_and_logdet()[0].detach().cpu()
            parity = _parity(cp)
            m = (swap if parity else torch.eye(c)) @ w @ (swap if swapped else torch.eye(c))
            an_node = Ff.Node(node, Fm.ActNorm, {})
            conv_node = Ff.Node(an_node, Fm.Fixed1x1Conv, {"M": m.t().contiguous()})
            net = copy.deepcopy(cp.net)
            node = Ff.Node(
                conv_node,
                Fm.AffineCouplingOneSided,
                {
                    "subnet_constructor": (lambda n: lambda cin, cout: n)(net),
                    "clamp": 1.0,
                    "clamp_activation": glow_log_scale,
                    "split_len": c // 2,
                },
            )
            nodes += [an_node, conv_node, node]
            pending.append((an_node, bias, log_scale))
            swapped = parity == 1
        if j < len(model.scales) - 1:
            split = Ff.Node(node, Fm.Split, {"n_sections": 2, "dim": 0})
            nodes.append(split)
            latent, keep = (0, 1) if swapped else (1, 0)
            outs.append(Ff.OutputNode((split, latent)))
            node = (split, keep)
            c //= 2
        else:
            outs.append(Ff.OutputNode(node))
    inn = Ff.GraphINN(nodes + outs, force_tuple_output=True)
    for an_node, bias, log_scale in pending:
        _freia_actnorm(an_node.module, bias, log_scale)
    inn = inn.to(device)

    def log_prob(x):
        zs, jac = inn(x)
        return sum(standard_normal_log_prob(z) for z in zs) + jac

    return inn, log_prob


def normflows_glow(model: invflow.Glow, device: str):
    """normflows MultiscaleFlow equal to ``model`` (same weights): per level a list
    [GlowBlock_{K-1}, ..., GlowBlock_0, Squeeze] (normflows lists flows in the sampling
    direction), channel Merge between levels, fixed standard-normal DiagGaussian priors."""
    import normflows as nf

    c_in, s = model.input_shape[0], model.input_shape[1]
    levels = len(model.scales)
    q0, flows, merges = [], [], []
    for i in range(levels):  # normflows level 0 is the coarsest
        j = levels - 1 - i
        c = c_in * 2 ** (j + 2)
        blocks = []
        for step in model.scales[j].flows:
            cp = step.flows[2]
            block = _nf_glow_block(c, model.config()["hidden"], _parity(cp), net_actnorm=True)
            _nf_copy_step(step, block)
            blocks.append(block)
        flows.append(list(reversed(blocks)) + [nf.flows.Squeeze()])
        side = s // 2 ** (j + 1)
        shape = (c, side, side) if j == levels - 1 else (c // 2, side, side)
        q0.append(nf.distributions.DiagGaussian(shape, trainable=False))
        if i > 0:
            merges.append(nf.flows.Merge())
    nfm = nf.MultiscaleFlow(q0, flows, merges, class_cond=False).to(device)
    return nfm, lambda x: nfm.log_prob(x, None)
