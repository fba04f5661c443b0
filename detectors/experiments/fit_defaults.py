"""How a bundle fitted with ``detectors fit`` defaults does on OOD data of every kind: the 12
sets of the OOD suite plus 7 kinds nobody tuned on (rotations by 180 and 45 degrees, shifted,
blurred, darkened (gamma 2) and noisy garments, and letters rendered with Pillow's font).

    python -m detectors.experiments.fit_defaults DET [--n 1000] [--out runs/fit-defaults]

scores ``n`` Fashion-MNIST test images (in-distribution; none of them an image the
transformed sets start from or one the bundle calibrated on) and ``n`` images of each
set with the bundle ``DET`` (``detectors.load``, the same scores as ``detectors score``) and
writes ``auroc.json`` and ``table.md`` (AUROC % per detector and set, worst case and mean).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .ood_suite import KINDS, MAX_N, _u8, in_and_base, kinds_table, ood_sets, save, score_bundle, test_order

#: the kinds added to the suite's (none of them is a transformation the detectors train on)
EXTRA_KINDS = {
    "FMNIST rotated 180": "transform",
    "FMNIST rotated 45": "transform",
    "FMNIST shifted 7 px": "transform",
    "FMNIST blurred": "transform",
    "FMNIST gamma 2": "transform",
    "FMNIST Gaussian noise": "transform",
    "rendered letters": "dataset",
}


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    t = torch.tensor(np.deg2rad(degrees))
    theta = torch.tensor([[torch.cos(t), -torch.sin(t), 0.0], [torch.sin(t), torch.cos(t), 0.0]])
    grid = F.affine_grid(theta.expand(len(x), 2, 3).float(), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def _letters(n: int, seed: int) -> torch.Tensor:
    """``n`` 28x28 grey images of one random letter or digit each, drawn in white on black
    with Pillow's default font at a random size, position and stroke."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789&?%#@"
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        size = int(rng.integers(16, 26))
        font = ImageFont.load_default(size=size)
        im = Image.new("L", (28, 28))
        d = ImageDraw.Draw(im)
        c = chars[int(rng.integers(len(chars)))]
        d.text(
            (int(rng.integers(2, 10)), int(rng.integers(-2, 6))),
            c,
            fill=int(rng.integers(180, 256)),
            font=font,
            stroke_width=int(rng.integers(0, 2)),
            stroke_fill=255,
        )
        out[i] = np.asarray(im)
    return torch.from_numpy(out).unsqueeze(1)


def extra_sets(n: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """{name: uint8 [n, 1, 28, 28]} of :data:`EXTRA_KINDS`, transformations of the suite's
    base images (Fashion-MNIST test images not among the scored ones)."""
    _, base = in_and_base(n, seed)
    b = base.float()
    g = torch.Generator().manual_seed(seed + 200)
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 256).view(1, 1, 5, 5)
    return {
        "FMNIST rotated 180": base.rot90(2, (-2, -1)).contiguous(),
        "FMNIST rotated 45": _u8(_rotate(b, 45)),
        "FMNIST shifted 7 px": F.pad(base, (7, 0, 7, 0))[..., :28, :28].contiguous(),
        "FMNIST blurred": _u8(F.conv2d(F.pad(b, (2, 2, 2, 2), mode="replicate"), kernel)),
        "FMNIST gamma 2": _u8(255 * (b / 255) ** 2),
        "FMNIST Gaussian noise": _u8(b + 40 * torch.randn(b.shape, generator=g)),
        "rendered letters": _letters(n, seed + 300),
    }


def evaluate(bundle, n: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """{detector: {"per_set": {set: AUROC %}, "worst": ..., "worst_set": ..., "mean": ...}} of
    the bundle's detectors: ``n`` Fashion-MNIST test images (:func:`scored_images`: neither
    images the sets transform nor the bundle's calibration images) against ``n`` images of
    each set of the suite and of :func:`extra_sets`."""
    return score_bundle(
        bundle, scored_images(n, seed), {**ood_sets(n, seed), **extra_sets(n, seed)}, progress
    )


def scored_images(n: int, seed: int = 0, calibration: int = 2000) -> torch.Tensor:
    """uint8 [n, 1, 28, 28]: the first ``n`` Fashion-MNIST test images that are neither base
    images of the transformed sets (``ood_suite.in_and_base``) nor among the last
    ``calibration`` test images, on which ``fit --data fashion-mnist`` calibrates its bundle.
    ValueError when fewer than ``n`` remain."""
    from ..data import load_fashion_mnist

    test = load_fashion_mnist("test")[0]
    taken = torch.zeros(len(test), dtype=torch.bool)
    taken[test_order(seed)[n : 2 * n]] = True
    taken[len(test) - calibration :] = True
    free = (~taken).nonzero().flatten()
    if len(free) < n:
        raise ValueError(
            f"n={n}: only {len(free)} test images are neither OOD base images nor calibration images"
        )
    return test[free[:n]]


def markdown(results: dict) -> str:
    return kinds_table(results, {**KINDS, **EXTRA_KINDS})


def main(argv=None) -> int:
    from ..cli.common import integer, out_dir, script_parser

    p = script_parser("detectors.experiments.fit_defaults", __doc__)
    p.add_argument("bundle", help="a bundle directory written by python -m detectors fit")
    p.add_argument(
        "--n", type=integer(1, MAX_N), default=1000, help="images per set (sklearn digits has 1797)"
    )
    p.add_argument("--out", type=out_dir, default="runs/fit-defaults", help="auroc.json and table.md")
    args = p.parse_args(argv)
    from .. import load

    results = evaluate(load(args.bundle), args.n)
    print(save(results, markdown(results), args.out))
    return 0


if __name__ == "__main__":  # user errors (a missing file, a bad value) as one line, exit 2
    from ..cli.common import run_guarded

    raise SystemExit(run_guarded("python -m detectors.experiments.fit_defaults", main))
