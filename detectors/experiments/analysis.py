"""Analyses of why flow likelihoods fail at OOD detection, with their plots.

* Low-level pixel statistics (Schirrmeister et al. 2020 Sec. 2, Fig. 1A/B): ``pixel_differences``,
  ``PixelDifferenceModel`` (the histogram pseudo-likelihood),
  ``plot_pixel_difference_histograms``.
* Fourier amplitude/phase mixing (Schirrmeister et al. 2020 S3, Fig. S1): ``fourier_mix``, ``plot_fourier_mix``.
* Rank correlations (Schirrmeister et al. 2020 Fig. 1C, Fig. 3C/D): ``spearman``, ``correlation_matrix``,
  ``per_scale_correlations``, ``plot_correlation_matrix``, ``plot_per_scale_correlations``,
  ``plot_scatter``.
* Latents and coupling layers (Kirichenko et al. 2020 Sec. 5-6, Fig. 2/3, App. E): ``unsqueeze_latents``,
  ``plot_latents``, ``coupling_st``, ``plot_coupling_st``.

Schirrmeister et al. 2020 (Sec. 2) and Kirichenko et al. 2020 (Sec. 6) both find that likelihoods are dominated by local
pixel correlations that every natural-image dataset shares.  Everything runs on CPU; plots
use matplotlib's Agg canvas without pyplot (``detectors.report.new_figure``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

import invflow
from invflow.ops import scale_terms
from invflow.validation import check_preprocessed

from ..report import new_figure, save_figure

PIXEL_SCALE = 256.0  # floats in [-0.5, 0.5) -> the 0..255 pixel scale (invflow.data)


# -- helpers ----------------------------------------------------------------------------------
def _numpy(values, name: str = "input") -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return values.numpy() if values.dtype == torch.uint8 else values.double().numpy()
    return np.asarray(values)


def _images(images, name: str) -> tuple[np.ndarray, bool]:
    """[N, C, H, W] (or [N, H, W]) images -> (float64 array in the 0..255 scale, was uint8)."""
    arr = _numpy(images, name)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"{name}: expected images [N, C, H, W] or [N, H, W], got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64), True
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name}: expected uint8 images or floats in [-0.5, 0.5], got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: images contain non-finite values")
    check_preprocessed(torch.from_numpy(arr), name)  # raw 0..255 or 0..1 floats
    return arr.astype(np.float64) * PIXEL_SCALE, False


def _display(img: np.ndarray, uint8: bool) -> np.ndarray:
    """[C, H, W] image -> something imshow takes: [H, W] (grey) or [H, W, 3] in [0, 1]."""
    img = img / 255.0 if uint8 else img + 0.5
    img = np.clip(img, 0.0, 1.0)
    return img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0]


def _panel(values: np.ndarray, channel: int | None) -> np.ndarray:
    """A latent / activation of one sample as a 2-D map: [C, H, W] -> channel or channel
    mean; [D] -> square if D is a square number, else one row."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 3:
        return values.mean(0) if channel is None else values[min(channel, values.shape[0] - 1)]
    if values.ndim == 2:
        return values
    flat = values.reshape(-1)
    side = math.isqrt(flat.size)
    return flat.reshape(side, side) if side * side == flat.size else flat[None]


def _symmetric_limit(values: np.ndarray) -> float:
    v = np.abs(values[np.isfinite(values)])
    lim = float(np.percentile(v, 99)) if v.size else 1.0
    return lim if lim > 0 else 1.0


def _model_input(model, x):
    """Preprocessed float input for ``model``: uint8 images go through
    ``invflow.data.preprocess(dequantize=False)`` in the model's dtype; floats are used as given."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        dtype = next(iter(model.parameters()), torch.zeros(())).dtype
        return invflow.data.preprocess(x, dequantize=False, dtype=dtype)
    return x


class _EvalMode:
    """Runs a model in eval mode (no data-dependent initialisation, no state change) and
    restores its previous mode."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


