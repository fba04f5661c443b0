"""An RGB in-distribution example, end to end: ``detectors fit`` with its defaults on a folder of
colour PNGs, then every member scored against OOD sets of each kind.

The in-distribution data are 32x32 colour patches of a stained tissue section (scikit-image's
``ihc.png``, immunohistochemistry: brown DAB stain on blue haematoxylin), a kind of image
nobody has a zoo model for and that the general photo models never saw (microscopy is left
out of ``detectors.data.photos``).  Training patches come from the left 75% of the section,
in-distribution test patches from the right 25%.  The OOD sets:

* other images: a retinal fundus photo (``retina.jpg``), a deep-field telescope image
  (``hubble_deep_field.jpg``), the held-out natural test photos (``detectors.data.photos``),
  Fashion-MNIST (grey, replicated to RGB);
* the tissue's own test patches changed as scanners and stains change them: the stain's
  colour channels swapped (RGB -> BGR), colour removed (grey), out of focus (blurred),
  colours inverted;
* uniform noise.

    python -m detectors.experiments.rgb_example [--n 2000] [--out runs/rgb-example]

writes ``OUT/train`` (n PNG patches: the folder a user would pass), fits ``OUT/det`` with
``fit``'s defaults (with the shipped RGB general model ``photos-rgb-glow-broad-32`` these are
``diff-dagger+pca+transforms+diff+png`` and its five members), scores 500 test patches against 500 images of each
set and writes ``OUT/auroc.json`` and ``OUT/table.md`` (AUROC %, worst case, mean).
Re-running resumes the fit.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

#: (scikit-image data file, what it is) of the images this example reads
IMAGES = {
    "tissue": "ihc.png",
    "retina": "retina.jpg",
    "telescope": "hubble_deep_field.jpg",
}

#: OOD set -> kind
KINDS = {
    "retina": "other images",
    "telescope": "other images",
    "natural photos": "other images",
    "Fashion-MNIST": "other images",
    "stain channels swapped": "tissue changed",
    "tissue in grey": "tissue changed",
    "tissue out of focus": "tissue changed",
    "tissue colours inverted": "tissue changed",
    "uniform noise": "synthetic",
}

SIZE = 32


def read_image(key: str) -> np.ndarray:
    """The scikit-image data file of :data:`IMAGES` ``key`` as uint8 RGB [H, W, 3].
    ``detectors.data.DatasetUnavailable`` names the package when it is missing."""
    from PIL import Image

    from ..data.named import _photo_path

    try:
        path = _photo_path("skimage", IMAGES[key])
    except KeyError:
        raise ValueError(f"unknown image {key!r}; choose from {', '.join(IMAGES)}") from None
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def patches(image: np.ndarray, n: int, split: str = "all", seed: int = 0, size: int = SIZE) -> torch.Tensor:
    """``n`` patches uint8 [n, 3, size, size] of ``image`` [H, W, 3]: square windows of side
    log-uniform in [size, 3 size] (capped by the region), box-filtered to ``size`` with Pillow,
    flipped horizontally with probability 1/2.  ``split``: "train" = the left 75% of the width,
    "test" = the right 25%, "all" = the whole image.  Deterministic in its arguments."""
    from PIL import Image

    if split not in ("train", "test", "all"):
        raise ValueError(f"split={split!r}, expected 'train', 'test' or 'all'")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image: expected a uint8 RGB array [H, W, 3], got {what}")
    if int(n) != n or n < 0:
        raise ValueError(f"n={n}, expected a non-negative integer")
    h, w = image.shape[:2]
    cut = int(round(0.75 * w))
    x0, width = {"train": (0, cut), "test": (cut, w - cut), "all": (0, w)}[split]
    hi = min(h, width, 3 * size)
    if hi < size:
        raise ValueError(f"the {split} region ({width}x{h}) is smaller than one {size}-pixel patch")
    rng = np.random.default_rng([seed, {"train": 0, "test": 1, "all": 2}[split]])
    pil = Image.fromarray(image)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for k in range(n):
        s = int(round(math.exp(rng.uniform(math.log(size), math.log(hi)))))
        x = x0 + int(rng.integers(0, width - s + 1))
        y = int(rng.integers(0, h - s + 1))
        p = np.asarray(pil.resize((size, size), Image.BOX, box=(x, y, x + s, y + s)))
        out[k] = p[:, ::-1] if rng.random() < 0.5 else p
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :] / 256).view(1, 1, 5, 5).expand(3, 1, 5, 5)
    y = F.conv2d(F.pad(x.float(), (2, 2, 2, 2), mode="replicate"), k, groups=3)
    return y.round().clamp(0, 255).to(torch.uint8)


def ood_sets(n: int = 500, seed: int = 0) -> dict[str, torch.Tensor]:
    """{set: uint8 [n, 3, 32, 32]} of :data:`KINDS`; the tissue changes are made of test
    patches other than the ones scored as in-distribution."""
    from ..data import load_fashion_mnist
    from ..data.photos import photo_patches

    base = patches(read_image("tissue"), n, "test", seed + 1)
    grey = (base.float() * torch.tensor([0.2989, 0.5870, 0.1140]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    fm = load_fashion_mnist("test")[0]
    fm = fm[torch.randperm(len(fm), generator=torch.Generator().manual_seed(seed))[:n]]
    fm = F.interpolate(fm.float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed + 2)
    return {
        "retina": patches(read_image("retina"), n, "all", seed),
        "telescope": patches(read_image("telescope"), n, "all", seed),
        "natural photos": photo_patches(n, SIZE, "test", seed, channels=3),
        "Fashion-MNIST": fm.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous(),
        "stain channels swapped": base.flip(1).contiguous(),
        "tissue in grey": grey.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous(),
        "tissue out of focus": _blur(base),
        "tissue colours inverted": 255 - base,
        "uniform noise": torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8),
    }


def write_pngs(images: torch.Tensor, folder: str) -> int:
    """Writes uint8 [N, 3, H, W] as ``folder/00000.png``, ...; files already there are kept
    (a re-run resumes) and numbered PNGs past N (from a run with more images) are removed, so
    the folder holds exactly these N.  Returns N."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext == ".png" and stem.isdigit() and int(stem) >= len(images):
            os.remove(os.path.join(folder, name))
    for i, x in enumerate(images):
        path = os.path.join(folder, f"{i:05d}.png")
        if not os.path.exists(path):
            Image.fromarray(x.permute(1, 2, 0).numpy()).save(path + ".tmp", format="PNG")
            os.replace(path + ".tmp", path)
    return len(images)


