"""A compact PixelCNN++ (Salimans, Karpathy, Chen & Kingma 2017) as a likelihood model for the
baselines of Schirrmeister et al. 2020: Tab. 1 / Tab. 4 "PCNN" (in-distribution
model, general-distribution "Tiny-PCNN" and their log-likelihood ratio, Eq. 1), the outlier
loss (Eq. 2, S4.3-S4.4) and the margin loss "OE".  Schirrmeister et al. 2020 S1.2 used the public PixelCNN++
with 120 instead of 160 filters (3 resolutions, 5 gated resnets each, 10 mixtures):
``PixelCNNpp(3, 32, filters=120, resnets=5, levels=3, mixtures=10)``.  The defaults here are a
compact version for 28 x 28 greyscale images.

    model = PixelCNNpp(in_channels=1, image_size=28)
    out = model(invflow.data.preprocess(images))   # FlowOutput, like the invflow flows
    out.log_prob        # [B] continuous log-density of the preprocessed input (below)
    out.per_scale       # [B, 1] == log_prob[:, None]: a single "scale"
    out.latents         # []: an autoregressive model has no latents
    model.pixel_log_probs(x)   # [B, C, H, W]: log P(k_i | k_<i) of every sub-pixel
    model.sample(n)            # [n, C, H, W] bin centres in [-0.5, 0.5), pixel by pixel

Architecture (PixelCNN++ Sec. 2, Fig. 2), written from the paper:

* Two streams: the "u" stream of down-shifted convolutions (kernel 2 x 3; the value at pixel
  (i, j) sees rows < i only) and the "ul" stream of down-right-shifted convolutions (kernel
  2 x 2; it sees rows < i and row i left of j).  The first layer shifts its output down
  (u) or down / right (ul) by one so that no pixel ever sees itself; a constant channel of
  ones is appended to the input so that the zero padding at the borders is recognisable.
* Gated resnet blocks (Sec. 2.4 / PixelCNN gating): h = conv(concat_elu(x)) [+ nin(concat_elu(a))],
  then conv(dropout(concat_elu(h))) -> (a, b) and x + a * sigmoid(b).  ``concat_elu(x) =
  elu([x, -x])``.  The ul blocks take the u stream as the extra input a.
* ``levels`` resolutions: levels=1 means no down-sampling at all, levels=3 means full, 1/2 and
  1/4 resolution (PixelCNN++ uses 3).  Down-sampling by strided shifted convolutions,
  up-sampling by shifted transposed convolutions, with ``resnets`` blocks per resolution in the
  first pass and ``resnets`` (+1 below full resolution) in the second, every second-pass block
  receiving the matching first-pass output through a skip connection (Sec. 2.5, Fig. 2).
  No weight normalisation (plain PyTorch initialisation).
* Output: a 1 x 1 conv of elu(ul) giving, per pixel and per mixture component m, a logit,
  C means, C log-scales (clamped below at -7) and C (C - 1) / 2 coefficients tanh(.).

Likelihood (PixelCNN++ Sec. 2.1-2.2, Eqs. 2-3).  The 8-bit values k are put on the paper's
scale v = 2 k / 255 - 1 in [-1, 1]; sub-pixel c of a pixel has, for component m, the
logistic distribution with mean mu_mc + sum_{c' < c} coef_m,(c,c') v_c' (the true values of
the earlier channels of the same pixel: Eq. 3 generalised from RGB to C channels; for C = 1
there are no coefficients, for C = 3 it is the paper's R -> G -> B scheme) and scale s_mc,
discretised to the bin [v - 1/255, v + 1/255]:

    P(k | m) = sigmoid((v + 1/255 - mu) / s) - sigmoid((v - 1/255 - mu) / s)        (Eq. 2)
    k = 0:   log sigmoid((v + 1/255 - mu) / s)        (the bin extends to -inf)
    k = 255: log(1 - sigmoid((v - 1/255 - mu) / s))   (the bin extends to +inf)

and the pixel probability is sum_m pi_m prod_c P(k_c | m, k_<c) (one mixture component shared
by the channels of a pixel).  Numerics: the paper evaluates the interior difference of
sigmoids directly and falls back to the density at the bin centre times the bin width when
that difference is below 1e-5 (float32 cancellation in the tails).  Here the interior mass is
computed exactly in log space, log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b)
+ log(1 - exp(b - a)), which cannot cancel; the mid-bin approximation remains only where the
width factor 1 - exp(b - a) ~ (bin width) / s underflows (a logistic wider than ~1e38 bins in
float32, where the mid-bin value is exact to rounding).  So the 256 bin masses sum to one to
rounding error at any parameters.

Input contract: the same as the invflow flows: floats in [-0.5, 0.5] from
``invflow.data.preprocess`` in the model's dtype.  The 8-bit value is recovered as
k = clamp(floor((x + 0.5) * 256), 0, 255), so dequantised training inputs ((k + u) / 256 - 0.5,
u in [0, 1)) and noise-free evaluation inputs (u = 1/2) give the same k and the same output,
and the network only ever sees the bin centres: log_prob is piecewise constant in x, its
gradient with respect to x is zero (gradient-based scores such as ApproximateMass say nothing
here).  (In float32, ``preprocess`` itself rounds k + u to k + 1 for u within ~2^-16 of 1 at
large k; such an input is read as k + 1, as any model of it would.)

``log_prob`` is the log-density of the preprocessed input under the uniformly dequantised
model, log P(k) + D log 256 with D = C H W, so ``invflow.data.bits_per_dim(log_prob, D)`` =
-log2 P(k) / D is the usual PixelCNN bits/dim and the numbers sit on the flows' scale
(``invflow.train.Trainer``'s ``nll`` objective, ``detectors.scores.Likelihood`` /
``LikelihoodRatio`` and ``detectors.objectives.outlier_objective`` all work unchanged).

Size and speed of the default ``PixelCNNpp()`` (1 x 28 x 28, filters=32, resnets=1, levels=2,
mixtures=5): 352,847 parameters; measured 0.34-0.45 training steps/s (2.2-2.9 s per forward +
backward + Adamax step of the mean bits/dim loss) at batch 64 on one CPU thread (torch 2.13, a
shared 2-core machine under a load average of ~5, so likely pessimistic); the network's
convolutions dominate (the mixture likelihood costs little).  The test suite uses much smaller
models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from invflow import checkpoint
from invflow.models import FlowOutput
from invflow.validation import check_model_input

__all__ = ["PixelCNNpp", "discretized_logistic_log_mass"]

BINS = 256
LOG_SCALE_MIN = -7.0  # PixelCNN++ clamps the log-scales below at -7
_HALF_BIN = 1.0 / (BINS - 1)  # half a bin on the v = 2k/255 - 1 scale


# ------------------------------------------------------------------------ likelihood
def discretized_logistic_log_mass(
    k: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(k) of the 8-bit value(s) ``k`` (long, broadcastable) under the logistic with
    ``mean`` and ``exp(log_scale)`` on the v = 2k/255 - 1 scale, discretised to 256 bins
    (PixelCNN++ Eq. 2 with the k = 0 / k = 255 edge bins extended to -inf / +inf).  The
    log-scale is clamped below at -7 as in PixelCNN++."""
    log_scale = log_scale.clamp(min=LOG_SCALE_MIN)
    inv_s = torch.exp(-log_scale)
    v = k.to(mean.dtype) * (2.0 / (BINS - 1)) - 1.0
    centred = v - mean
    plus = inv_s * (centred + _HALF_BIN)
    minus = inv_s * (centred - _HALF_BIN)
    log_cdf_plus = F.logsigmoid(plus)  # k = 0: log CDF(upper edge)
    log_one_minus_cdf_minus = F.logsigmoid(-minus)  # k = 255: log(1 - CDF(lower edge))
    # interior: log(sigmoid(plus) - sigmoid(minus)), exact in log space (see module docstring)
    width = -torch.expm1(-2.0 * _HALF_BIN * inv_s)  # 1 - exp(minus - plus), in (0, 1)
    tiny = torch.finfo(width.dtype).tiny
    exact = log_cdf_plus + log_one_minus_cdf_minus + torch.log(width.clamp(min=tiny))
    mid_in = inv_s * centred  # mid-bin fallback: log pdf(v) + log(bin width)
    mid = mid_in - log_scale - 2.0 * F.softplus(mid_in) + math.log(2.0 * _HALF_BIN)
    interior = torch.where(width > tiny, exact, mid)
    return torch.where(k == 0, log_cdf_plus, torch.where(k == BINS - 1, log_one_minus_cdf_minus, interior))