# -- 1. pixel differences (Schirrmeister et al. 2020 Sec. 2, Fig. 1A/B) -------------------------------------
def pixel_differences(images) -> np.ndarray:
    """Difference of each pixel to the mean of its 8 neighbours in the 3x3 neighbourhood
    (Schirrmeister et al. 2020 Sec. 2), per channel, in the 0..255 pixel scale: uint8 images as they are,
    floats in [-0.5, 0.5] multiplied by 256.

    Border handling: only interior pixels, which have all 8 neighbours, are used, so
    [N, C, H, W] (or [N, H, W]) gives float64 [N, C, H-2, W-2].
    """
    arr, _ = _images(images, "pixel_differences")
    if arr.shape[2] < 3 or arr.shape[3] < 3:
        raise ValueError(f"pixel_differences: images must be at least 3x3, got {arr.shape[2:]}")
    h, w = arr.shape[2], arr.shape[3]
    total = np.zeros(arr.shape[:2] + (h - 2, w - 2))
    for di in range(3):
        for dj in range(3):
            total += arr[:, :, di : di + h - 2, dj : dj + w - 2]
    centre = arr[:, :, 1 : h - 1, 1 : w - 1]
    return centre - (total - centre) / 8.0


class PixelDifferenceModel:
    """Histogram density of the pixel differences and the per-image pseudo-likelihood of
    Schirrmeister et al. 2020 Sec. 2 (Fig. 1B): ``bins`` equally spaced bins over ``range`` (default: min /
    max of the training differences); log-likelihood = sum over pixels of log density.

    Smoothing: ``alpha`` (default 1, Laplace / add-one) is added to every bin count before
    normalising, so empty bins get a small positive density; differences outside the range
    get that same floor density alpha / ((n + bins * alpha) * width).  Log-likelihoods are
    therefore always finite.  The bins' densities integrate to 1 (the outside floor is an
    extra, unnormalised allowance: this is a pseudo-likelihood anyway).
    """

    def __init__(self, bins: int = 100, range: tuple[float, float] | None = None, alpha: float = 1.0):
        if bins < 1:
            raise ValueError(f"PixelDifferenceModel: bins must be >= 1, got {bins}")
        if not alpha > 0:
            raise ValueError(
                f"PixelDifferenceModel: alpha must be > 0 (smoothing keeps log densities finite), got {alpha}"
            )
        if range is not None and not range[1] > range[0]:
            raise ValueError(f"PixelDifferenceModel: range must be (low, high) with high > low, got {range}")
        self.bins, self.range, self.alpha = int(bins), range, float(alpha)
        self.edges_ = self.density_ = self.floor_ = None

    def fit(self, images) -> PixelDifferenceModel:
        d = pixel_differences(images).ravel()
        lo, hi = self.range if self.range is not None else (float(d.min()), float(d.max()))
        if not hi > lo:  # constant differences (e.g. constant images)
            lo, hi = lo - 0.5, hi + 0.5
        counts, edges = np.histogram(d, bins=self.bins, range=(lo, hi))
        width = (hi - lo) / self.bins
        total = counts.sum() + self.alpha * self.bins
        self.edges_ = edges
        self.density_ = (counts + self.alpha) / (total * width)
        self.floor_ = self.alpha / (total * width)
        return self

    @property
    def bin_width(self) -> float:
        return float(self.edges_[1] - self.edges_[0])

    def log_density(self, differences) -> np.ndarray:
        """log density of each pixel difference (same shape)."""
        if self.density_ is None:
            raise RuntimeError("PixelDifferenceModel: call fit(images) first")
        d = np.asarray(differences, dtype=np.float64)
        lo, hi = self.edges_[0], self.edges_[-1]
        idx = np.clip(np.floor((d - lo) / self.bin_width).astype(np.int64), 0, self.bins - 1)
        dens = np.where((d >= lo) & (d <= hi), self.density_[idx], self.floor_)
        return np.log(dens)

    def log_likelihood(self, images) -> np.ndarray:
        """Per-image pseudo-log-likelihood [N]: sum of the log densities of its pixel differences."""
        d = pixel_differences(images)
        return self.log_density(d).reshape(d.shape[0], -1).sum(1)

    def score(self, images) -> np.ndarray:
        """Anomaly score [N] (higher = more anomalous): the negative pseudo-log-likelihood."""
        return -self.log_likelihood(images)


