"""st-networks: the conditioners that map the conditioning part of a coupling's input to
the parameters h = [raw scale, shift] of the transformed part (2 x its channels).

Every network's last layer starts at zero, so a fresh coupling is the identity up to the
constant initial scale (sigmoid(2) for Glow's scale function; Glow Sec. 3.3).

    GlowNet(in, out, hidden=512, actnorm=False)   Glow (Kingma & Dhariwal 2018, Sec. 3.3)
    ResNet(in, out, hidden=64, blocks=8)          RealNVP (Dinh et al. 2017; Kirichenko et al. 2020 App. C)
    Bottleneck(in, out, image_size, ...)          Kirichenko et al. 2020 Sec. 7, "st-networks with bottleneck"
    MLP(in, out, hidden=512, layers=2)            vectors [B, D]

Conditional nets: built with ``context_channels=K`` (``context_features=K`` for the MLP) they
are called ``net(h, context=c)`` and see ``[h, c]`` concatenated along dim 1
(``invflow.conditioning.concat_context``: a vector context [B, K] broadcast over space, an
image context [B, K, H', W'] average-pooled to h's size; Winkler et al. 2019; CFLOW-AD,
Gudovskiy et al. 2022).  Without a context size they are called ``net(h)`` and refuse one.

Helpers: ``zero_init``, ``ActNorm2d`` (activation normalisation inside a net, not a flow),
``ZeroConv2d`` (Glow's zero-initialised, learned-scale output conv), and the data-dependent
initialisation ``data_init`` / ``DataInitFlag`` (Glow Sec. 3.1) that ``invflow.ActNorm``
shares.  No network uses BatchNorm: an st-net's output must not depend on the other samples of a batch.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from . import ops
from ._backend import backend_for
from .conditioning import check_context, concat_context
from .validation import check_limits, check_number

#: A channel whose standard deviation on the initialisation batch is at most
#: ``CONSTANT_STD * (1 + |mean|)`` counts as constant (a dead unit, a constant image channel,
#: rounding noise of one repeated value): it is centred but keeps log_scale = 0 (scale 1),
#: instead of the -log(eps) = 13.8 (scale 1e6) that dividing by its zero spread would give.
CONSTANT_STD = 1e-5

#: The smallest standard deviation a data-dependent initialisation divides by: a channel whose
#: spread on the initialisation batch is below it (but above the constant tolerance) gets the
#: scale 1 / MIN_INIT_STD = 1000 (log_scale -log(1e-3 + eps) = 6.9), not 1 / std (4.4e4 for
#: std 2.3e-5, which turns a fresh input's deviation of 0.01 into 440).  1e-3 lies just below
#: the spread of pure dequantisation noise on a constant 8-bit pixel (1 / (256 sqrt 12) =
#: 1.13e-3), so every channel of preprocessed image data, and every st-net activation of a
#: normal spread, is normalised exactly; only near-constant channels are bounded.  Learning
#: moves the scale from there.  Standardise vector data of a tinier scale before a flow.
MIN_INIT_STD = 1e-3


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sums ``t`` over the processes of torch.distributed when it is initialised (no-op otherwise)."""
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def data_init(x: torch.Tensor, eps: float, where: str = "ActNorm") -> tuple[torch.Tensor, torch.Tensor]:
    """Glow's data-dependent initialisation (Kingma & Dhariwal 2018, Sec. 3.1) from a batch
    [B, C, ...], shared by ``ActNorm2d`` and the flow layer ``invflow.ActNorm``:
    (bias, log_scale) = (-mean, -log(std + eps)) per channel, so that
    (x + bias) * exp(log_scale) has zero mean and unit variance per channel.

    * The statistics are computed in float64 (whatever x's dtype) by the two-pass algorithm,
      and returned in x's dtype.
    * When ``torch.distributed`` is initialised, the per-channel sums (and counts) are summed
      over all processes, so every replica gets the statistics of the global batch and the
      same parameters: every process must run the initialising forward (as DDP requires).
    * Constant channels (std <= CONSTANT_STD * (1 + |mean|)) get log_scale = 0.
    * Near-constant channels are bounded: the std divided by is at least MIN_INIT_STD (1e-3),
      so log_scale <= -log(MIN_INIT_STD + eps) = 6.9 (scale <= 1000).
    * Raises ValueError when the (global) batch has fewer than 2 values per channel (B = 1
      for [B, C], or B = 1 with a 1 x 1 spatial size): no variance can be estimated, as
      BatchNorm refuses such a batch in training.
    """
    dims = [0] + list(range(2, x.dim()))
    xd = x.detach().to(torch.float64)
    count = xd.new_tensor([float(x.numel() // max(1, x.shape[1]))])
    total = _all_reduce(torch.cat([xd.sum(dim=dims), count]))
    n = float(total[-1])
    if n < 2:
        raise ValueError(
            f"{where}: data-dependent initialisation needs more than 1 value per channel to estimate a variance, "
            f"got input of shape {list(x.shape)}; initialise on a batch of >= 2 samples (e.g. "
            f"invflow.train.Trainer(init_batch=...)), or load trained weights before training"
        )
    mean = total[:-1] / n
    centred = xd - mean.view((1, -1) + (1,) * (x.dim() - 2))
    var = _all_reduce(centred.square().sum(dim=dims)) / n
    std = var.sqrt()
    log_scale = -torch.log(std.clamp(min=MIN_INIT_STD) + eps)
    log_scale = torch.where(std <= CONSTANT_STD * (1 + mean.abs()), torch.zeros_like(log_scale), log_scale)
    return (-mean).to(x.dtype), log_scale.to(x.dtype)


class DataInitFlag:
    """Mixin for layers with a data-dependent initialisation flagged by the buffer
    ``initialized``: once the flag is seen set, a Python mirror answers, so a training-mode
    forward costs no host sync per layer (CUDA) and no graph break (torch.compile).  Loading
    a state dict resets the mirror; call ``initialize`` rather than writing the buffer."""

    _ready: bool = False

    def needs_init(self) -> bool:
        if self._ready:
            return False
        self._ready = bool(self.initialized)
        return not self._ready

    def _load_from_state_dict(self, *args, **kwargs):
        self._ready = False
        super()._load_from_state_dict(*args, **kwargs)


def _check_sizes(where: str, **sizes) -> None:
    """Positive integers; ``hidden`` and ``latent_dim`` also within MAX_HIDDEN (invflow.validation)."""
    for name, v in sizes.items():
        check_number(v, name, where, low=1, integer=True)
    check_limits(where, **{k: v for k, v in sizes.items() if k in ("hidden", "latent_dim")})


#: Run the convolutional st-nets (GlowNet, ResNet) in channels_last on the CPU.  oneDNN's
#: convolutions are faster in NHWC than in NCHW (measured with bench/profile_step.py: the
#: st-net convolutions are ~80% of a Glow step, and NHWC is what torch.compile's inductor
#: picks on CPU); input and output stay NCHW-contiguous, so nothing outside the net changes.
CPU_CHANNELS_LAST = True


def _channels_last_forward(forward, x: torch.Tensor) -> torch.Tensor:
    if CPU_CHANNELS_LAST and x.dim() == 4 and x.device.type == "cpu":
        return forward(x.contiguous(memory_format=torch.channels_last)).contiguous()
    return forward(x)


def zero_init(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _conv3x3(cin: int, cout: int, bias: bool = True, weight_norm: bool = False) -> nn.Module:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    return nn.utils.parametrizations.weight_norm(conv) if weight_norm else conv


class ActNorm2d(DataInitFlag, nn.Module):
    """Activation normalisation for hidden layers of an st-net (Glow, Sec. 3.1 and the
    st-net of Sec. 3.3): y = (x + bias) * exp(logs) per channel (dim 1), computed by the
    same actnorm op (fused kernel or reference) and initialisation as ``invflow.ActNorm``.

    Data-dependent initialisation: the first forward in training mode (or an explicit
    ``initialize(x)``) sets bias = -mean, logs = -log(max(std, 1e-3) + eps) per channel, so that the
    output of that batch has zero mean and unit variance per channel (``data_init``:
    global-batch statistics under torch.distributed, ValueError for a batch with one value
    per channel, logs = 0 for constant channels such as dead ReLU units, and logs <= 6.9, a
    scale <= 1000, for near-constant ones: the std divided by is at least ``MIN_INIT_STD``
    = 1e-3).  Afterwards both
    are ordinary learned parameters.  Returns only the tensor: this is a network layer, not an
    ``invflow.Flow`` (see ``invflow.ActNorm`` for the invertible one)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.num_channels = check_number(num_channels, "num_channels", "ActNorm2d", low=1, integer=True)
        self.eps = check_number(eps, "eps", "ActNorm2d", low=0)
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.logs = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"{self.num_channels}"

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"ActNorm2d: expected [B, {self.num_channels}, ...] input, got shape {tuple(x.shape)}"
            )

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Sets bias = -mean(x) and logs = -log(std(x) + eps) per channel (see ``data_init``)."""
        self._check(x)
        bias, logs = data_init(x, self.eps, "ActNorm2d.initialize")
        self.bias.copy_(bias)
        self.logs.copy_(logs)
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if self.training and self.needs_init():
            self.initialize(x)
        # under torch.autocast the preceding conv returns float16 / bfloat16: run in that dtype, as
        # autocast runs the conv itself (the parameters stay float32)
        return ops.actnorm(x, self.bias.to(x.dtype), self.logs.to(x.dtype))[0]


class ZeroConv2d(nn.Conv2d):
    """Glow's output layer of the st-net ("Conv2DZeros", Glow Sec. 3.3 / official code):
    a 3x3 conv with zero-initialised weight and bias whose output is multiplied by
    exp(logscale_factor * logs), with a learned per-channel ``logs`` initialised at 0.
    The output is exactly zero at initialisation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        logscale_factor: float = 3.0,
    ):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        zero_init(self)
        self.logscale_factor = check_number(logscale_factor, "logscale_factor", "ZeroConv2d")
        self.logs = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.exp(self.logs * self.logscale_factor).view(1, -1, 1, 1)
        return super().forward(x) * scale


class GlowNet(nn.Sequential):
    """Glow's st-net (Kingma & Dhariwal 2018, Sec. 3.3 / Table 4): 3x3 conv -> ReLU ->
    1x1 conv -> ReLU -> ``ZeroConv2d`` (zero-initialised 3x3 conv, output scaled by
    exp(3 * logs)), on [B, C, H, W].

    ``actnorm=True`` puts an ``ActNorm2d`` after each of the first two convs (which then
    have no bias), as in Glow's official code: conv -> actnorm -> ReLU, twice.
    ``context_channels=K``: ``forward(x, context)`` with the context concatenated to x
    (the first conv takes in_channels + K channels; see the module docstring).

    Under the fused backend the net runs as three convolutions with bias: each ActNorm2d is
    folded into the weight and bias of the conv before it, (conv(x; W) + a) * exp(logs) =
    conv(x; W * exp(logs), a * exp(logs)), and so is ZeroConv2d's output scale, so no
    elementwise pass over the hidden activations remains but the ReLUs (same function and
    gradients as the layer-by-layer reference, up to float rounding).  The layer-by-layer
    path runs while an ActNorm2d awaits its data-dependent initialisation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 512,
        actnorm: bool = False,
        context_channels: int = 0,
    ):
        _check_sizes("GlowNet", in_channels=in_channels, out_channels=out_channels, hidden=hidden)
        context_channels = check_number(context_channels, "context_channels", "GlowNet", low=0, integer=True)
        bias = not actnorm
        mods: list[nn.Module] = [nn.Conv2d(in_channels + context_channels, hidden, 3, padding=1, bias=bias)]
        if actnorm:
            mods.append(ActNorm2d(hidden))
        mods += [nn.ReLU(), nn.Conv2d(hidden, hidden, 1, bias=bias)]
        if actnorm:
            mods.append(ActNorm2d(hidden))
        mods += [nn.ReLU(), ZeroConv2d(hidden, out_channels)]
        super().__init__(*mods)
        self.context_channels = context_channels

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None or self.context_channels:
            check_context(context, "GlowNet", self.context_channels, x.shape[0], tuple(x.shape[2:]))
            x = concat_context(x, context)
        # folding reorders rounding: only in float32/64 outside autocast, where it is exact to
        # the precision (under autocast and in half precision the layers run as written)
        foldable = x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type)
        plan = self._fold_plan() if foldable and backend_for(x) == "fused" else None
        if plan is None:
            return _channels_last_forward(super().forward, x)
        return _channels_last_forward(lambda v: _run_folded(plan, v), x)

    def _fold_structure(self):
        """The layers as [(conv, actnorm2d or None, relu)], or None when the net cannot be
        folded (an ActNorm2d still awaiting its data-dependent initialisation, or modules other
        than GlowNet's own)."""
        layers: list = []
        for m in self:
            if type(m) in (nn.Conv2d, ZeroConv2d):
                if m.padding_mode != "zeros":
                    return None
                layers.append([m, None, False])
            elif type(m) is ActNorm2d and layers and layers[-1][1] is None and not layers[-1][2]:
                if m.training and m.needs_init():
                    return None
                layers[-1][1] = m
            elif type(m) is nn.ReLU and layers and not layers[-1][2]:
                layers[-1][2] = True
            else:
                return None
        return layers

    def _fold_plan(self):
        """The layers as [(conv, weight, bias, relu)] with every ActNorm2d and ZeroConv2d scale
        folded into its convolution, or None (see ``_fold_structure``)."""
        plans = fold_plans([self])
        return None if plans is None else plans[0]


def _fold_layer(convs, actnorms):
    """(weights, biases) of the same layer of several nets, each ZeroConv2d scale and ActNorm2d
    folded in: (conv(x; W, b) * e + a) * exp(logs) = conv(x; W e exp(logs), (b e + a) exp(logs)).
    The nets' parameters are stacked so that one op serves all of them."""
    conv = convs[0]
    zero = type(conv) is ZeroConv2d
    if not zero and actnorms[0] is None:
        return [c.weight for c in convs], [c.bias for c in convs]
    many = len(convs) > 1
    stack = torch.stack if many else (lambda ts: ts[0].unsqueeze(0))
    w = stack([c.weight for c in convs])  # [K, out, in, kh, kw]
    b = stack([c.bias for c in convs]) if conv.bias is not None else None
    if zero:
        e = torch.exp(stack([c.logs for c in convs]) * conv.logscale_factor)
        w = w * e[:, :, None, None, None]
        b = b * e
    if actnorms[0] is not None:
        s = torch.exp(stack([a.logs for a in actnorms]))
        a = stack([a.bias for a in actnorms])
        w = w * s[:, :, None, None, None]
        b = (a if b is None else b + a) * s
    return list(w.unbind(0)), list(b.unbind(0))


def fold_plans(nets):
    """For GlowNets of the same architecture, each as [(conv, weight, bias, relu)] with its
    ActNorm2d layers and ZeroConv2d scale folded into the convolutions (computed for all nets
    at once), or None when a net cannot be folded."""
    structs = [n._fold_structure() if type(n) is GlowNet else None for n in nets]
    if not structs or any(s is None for s in structs):
        return None
    first = structs[0]
    for st in structs[1:]:
        if len(st) != len(first) or any(
            type(a[0]) is not type(b[0])
            or a[0].weight.shape != b[0].weight.shape
            or (a[0].bias is None) != (b[0].bias is None)
            or (a[1] is None) != (b[1] is None)
            or a[2] != b[2]
            for a, b in zip(st, first)
        ):
            return [fold_plans([n])[0] for n in nets]  # different architectures: one by one
    plans: list = [[] for _ in nets]
    for j, (_, _, relu) in enumerate(first):
        weights, biases = _fold_layer([st[j][0] for st in structs], [st[j][1] for st in structs])
        for k, st in enumerate(structs):
            plans[k].append((st[j][0], weights[k], biases[k], relu))
    return plans


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
    )


def _run_folded(plan, x: torch.Tensor) -> torch.Tensor:
    for conv, weight, bias, relu in plan:
        if _is_pointwise(conv) and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # a 1x1 conv on channels-last data is one matrix product over the pixel rows; unlike
            # the convolution's, its second-order terms need no transposed copies of activations
            b, c, h, w = x.shape
            rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
            wm = weight.view(weight.shape[0], c)
            y = torch.addmm(bias, rows, wm.t()) if bias is not None else rows @ wm.t()
            x = y.view(b, h, w, -1).permute(0, 3, 1, 2)
        else:
            x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if relu:
            x = F.relu(x)
    return x


class ResidualBlock(nn.Module):
    """Pre-activation residual block without normalisation:
    x + conv3x3(ReLU(conv3x3(ReLU(x)))) (He et al. 2016; the RealNVP block of Dinh et al.
    2017 without its batch norm)."""

    def __init__(self, channels: int, weight_norm: bool = False):
        super().__init__()
        self.conv1 = _conv3x3(channels, channels, weight_norm=weight_norm)
        self.conv2 = _conv3x3(channels, channels, weight_norm=weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ResNet(nn.Module):
    """Residual st-net of RealNVP (Dinh et al. 2017, Sec. 4.1: 8 residual blocks with 64
    feature maps on CIFAR-10; Kirichenko et al. 2020 App. C: 8 blocks on CIFAR-10 / CelebA / SVHN, 6 on
    grayscale images): 3x3 conv in -> ``blocks`` x ``ResidualBlock`` -> ReLU ->
    zero-initialised 3x3 conv out, on [B, C, H, W].

    No BatchNorm (the output must not depend on the batch at evaluation); set
    ``weight_norm=True`` for weight-normalised hidden convs as in Dinh et al.
    ``context_channels=K``: ``forward(x, context)`` with the context concatenated to x."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        blocks: int = 8,
        weight_norm: bool = False,
        context_channels: int = 0,
    ):
        super().__init__()
        _check_sizes("ResNet", in_channels=in_channels, out_channels=out_channels, hidden=hidden)
        check_number(blocks, "blocks", "ResNet", low=0, integer=True)
        check_limits("ResNet", blocks=blocks)
        self.context_channels = check_number(
            context_channels, "context_channels", "ResNet", low=0, integer=True
        )
        self.in_conv = _conv3x3(in_channels + self.context_channels, hidden, weight_norm=weight_norm)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden, weight_norm) for _ in range(blocks)])
        self.out_conv = zero_init(nn.Conv2d(hidden, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None or self.context_channels:
            check_context(context, "ResNet", self.context_channels, x.shape[0], tuple(x.shape[2:]))
            x = concat_context(x, context)
        return _channels_last_forward(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(F.relu(self.blocks(self.in_conv(x))))


def _pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    try:
        size = (image_size, image_size) if not isinstance(image_size, Sequence) else tuple(image_size)
        size = tuple(operator.index(s) for s in size)
    except TypeError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"Bottleneck: image_size must be an int or (H, W) of positive ints, got {image_size!r}"
        )
    return size  # type: ignore[return-value]


class Bottleneck(nn.Module):
    """st-net with a bottleneck (Kirichenko et al. 2020, Sec. 7 "st-networks with
    bottleneck"): "a pair of fully-connected layers projecting to a space of dimension l and
    back to the original input dimension", inserted "after the middle layer of the
    st-network", so that the net cannot copy local pixel correlations to its output.

    Layout (the ResNet above with the bottleneck in the middle, as in the authors' code):
    3x3 conv in -> blocks // 2 residual blocks -> flatten -> Linear(hidden*H*W, latent_dim)
    (``project``) -> Linear(latent_dim, hidden*H*W) (``unproject``) -> reshape ->
    remaining residual blocks -> ReLU -> zero-initialised 3x3 conv out.  The two linear
    layers have no nonlinearity between them (a rank-``latent_dim`` map), so all information
    from input to output passes through ``latent_dim`` numbers per sample.

    ``image_size`` = (H, W) (or an int for square inputs) of the input feature map; other
    spatial sizes raise ValueError.  Kirichenko et al. 2020 uses l in {10, 50, 100} (FashionMNIST) and
    {30, 80, 150} (CelebA).  ``context_channels=K``: ``forward(x, context)`` with the context
    concatenated to x before the first conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int | Sequence[int],
        hidden: int = 64,
        latent_dim: int = 50,
        blocks: int = 8,
        weight_norm: bool = False,
        context_channels: int = 0,
    ):
        super().__init__()
        self.image_size = _pair(image_size)
        _check_sizes(
            "Bottleneck",
            in_channels=in_channels,
            out_channels=out_channels,
            hidden=hidden,
            latent_dim=latent_dim,
        )
        check_number(blocks, "blocks", "Bottleneck", low=0, integer=True)
        check_limits("Bottleneck", blocks=blocks)
        self.in_channels, self.hidden, self.latent_dim = in_channels, hidden, latent_dim
        self.context_channels = check_number(
            context_channels, "context_channels", "Bottleneck", low=0, integer=True
        )
        h, w = self.image_size
        flat = hidden * h * w
        self.in_conv = _conv3x3(in_channels + self.context_channels, hidden, weight_norm=weight_norm)
        self.blocks_in = nn.Sequential(*[ResidualBlock(hidden, weight_norm) for _ in range(blocks // 2)])
        self.project = nn.Linear(flat, latent_dim)
        self.unproject = nn.Linear(latent_dim, flat)
        n_out = blocks - blocks // 2
        self.blocks_out = nn.Sequential(*[ResidualBlock(hidden, weight_norm) for _ in range(n_out)])
        self.out_conv = zero_init(nn.Conv2d(hidden, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            h, w = self.image_size
            raise ValueError(
                f"Bottleneck: expected input [B, {self.in_channels}, {h}, {w}], got shape {tuple(x.shape)}"
            )
        if tuple(x.shape[2:]) != self.image_size:
            raise ValueError(
                f"Bottleneck: expected spatial size (H, W) = {self.image_size} (set by image_size), "
                f"got {tuple(x.shape[2:])}"
            )
        if context is not None or self.context_channels:
            check_context(context, "Bottleneck", self.context_channels, x.shape[0], self.image_size)
            x = concat_context(x, context)
        h = self.blocks_in(self.in_conv(x))
        u = self.project(h.flatten(1))
        h = self.unproject(u).view_as(h)
        return self.out_conv(F.relu(self.blocks_out(h)))


class MLP(nn.Sequential):
    """Fully-connected st-net for vectors [B, D]: ``layers`` hidden ReLU layers of width
    ``hidden`` and a zero-initialised output layer.  ``context_features=K``:
    ``forward(x, context)`` with the context [B, K] concatenated to x (the first layer takes
    in_features + K inputs)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 512,
        layers: int = 2,
        context_features: int = 0,
    ):
        _check_sizes("MLP", in_features=in_features, out_features=out_features, hidden=hidden)
        check_number(layers, "layers", "MLP", low=0, integer=True)
        context_features = check_number(context_features, "context_features", "MLP", low=0, integer=True)
        mods: list[nn.Module] = []
        width = in_features + context_features
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        mods.append(zero_init(nn.Linear(width, out_features)))
        super().__init__(*mods)
        self.context_features = context_features

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None or self.context_features:
            check_context(context, "MLP", self.context_features, x.shape[0])
            x = concat_context(x, context)
        return super().forward(x)
