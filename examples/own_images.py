"""Detectors for your own images: a folder of image files in, a fitted detector bundle and
per-file scores out, from Python (the `detectors fit` / `detectors score` commands do the
same from the shell).

    python examples/own_images.py [--work runs/own-images] [--steps 300]

The example writes its own folders first (Fashion-MNIST garments as PNG files for training
and testing, MNIST digits as the odd ones out); point ``--train`` / ``--new`` at your own.
"""

from __future__ import annotations

import argparse
import os

from PIL import Image

import detectors
from detectors.cli import main as detectors_cli


def write_pngs(images, folder: str) -> str:
    """uint8 [N, 1, H, W] -> folder/00000.png ... (grey PNG files)."""
    os.makedirs(folder, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im[0].numpy()).save(os.path.join(folder, f"{i:05d}.png"))
    return folder


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/own-images", help="folder for the images, bundle and report")
    p.add_argument("--train", help="your folder of in-distribution images (default: writes Fashion-MNIST)")
    p.add_argument("--new", help="your folder of images to score (default: writes Fashion-MNIST test)")
    p.add_argument("--odd", help="a folder of out-of-distribution images (default: writes MNIST)")
    p.add_argument("--steps", type=int, default=300, help="Glow training steps")
    p.add_argument(
        "--detectors", nargs="+", default=["png"], help="catalogue names (see `detectors fit --help`)"
    )
    args = p.parse_args(argv)
    w = args.work
    train = args.train or write_pngs(detectors.data.load_fashion_mnist("train")[0][:400], f"{w}/train")
    new = args.new or write_pngs(detectors.data.load_fashion_mnist("test")[0][:100], f"{w}/new")
    odd = args.odd or write_pngs(detectors.data.load_mnist_5k()[0][:100], f"{w}/odd")

    fit = ["fit", "--data", train, "--out", f"{w}/bundle", "--steps", str(args.steps), "--no-progress"]
    if detectors_cli([*fit, "--detectors", *args.detectors]) != 0:
        raise SystemExit("fit failed")
    bundle = detectors.load(f"{w}/bundle")
    scores = bundle.score(new)  # {detector name: float64 [N]}, higher = more anomalous
    flags = bundle.predict(odd)  # {detector name: bool [N]}
    for name in scores:
        print(
            f"{name}: mean score {float(scores[name].mean()):.3f} on new images; {100 * float(flags[name].float().mean()):.0f}% of odd ones flagged"
        )
    # the same as `detectors score BUNDLE --data NEW --ood ODD --out REPORT`: scores.csv + report.md
    detectors_cli(["score", f"{w}/bundle", "--data", new, "--ood", odd, "--out", f"{w}/report"])
    print(f"report: {w}/report/report.md")
    return {name: flags[name] for name in flags}


if __name__ == "__main__":
    main()