def plot_pixel_difference_histograms(
    datasets: Mapping, path: str, bins: int = 100, range=None, log: bool = False, percentiles=(0.5, 99.5)
) -> None:
    """Overlaid normalised histograms of the pixel differences of each dataset (Schirrmeister et al. 2020
    Fig. 1A), on common bins over ``range`` (default: the ``percentiles`` range of the
    pooled differences, so rare extremes do not flatten the peak at zero)."""
    diffs = {name: pixel_differences(images).ravel() for name, images in datasets.items()}
    if not diffs:
        raise ValueError("plot_pixel_difference_histograms: no datasets given")
    if range is None:
        pooled = np.concatenate(list(diffs.values()))
        range = tuple(np.percentile(pooled, percentiles))
        if not range[1] > range[0]:
            range = (range[0] - 0.5, range[1] + 0.5)
    edges = np.linspace(range[0], range[1], bins + 1)
    fig = new_figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for name, d in diffs.items():
        ax.hist(
            d[(d >= edges[0]) & (d <= edges[-1])],
            bins=edges,
            density=True,
            histtype="step",
            lw=1.5,
            label=name,
        )
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("pixel - mean of its 8 neighbours (0..255 scale)")
    ax.set_ylabel("density")
    ax.set_title("Local pixel differences")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


# -- 2. Fourier mixing (Schirrmeister et al. 2020 S3, Fig. S1) ---------------------------------------------------
def fourier_mix(
    amplitude_images: torch.Tensor, phase_images: torch.Tensor, clip: bool = True
) -> torch.Tensor:
    """Images with the Fourier amplitudes of ``amplitude_images`` and the phases of
    ``phase_images`` (Schirrmeister et al. 2020 S3): per channel, fft2 -> |A| exp(i angle(P)) -> ifft2, real part.

    Both inputs are uint8 images or both floats in [-0.5, 0.5) of the same shape [..., H, W].
    The mix is computed in the 0..255 pixel scale (floats mapped by (x + 0.5) * 256) so the
    DC term (mean brightness) is non-negative for both images and the result keeps the
    amplitude image's mean.  With ``clip=True`` the output has the input's dtype and range:
    uint8 rounded and clipped to 0..255, floats clipped to [-0.5, 0.5 - 1/256] (Schirrmeister et al. 2020
    S4.5).  ``clip=False`` returns the unclipped real part: float64 in 0..255 for uint8
    input, the input's float dtype and scale otherwise.
    """
    for name, t in (("amplitude_images", amplitude_images), ("phase_images", phase_images)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fourier_mix: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(
                f"fourier_mix: {name} must have at least 2 dimensions [..., H, W], got {list(t.shape)}"
            )
    if amplitude_images.shape != phase_images.shape:
        raise ValueError(
            f"fourier_mix: shapes must match, got {list(amplitude_images.shape)} (amplitude) "
            f"and {list(phase_images.shape)} (phase)"
        )
    if amplitude_images.dtype != phase_images.dtype:
        raise TypeError(
            f"fourier_mix: dtypes must match, got {amplitude_images.dtype} and {phase_images.dtype}"
        )
    dtype = amplitude_images.dtype
    uint8 = dtype == torch.uint8
    if not uint8 and not dtype.is_floating_point:
        raise TypeError(f"fourier_mix: expected uint8 images or floats in [-0.5, 0.5), got {dtype}")
    for name, t in (("amplitude_images", amplitude_images), ("phase_images", phase_images)):
        if not uint8 and not bool(torch.isfinite(t).all()):
            raise ValueError(f"fourier_mix: {name} contain NaN or Inf")
        check_preprocessed(t, f"fourier_mix: {name}")  # raw 0..255 or 0..1 floats

    def pixels(t):
        t = t.detach().to(torch.float64)
        return t if uint8 else (t + 0.5) * PIXEL_SCALE

    amp = torch.fft.fft2(pixels(amplitude_images)).abs()
    phase = torch.angle(torch.fft.fft2(pixels(phase_images)))
    mixed = torch.fft.ifft2(torch.polar(amp, phase)).real
    if uint8:
        return mixed.round().clamp(0, 255).to(torch.uint8) if clip else mixed
    mixed = mixed / PIXEL_SCALE - 0.5
    if clip:
        mixed = mixed.clamp(-0.5, 0.5 - 1.0 / PIXEL_SCALE)
    return mixed.to(dtype)


def plot_fourier_mix(amplitude, phase, mixed, path: str, n: int = 4) -> None:
    """Rows of (amplitude image, phase image, result), as Schirrmeister et al. 2020 Fig. S1."""
    a, p, m = (_numpy(t) for t in (amplitude, phase, mixed))
    n = min(n, len(a))
    if n < 1:
        raise ValueError("plot_fourier_mix: no images")
    fig = new_figure((6.0, 2.0 * n))
    for i in range(n):
        for j, (img, title) in enumerate(((a, "amplitude"), (p, "phase"), (m, "result"))):
            ax = fig.add_subplot(n, 3, 3 * i + j + 1)
            im = img[i] if img.ndim == 4 else img[i][None]
            ax.imshow(_display(im.astype(np.float64), img.dtype == np.uint8), cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


# -- 3. correlations (Schirrmeister et al. 2020 Fig. 1C, Fig. 3) ------------------------------------------------
def _vector(values, name: str) -> np.ndarray:
    arr = _numpy(values).astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(
            f"{name} contains {int(np.isnan(arr).sum())} NaN value(s); replace non-finite "
            "log-likelihoods by a floor (-3e6, Schirrmeister et al. 2020 S4.5) first"
        )
    return arr


def spearman(a, b) -> float:
    """Spearman rank correlation (scipy.stats.spearmanr) of two 1-D score vectors.

    +-inf values are allowed (they rank at the ends); NaN raises ValueError.  A constant
    input has no defined rank correlation: the result is NaN (no warning)."""
    from scipy.stats import spearmanr

    a, b = _vector(a, "spearman: a"), _vector(b, "spearman: b")
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman: a and b need the same length >= 2, got {a.size} and {b.size}")
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b)[0])