def evaluate(bundle, n: int = 500, seed: int = 0, progress: bool = True) -> dict:
    """{detector: {"per_set", "worst", "worst_set", "mean"}}: ``n`` tissue test patches
    against ``n`` images of each of :func:`ood_sets`, scored by ``bundle``."""
    from .ood_suite import score_bundle

    return score_bundle(bundle, patches(read_image("tissue"), n, "test", seed), ood_sets(n, seed), progress)


def markdown(results: dict) -> str:
    from .ood_suite import kinds_table

    return kinds_table(results, KINDS)


def run(out: str, n: int = 2000, n_eval: int = 500, config=None, progress: bool = True, say=print) -> dict:
    """Writes ``out/train`` (``n`` tissue training patches as PNGs), fits ``out/det`` with
    ``config`` (a ``FitConfig`` or mapping; default: fit's defaults), evaluates it
    (:func:`evaluate`) and writes ``out/auroc.json`` and ``out/table.md``.  Returns the results.
    ``progress`` switches the fit's and the evaluation's progress bars (it overrides
    ``config``'s ``progress``)."""
    import dataclasses

    from invflow.validation import check_number

    from ..bundle.fit import as_config, fit_bundle
    from .ood_suite import save

    check_number(n, "n", "rgb_example.run", low=1, integer=True)  # before anything is written
    check_number(n_eval, "n_eval", "rgb_example.run", low=1, integer=True)
    cfg = dataclasses.replace(as_config(config), progress=progress)
    written = write_pngs(patches(read_image("tissue"), n, "train"), os.path.join(out, "train"))
    say(f"wrote {written} tissue patches")
    bundle = fit_bundle(os.path.join(out, "train"), os.path.join(out, "det"), cfg, say=say)
    results = evaluate(bundle, n_eval, progress=progress)
    caption = (
        f"`fit` on {n} tissue patches (steps {cfg.steps}, Diff-dagger steps {cfg.dagger_steps}); "
        f"{n_eval} test patches against {n_eval} images of each set; AUROC %\n\n"
    )
    save(results, caption + markdown(results), out)
    return results


def main(argv=None) -> int:
    from ..cli.common import integer, out_dir, script_parser

    p = script_parser("detectors.experiments.rgb_example", __doc__)
    p.add_argument("--n", type=integer(1, 100000), default=2000, help="training patches")
    p.add_argument(
        "--n-eval", type=integer(1, 10000), default=500, help="test patches and images per OOD set"
    )
    p.add_argument(
        "--out", type=out_dir, default="runs/rgb-example", help="patches, bundle, auroc.json, table.md"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    run(args.out, args.n, args.n_eval, progress=not args.no_progress)
    with open(os.path.join(args.out, "table.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":  # user errors (a missing file, a bad value) as one line, exit 2
    from ..cli.common import run_guarded

    raise SystemExit(run_guarded("python -m detectors.experiments.rgb_example", main))