# ------------------------------------------------------------------------ layers
def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """elu([x, -x]) along the channels (PixelCNN++ Sec. 2.4)."""
    return F.elu(torch.cat([x, -x], dim=1))


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Moves every row one down (a zero row enters at the top)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Moves every column one right (a zero column enters at the left)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv(nn.Module):
    """Convolution whose output at (i, j) reads rows i - kh + 1 .. i and the kw columns centred
    on j (kw odd); ``stride=2`` halves even sizes, output (i, j) reading rows 2i - kh + 1 .. 2i."""

    def __init__(self, cin: int, cout: int, kernel=(2, 3), stride: int = 1):
        super().__init__()
        kh, kw = kernel
        self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad))


class DownRightShiftedConv(nn.Module):
    """Convolution whose output at (i, j) reads rows i - kh + 1 .. i and columns j - kw + 1 .. j."""

    def __init__(self, cin: int, cout: int, kernel=(2, 2), stride: int = 1):
        super().__init__()
        kh, kw = kernel
        self.pad = (kw - 1, 0, kh - 1, 0)
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad))


class DownShiftedDeconv(nn.Module):
    """2x up-sampling for the u stream: input (i, j) writes output rows 2i, 2i + 1 and columns
    2j - 1 .. 2j + 1 (a 2 x 3 stride-2 transposed convolution), so rows never move up."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, (2, 3), stride=2, padding=(0, 1), output_padding=(0, 1))

    def forward(self, x):
        return self.conv(x)


class DownRightShiftedDeconv(nn.Module):
    """2x up-sampling for the ul stream: input (i, j) writes the output block rows 2i, 2i + 1,
    columns 2j, 2j + 1 (a 2 x 2 stride-2 transposed convolution)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 2, stride=2)

    def forward(self, x):
        return self.conv(x)


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), (a, b) = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(concat_elu(skip)))))
    with ``conv`` a shifted convolution class; ``skip_streams`` = how many filter-wide streams the
    extra input concatenates (0: none)."""

    def __init__(self, filters: int, conv: type, skip_streams: int = 0, dropout: float = 0.0):
        super().__init__()
        self.conv_in = conv(2 * filters, filters)
        self.skip = nn.Conv2d(2 * skip_streams * filters, filters, 1) if skip_streams else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv(2 * filters, 2 * filters)

    def forward(self, x, skip=None):
        h = self.conv_in(concat_elu(x))
        if self.skip is not None:
            h = h + self.skip(concat_elu(skip))
        a, b = self.conv_out(self.dropout(concat_elu(h))).chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"PixelCNNpp: {name} must be an int >= {minimum}, got {value!r}")
    return value


# ------------------------------------------------------------------------ the model
@checkpoint.register
class PixelCNNpp(nn.Module):
    """PixelCNN++ likelihood model; see the module docstring.

    Args:
        in_channels: C >= 1 (channels are modelled autoregressively within a pixel).
        image_size: H = W (int) or (H, W); both divisible by 2**(levels - 1).
        filters: width of both streams (PixelCNN++: 160; Schirrmeister et al. 2020 S1.2: 120).
        resnets: gated resnet blocks per resolution and stream (PixelCNN++: 5).
        levels: number of resolutions: 1 = no down-sampling, 3 = full, 1/2 and 1/4 (PixelCNN++).
        mixtures: logistic mixture components per pixel (PixelCNN++: 10).
        dropout: dropout rate inside the gated resnets (PixelCNN++: 0.5), active in train mode.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size=28,
        filters: int = 32,
        resnets: int = 1,
        levels: int = 2,
        mixtures: int = 5,
        dropout: float = 0.0,
    ):
        super().__init__()
        c = _positive_int("in_channels", in_channels)
        _positive_int("filters", filters)
        _positive_int("resnets", resnets)
        _positive_int("levels", levels)
        _positive_int("mixtures", mixtures)
        if (
            isinstance(image_size, bool)
            or not isinstance(image_size, (int, list, tuple))
            or (not isinstance(image_size, int) and len(image_size) != 2)
        ):
            raise ValueError(f"PixelCNNpp: image_size must be an int or (H, W), got {image_size!r}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        for name, size in (("height", h), ("width", w)):
            _positive_int(f"image {name}", size)
            if size % 2 ** (levels - 1):
                raise ValueError(
                    f"PixelCNNpp: image {name} {size} is not divisible by 2**(levels - 1) = "
                    f"{2 ** (levels - 1)}: levels={levels} halves the resolution "
                    f"{levels - 1} times"
                )
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"PixelCNNpp: dropout must be a float in [0, 1), got {dropout!r}")

        self.in_channels, self.image_size = c, (h, w)
        self.filters, self.resnets, self.levels, self.mixtures = filters, resnets, levels, mixtures
        self.dropout = float(dropout)
        self.input_shape = (c, h, w)
        self.num_coefficients = c * (c - 1) // 2
        self.params_per_mixture = 1 + 2 * c + self.num_coefficients
        rows, cols = torch.tril_indices(c, c, -1)
        self.register_buffer("_coef_rows", rows, persistent=False)
        self.register_buffer("_coef_cols", cols, persistent=False)

        f = filters
        # first layer: the input plus a channel of ones (to see the zero padding)
        self.u_init = DownShiftedConv(c + 1, f, (2, 3))
        self.ul_init_up = DownShiftedConv(c + 1, f, (1, 3))
        self.ul_init_left = DownRightShiftedConv(c + 1, f, (2, 1))

        def u_block(skip):
            return GatedResnet(f, DownShiftedConv, skip, self.dropout)

        def ul_block(skip):
            return GatedResnet(f, DownRightShiftedConv, skip, self.dropout)

        # first pass (full -> coarsest resolution) and second pass (coarsest -> full)
        self.first_u = nn.ModuleList(nn.ModuleList(u_block(0) for _ in range(resnets)) for _ in range(levels))
        self.first_ul = nn.ModuleList(
            nn.ModuleList(ul_block(1) for _ in range(resnets)) for _ in range(levels)
        )
        self.down_u = nn.ModuleList(DownShiftedConv(f, f, (2, 3), stride=2) for _ in range(levels - 1))
        self.down_ul = nn.ModuleList(DownRightShiftedConv(f, f, (2, 2), stride=2) for _ in range(levels - 1))
        counts = [resnets] + [resnets + 1] * (levels - 1)
        self.second_u = nn.ModuleList(nn.ModuleList(u_block(1) for _ in range(n)) for n in counts)
        self.second_ul = nn.ModuleList(nn.ModuleList(ul_block(2) for _ in range(n)) for n in counts)
        self.up_u = nn.ModuleList(DownShiftedDeconv(f, f) for _ in range(levels - 1))
        self.up_ul = nn.ModuleList(DownRightShiftedDeconv(f, f) for _ in range(levels - 1))
        self.out = nn.Conv2d(f, mixtures * self.params_per_mixture, 1)

    # -- checkpoints -------------------------------------------------------------------
    def config(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "filters": self.filters,
            "resnets": self.resnets,
            "levels": self.levels,
            "mixtures": self.mixtures,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config: dict) -> PixelCNNpp:
        return cls(**config)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    # -- the network -----------------------------------------------------------------
    def network(self, v: torch.Tensor) -> torch.Tensor:
        """Raw mixture parameters [B, mixtures * (1 + 2C + C(C-1)/2), H, W] for images on the
        v = 2k/255 - 1 scale [B, C, H, W] (no validation; differentiable in v).  The output at
        pixel (i, j) depends only on the pixels before (i, j) in raster order."""
        x = torch.cat([v, torch.ones_like(v[:, :1])], dim=1)
        u = down_shift(self.u_init(x))
        ul = down_shift(self.ul_init_up(x)) + right_shift(self.ul_init_left(x))
        us, uls = [u], [ul]
        for level in range(self.levels):
            for block_u, block_ul in zip(self.first_u[level], self.first_ul[level]):
                u = block_u(u)
                ul = block_ul(ul, u)
                us.append(u)
                uls.append(ul)
            if level < self.levels - 1:
                u, ul = self.down_u[level](u), self.down_ul[level](ul)
                us.append(u)
                uls.append(ul)
        u, ul = us.pop(), uls.pop()
        for level in range(self.levels):
            for block_u, block_ul in zip(self.second_u[level], self.second_ul[level]):
                u = block_u(u, us.pop())
                ul = block_ul(ul, torch.cat([u, uls.pop()], dim=1))
            if level < self.levels - 1:
                u, ul = self.up_u[level](u), self.up_ul[level](ul)
        assert not us and not uls
        return self.out(F.elu(ul))

    def _split(self, params: torch.Tensor):
        """Raw parameters [B, M * P, ...] -> (log pi [B, M, ...], means [B, M, C, ...],
        log-scales [B, M, C, ...], coefficient matrices [B, M, C, C, ...] (strictly lower))."""
        b, m, c, t = params.shape[0], self.mixtures, self.in_channels, self.num_coefficients
        rest = params.shape[2:]
        p = params.reshape(b, m, self.params_per_mixture, *rest)
        log_pi = torch.log_softmax(p[:, :, 0], dim=1)
        means = p[:, :, 1 : 1 + c]
        log_scales = p[:, :, 1 + c : 1 + 2 * c]
        coefs = torch.zeros(b, m, c, c, *rest, dtype=params.dtype, device=params.device)
        if t:
            coefs[:, :, self._coef_rows, self._coef_cols] = torch.tanh(p[:, :, 1 + 2 * c :])
        return log_pi, means, log_scales, coefs

    def _joint_log_probs(self, k: torch.Tensor) -> torch.Tensor:
        """log P(k_{pixel, <=c} | earlier pixels) [B, C, H, W] (channel-cumulative) for 8-bit k."""
        v = k.to(self._dtype()) * (2.0 / (BINS - 1)) - 1.0
        log_pi, means, log_scales, coefs = self._split(self.network(v))
        means = means + torch.einsum("bmcdhw,bdhw->bmchw", coefs, v)
        per_channel = discretized_logistic_log_mass(k.unsqueeze(1), means, log_scales)  # [B, M, C, H, W]
        return torch.logsumexp(log_pi.unsqueeze(2) + per_channel.cumsum(2), dim=1)

    # -- the contract ------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> FlowOutput:
        """FlowOutput(log_prob [B] = log P(k) + D log 256, per_scale [B, 1] = log_prob[:, None],
        latents = [])."""
        k = self.quantize(x)
        log_p_k = self._joint_log_probs(k)[:, -1].flatten(1).sum(1)
        log_p = log_p_k + math.prod(self.input_shape) * math.log(BINS)
        return FlowOutput(log_prob=log_p, per_scale=log_p.unsqueeze(1), latents=[])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log P(k) + D log 256 [B] (== forward(x).log_prob)."""
        return self(x).log_prob

    def pixel_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log P(k_i | k_<i) [B, C, H, W] of every sub-pixel (raster order over pixels, channel
        order within a pixel); their sum over C, H, W is log P(k)."""
        joint = self._joint_log_probs(self.quantize(x))
        return torch.cat([joint[:, :1], joint[:, 1:] - joint[:, :-1]], dim=1)

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """-log2 P(k) / D [B] (invflow.data conventions)."""
        d = math.prod(self.input_shape)
        return (-self.log_prob(x) + d * math.log(BINS)) / (d * math.log(2))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Validated preprocessed x -> 8-bit values k = clamp(floor((x + 0.5) * 256), 0, 255) (long)."""
        self.check_input(x)
        return torch.floor((x.detach() + 0.5) * BINS).clamp(0, BINS - 1).long()

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """n images [n, C, H, W] as bin centres (k + 1/2) / 256 - 0.5, drawn pixel by pixel in
        raster order (one network pass per pixel) and channel by channel within a pixel, one
        mixture component per pixel.  ``temperature`` multiplies the logistic scales (1 = the
        model's distribution).  Runs in the model's current mode (call .eval() for no dropout)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"PixelCNNpp.sample: n must be an int >= 1, got {n!r}")
        if not temperature > 0:
            raise ValueError(f"PixelCNNpp.sample: temperature must be > 0, got {temperature!r}")
        c, h, w = self.input_shape
        dtype, device = self._dtype(), self._device()
        k = torch.zeros(n, c, h, w, dtype=torch.long, device=device)
        tiny = torch.finfo(dtype).tiny
        for i in range(h):
            for j in range(w):
                v = k.to(dtype) * (2.0 / (BINS - 1)) - 1.0
                log_pi, means, log_scales, coefs = self._split(self.network(v)[:, :, i, j])
                comp = torch.multinomial(log_pi.exp(), 1, generator=generator).squeeze(1)
                rows = torch.arange(n, device=device)
                means, coefs = means[rows, comp], coefs[rows, comp]  # [n, C], [n, C, C]
                scales = log_scales[rows, comp].clamp(min=LOG_SCALE_MIN).exp() * temperature
                values = torch.zeros(n, c, dtype=dtype, device=device)
                for ch in range(c):
                    mu = means[:, ch] + (coefs[:, ch] * values).sum(1)
                    u = torch.rand(n, generator=generator, dtype=dtype, device=device).clamp(min=tiny)
                    y = mu + scales[:, ch] * (torch.log(u) - torch.log1p(-u))
                    kc = torch.round((y.clamp(-2.0, 2.0) + 1.0) * ((BINS - 1) / 2.0))  # the bin of y
                    kc = kc.clamp(0, BINS - 1).long()
                    k[:, ch, i, j] = kc
                    values[:, ch] = kc.to(dtype) * (2.0 / (BINS - 1)) - 1.0
        return (k.to(dtype) + 0.5) / BINS - 0.5

    # -- helpers -----------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        return self.out.weight.dtype

    def _device(self) -> torch.device:
        return self.out.weight.device

    def check_input(self, x) -> None:
        """TypeError for non-tensors, integer dtypes and a dtype other than the parameters';
        ValueError for wrong rank, channels or size, another device, an empty batch,
        NaN / Inf and values outside [-0.5, 0.5] (the invflow.validation rules)."""
        check_model_input(x, type(self).__name__, self.input_shape, next(self.parameters()), max_abs=0.5)