def correlation_matrix(scores: Mapping) -> tuple[list[str], np.ndarray]:
    """(names, K x K Spearman matrix) of scores NAME -> 1-D array, all over the same samples
    (e.g. log-likelihoods of several models on one set of images, Schirrmeister et al. 2020 Fig. 1C)."""
    names = list(scores)
    if not names:
        raise ValueError("correlation_matrix: no scores given")
    vectors = [_vector(scores[n], f"correlation_matrix: {n!r}") for n in names]
    if len({v.size for v in vectors}) != 1:
        raise ValueError(
            f"correlation_matrix: all scores need the same length, got "
            f"{ {n: v.size for n, v in zip(names, vectors)} }"
        )
    k = len(names)
    matrix = np.ones((k, k))
    for i in range(k):
        matrix[i, i] = spearman(vectors[i], vectors[i])
        for j in range(i + 1, k):
            matrix[i, j] = matrix[j, i] = spearman(vectors[i], vectors[j])
    return names, matrix


def _per_scale(values, name: str) -> np.ndarray:
    arr = _numpy(values).astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"per_scale_correlations: {name} must be [N, L] (out.per_scale), got shape {arr.shape}"
        )
    return arr


def per_scale_correlations(per_scale_a, per_scale_b) -> list[float]:
    """Spearman correlation of each scale's contribution c_i(x) (Schirrmeister et al. 2020 Eq. 3) between two
    models on the same images: a list of L floats.  ``likelihood_correlations`` adds the
    total log-likelihood and the summed earlier scales (Schirrmeister et al. 2020 Fig. 3C/D)."""
    a, b = _per_scale(per_scale_a, "per_scale_a"), _per_scale(per_scale_b, "per_scale_b")
    if a.shape != b.shape:
        raise ValueError(f"per_scale_correlations: shapes must match, got {a.shape} and {b.shape}")
    return [spearman(a[:, i], b[:, i]) for i in range(a.shape[1])]


def likelihood_correlations(per_scale_a, per_scale_b) -> dict:
    """{"per_scale": [L floats], "early": Spearman of c_1 + ... + c_{L-1} (None if L == 1),
    "total": Spearman of the full log-likelihoods} (Schirrmeister et al. 2020 Fig. 3C/D, Sec. 3.2)."""
    a, b = _per_scale(per_scale_a, "per_scale_a"), _per_scale(per_scale_b, "per_scale_b")
    per = per_scale_correlations(a, b)
    early = spearman(a[:, :-1].sum(1), b[:, :-1].sum(1)) if a.shape[1] > 1 else None
    return {"per_scale": per, "early": early, "total": spearman(a.sum(1), b.sum(1))}


def plot_correlation_matrix(names: Sequence[str], matrix, path: str, title: str | None = None) -> None:
    """Heat map of a Spearman matrix with the values written in the cells (Schirrmeister et al. 2020 Fig. 1C)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    k = len(names)
    if matrix.shape != (k, k):
        raise ValueError(f"plot_correlation_matrix: matrix must be {k}x{k} for {k} names, got {matrix.shape}")
    size = 1.5 + 0.8 * k
    fig = new_figure((size + 1.0, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    for i in range(k):
        for j in range(k):
            v = matrix[i, j]
            ax.text(
                j,
                i,
                "nan" if np.isnan(v) else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if abs(v) > 0.6 else "black",
            )
    fig.colorbar(im, ax=ax, label="Spearman correlation")
    ax.set_title(title or "Spearman correlations")
    fig.tight_layout()
    save_figure(fig, path)


def plot_per_scale_correlations(
    per_scale_a, per_scale_b, path: str, labels=("model A", "model B"), title: str | None = None, groups=None
) -> None:
    """Scatter plots, one per scale plus the total log-likelihood, of two models'
    contributions c_i(x) on the same images, each titled with its Spearman correlation
    (Schirrmeister et al. 2020 Fig. 3C/D).  ``groups`` optionally labels each image (e.g. dataset names) for
    colouring."""
    a, b = _per_scale(per_scale_a, "per_scale_a"), _per_scale(per_scale_b, "per_scale_b")
    if a.shape != b.shape:
        raise ValueError(f"plot_per_scale_correlations: shapes must match, got {a.shape} and {b.shape}")
    per = per_scale_correlations(a, b)
    panels = [(a[:, i], b[:, i], f"c_{i + 1}: rho = {per[i]:.2f}") for i in range(a.shape[1])]
    panels.append((a.sum(1), b.sum(1), f"log p(x): rho = {spearman(a.sum(1), b.sum(1)):.2f}"))
    groups = np.asarray(groups) if groups is not None else np.zeros(len(a), dtype=int)
    fig = new_figure((3.4 * len(panels), 3.4))
    for k, (x, y, t) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for g in dict.fromkeys(groups.tolist()):
            sel = groups == g
            ax.scatter(x[sel], y[sel], s=5, alpha=0.6, label=str(g) if groups.dtype.kind in "US" else None)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel(labels[0], fontsize=8)
        ax.set_ylabel(labels[1], fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 0 and groups.dtype.kind in "US":
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_scatter(
    xs: Mapping, ys: Mapping, path: str, xlabel: str = "x", ylabel: str = "y", title: str | None = None
) -> None:
    """Scatter of paired scores per dataset (e.g. pixel-difference pseudo-likelihood vs Glow
    log-likelihood, Schirrmeister et al. 2020 Fig. 1B); the title gives the pooled Spearman correlation."""
    if list(xs) != list(ys) or not xs:
        raise ValueError("plot_scatter: xs and ys need the same non-empty dataset names")
    fig = new_figure((5.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name in xs:
        x = _vector(xs[name], f"plot_scatter: x[{name!r}]")
        y = _vector(ys[name], f"plot_scatter: y[{name!r}]")
        if x.shape != y.shape:
            raise ValueError(f"plot_scatter: {name!r}: x and y lengths differ ({x.size} vs {y.size})")
        ax.scatter(x, y, s=5, alpha=0.6, label=f"{name} (rho = {spearman(x, y):.2f})")
    rho = spearman(
        np.concatenate([_numpy(xs[n]).ravel() for n in xs]),
        np.concatenate([_numpy(ys[n]).ravel() for n in ys]),
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title + ': ' if title else ''}Spearman rho = {rho:.2f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# -- 4. latents and coupling layers (Kirichenko et al. 2020 Sec. 5-6, App. E) --------------------------------
def unsqueeze_latents(latents: Sequence[torch.Tensor], input_shape: Sequence[int]) -> torch.Tensor | None:
    """The latents z_1..z_L joined into one input-shaped tensor by reverting the squeezes
    without running any flow layer (Kirichenko et al. 2020 App. E, "unsqueeze(z)"), in Glow's layout:
    h = z_L; for each earlier z_i, unsqueeze h to z_i's size and concatenate [h, z_i] along
    channels; finally unsqueeze to the input size.  Returns None when the latents do not fit
    that layout (e.g. vector flows)."""
    squeeze = invflow.Squeeze()
    target = tuple(input_shape)

    def up_to(h, size):
        while h.dim() == 4 and h.shape[-1] < size:
            if h.shape[1] % 4:
                return None
            h, _ = squeeze.inverse(h)
        return h

    h = latents[-1]
    if h.dim() != 4 or len(target) != 3:
        return None
    for z in reversed(latents[:-1]):
        if z.dim() != 4:
            return None
        h = up_to(h, z.shape[-1])
        if h is None or h.shape[2:] != z.shape[2:]:
            return None
        h = torch.cat([h, z], dim=1)
    h = up_to(h, target[-1])
    return h if h is not None and tuple(h.shape[1:]) == target else None


@torch.no_grad()
def plot_latents(model, x: torch.Tensor, path: str, n: int = 4, channel: int | None = None):
    """For n images: the input, all latents unsqueezed to the input's layout (when the model
    has Glow's multi-scale layout, see ``unsqueeze_latents``) and each scale's z_i (channel
    ``channel``, or the channel mean when None), each panel normalised symmetrically to its
    99th percentile of |z| (Kirichenko et al. 2020 Sec. 5, Fig. 2 / Fig. 10).  The model runs in eval mode
    (its mode is restored).  ``x``: preprocessed floats (uint8 images are preprocessed
    without noise).  Returns the model output for the n images."""
    x = _model_input(model, x)[:n]
    with _EvalMode(model):
        out = model(x)
    full = unsqueeze_latents(out.latents, x.shape[1:]) if x.dim() == 4 else None
    columns = [("x", None)]
    if full is not None:
        columns.append(("z (unsqueezed)", full))
    columns += [(f"z_{i + 1} {tuple(z.shape[1:])}", z) for i, z in enumerate(out.latents)]
    n = x.shape[0]
    fig = new_figure((2.0 * len(columns), 2.0 * n + 0.4))
    xs = x.detach().cpu().double().numpy()
    for r in range(n):
        for c, (title, t) in enumerate(columns):
            ax = fig.add_subplot(n, len(columns), r * len(columns) + c + 1)
            if t is None:
                img = xs[r] if xs.ndim == 4 else xs[r].reshape(1, 1, -1)
                ax.imshow(_display(img, False), cmap="gray", vmin=0, vmax=1)
            else:
                p = _panel(t[r].detach().cpu().double().numpy(), channel)
                lim = _symmetric_limit(p)
                ax.imshow(p, cmap="gray", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return out


@torch.no_grad()
def coupling_st(model, x: torch.Tensor) -> list[dict]:
    """Scale s and shift t of every ``invflow.AffineCoupling`` during one forward pass
    (Kirichenko et al. 2020 Sec. 6: y_change = s * x_change + t), captured with forward hooks on each
    coupling's st-net; invflow is not modified and the hooks are removed afterwards.

    Returns one dict per coupling call, in execution order: {"name": module name,
    "scale": the scale function, "x": the transformed part of the coupling input,
    "s": s(raw), "t": t}, tensors [B, ...] shaped like "x" (channel masks: the transformed
    channels; spatial masks: all channels, with s = 1 and t = 0 on entries that are not
    transformed).  ``AdditiveCoupling`` gives s = 1.  Runs in eval mode (restored after);
    uint8 images are preprocessed without noise.
    """
    x = _model_input(model, x)
    records, handles, pending = [], [], {}

    def pre_hook(layer, args):
        pending[id(layer)] = args[0]

    def make_net_hook(name, layer):
        def hook(net, args, h):
            inp = pending.pop(id(layer), None)
            if inp is None:  # st-net called outside the coupling's forward
                return
            additive = layer.params_per_entry == 1
            if layer.split is not None:
                x_change = inp[:, layer.split[1]]
                mask = None
            else:
                x_change = inp
                mask = layer.mask.transformed(inp.shape[1:], device=inp.device).to(inp.dtype)
            if additive:
                raw, t = None, h
                s = torch.ones_like(t)
            else:
                raw, t = h[:, : h.shape[1] // 2], h[:, h.shape[1] // 2 :]
                s = scale_terms(raw, layer.scale, layer.clamp)[0]
            if mask is not None:
                s = torch.where(mask.bool(), s, torch.ones_like(s))
                t = t * mask
            records.append(
                {
                    "name": name,
                    "scale": "additive" if additive else layer.scale,
                    "x": x_change.detach().clone(),
                    "s": s.detach().clone(),
                    "t": t.detach().clone(),
                }
            )

        return hook

    for name, module in model.named_modules():
        if isinstance(module, invflow.AffineCoupling):
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.net.register_forward_hook(make_net_hook(name or "coupling", module)))
    try:
        with _EvalMode(model):
            model(x)
    finally:
        for hd in handles:
            hd.remove()
    return records


def plot_coupling_st(
    records: Sequence[dict], path: str, n: int = 4, image: int = 0, channel: int | None = 0
) -> None:
    """For ``n`` coupling layers (evenly spaced over ``records``, first and last included)
    and one image: the transformed input x_change, the scale s and the negated shift -t
    (Kirichenko et al. 2020 Fig. 3 / Fig. 11: -t approximating x_change is what earns high likelihood),
    channel ``channel`` (None: channel mean), at the layer's own (squeezed) resolution.
    x_change and -t share a grey scale; s has its own colour bar."""
    if not records:
        raise ValueError("plot_coupling_st: no coupling records (does the model have AffineCoupling layers?)")
    n = max(1, min(n, len(records)))
    picks = sorted({round(i * (len(records) - 1) / max(n - 1, 1)) for i in range(n)})
    fig = new_figure((7.5, 2.3 * len(picks)))
    for r, k in enumerate(picks):
        rec = records[k]
        xc = _panel(rec["x"][image].cpu().double().numpy(), channel)
        s = _panel(rec["s"][image].cpu().double().numpy(), channel)
        neg_t = _panel(-rec["t"][image].cpu().double().numpy(), channel)
        lo, hi = float(min(xc.min(), neg_t.min())), float(max(xc.max(), neg_t.max()))
        for c, (p, title, kw) in enumerate(
            (
                (xc, "x_change", dict(cmap="gray", vmin=lo, vmax=hi)),
                (s, f"s ({rec['scale']})", dict(cmap="viridis")),
                (neg_t, "-t", dict(cmap="gray", vmin=lo, vmax=hi)),
            )
        ):
            ax = fig.add_subplot(len(picks), 3, 3 * r + c + 1)
            im = ax.imshow(p, interpolation="nearest", **kw)
            ax.set_axis_off()
            ax.set_title(f"{rec['name']}: {title}" if c == 0 else title, fontsize=7)
            if c == 1:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    save_figure(fig, path)
