"""Why the default detectors miss darkened garments (Fashion-MNIST with gamma 2), measured two
ways with one small CNN (4 convolutions, 65k parameters) on raw pixels:

* **supervised**: trained on Fashion-MNIST training images (label 0) against gamma-2 copies of
  *other* training images (label 1); AUROC % of its logit on the test split (clean test images
  against gamma-2 copies of other test images).  With ``dither``, gamma is applied without
  rounding and uniform noise in [-0.5, 0.5) is added to both classes, so that the gaps gamma
  leaves in the uint8 histogram carry no signal.  This is an upper bound that sees the OOD
  kind; no detector may.
* **self-supervised**: trained to tell Fashion-MNIST training images (and their horizontal
  flips) from transformed copies: photometric classes (gamma 0.5 and gamma 1.5 unless chosen
  otherwise) plus the vertical flip, rotations and inversion of
  :class:`detectors.scores.TransformationClassifier` (Golan & El-Yaniv 2018).  Score:
  -log p(identity); AUROC % on every set of ``fit_defaults`` (the OOD suite and its 7 added
  kinds).  Gamma 2 is never a training class.

    python -m detectors.experiments.photometric [--n-train 20000] [--epochs 8] [--out runs/photometric]

writes ``auroc.json`` and ``table.md``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from invflow.validation import check_number

#: photometric transformations of uint8-valued float images [N, 1, H, W] (no rounding)
PHOTOMETRIC = {
    "gamma 0.5": lambda x: 255 * (x / 255) ** 0.5,
    "gamma 1.5": lambda x: 255 * (x / 255) ** 1.5,
    "gamma 2": lambda x: 255 * (x / 255) ** 2,
    "scaled 0.6": lambda x: 0.6 * x,
    "inversion": lambda x: 255 - x,
}


def _transform(name: str, x: torch.Tensor) -> torch.Tensor:
    from ..scores.transformations import TRANSFORMS

    geometric = {k: t for k, t in TRANSFORMS if k != "inversion"}  # theirs maps floats to -x
    if name in geometric:
        return geometric[name](x)
    if name in PHOTOMETRIC:
        return PHOTOMETRIC[name](x)
    raise ValueError(f"unknown transformation {name!r}; choose from {', '.join([*geometric, *PHOTOMETRIC])}")


def cnn(n_out: int) -> nn.Module:
    """The probe's classifier: 4 3x3 convolutions (32, 32, 64, 64 channels), two max-pools,
    global average pooling and a linear layer with ``n_out`` outputs."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, n_out),
    )


def _train(n_out: int, batch, steps: int, seed: int, desc: str, progress: bool) -> nn.Module:
    """A :func:`cnn` with ``n_out`` outputs (its initial weights seeded by ``seed``) trained by
    Adam (lr 1e-3) on the cross-entropy of ``batch(generator) -> (x, labels)`` for ``steps``."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    net = cnn(n_out)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    net.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        x, y = batch(g)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(x[i : i + 1000] / 255 - 0.5) for i in range(0, len(x), 1000)])


def _auroc(s_in: torch.Tensor, s_out: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    return 100 * float(roc_auc_score(y, np.r_[s_in.numpy(), s_out.numpy()]))


def supervised(
    kind: str = "gamma 2",
    n_train: int = 20000,
    epochs: int = 8,
    dither: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> float:
    """AUROC % of the supervised CNN separating test images from ``kind``-transformed test
    images (each class half of the 10000; 8 epochs over 2 x ``n_train`` training images)."""
    from ..data import load_fashion_mnist

    check_number(n_train, "n_train", "photometric.supervised", low=1, high=30000, integer=True)
    check_number(epochs, "epochs", "photometric.supervised", low=1, integer=True)
    _transform(kind, torch.zeros(1, 1, 2, 2))
    g = torch.Generator().manual_seed(seed)
    train = load_fashion_mnist("train")[0].float()
    test = load_fashion_mnist("test")[0].float()

    def make(x, idx_clean, idx_ood, gen):
        ood = _transform(kind, x[idx_ood])
        ood = ood if dither else ood.round()
        both = torch.cat([x[idx_clean], ood])
        if dither:
            both = both + torch.rand(both.shape, generator=gen) - 0.5
        labels = torch.cat([torch.zeros(len(idx_clean)), torch.ones(len(idx_ood))]).long()
        return both, labels

    p = torch.randperm(len(train), generator=g)
    x, y = make(train, p[:n_train], p[n_train : 2 * n_train], g)
    q = torch.randperm(len(test), generator=g)
    xt, yt = make(test, q[: len(test) // 2], q[len(test) // 2 :], g)

    def batch(gen):
        j = torch.randint(0, len(x), (128,), generator=gen)
        return x[j] / 255 - 0.5, y[j]

    net = _train(2, batch, epochs * len(x) // 128, seed, f"supervised {kind}", progress)
    logit = _logits(net, xt)
    score = logit[:, 1] - logit[:, 0]
    return _auroc(score[yt == 0], score[yt == 1])


def self_supervised(
    classes: tuple[str, ...] = (
        "gamma 0.5",
        "gamma 1.5",
        "vertical flip",
        "rotation 90",
        "rotation 270",
        "inversion",
    ),
    n_fit: int = 10000,
    epochs: int = 3,
    n: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """{set: AUROC %} of -log p(identity) of the CNN trained on ``n_fit`` training images and
    their ``classes`` copies (``epochs`` passes over the n_fit x (classes + 1) examples), on
    ``n`` Fashion-MNIST test images against each set of ``fit_defaults``."""
    from ..data import load_fashion_mnist
    from .fit_defaults import extra_sets
    from .ood_suite import in_and_base, ood_sets

    check_number(n_fit, "n_fit", "photometric.self_supervised", low=1, high=60000, integer=True)
    check_number(epochs, "epochs", "photometric.self_supervised", low=1, integer=True)
    for c in classes:
        _transform(c, torch.zeros(1, 1, 2, 2))
    g = torch.Generator().manual_seed(seed)
    train = load_fashion_mnist("train")[0].float()
    base = train[torch.randperm(len(train), generator=g)[:n_fit]]

    def batch(gen):
        x = base[torch.randint(0, len(base), (128,), generator=gen)]
        x = torch.where(torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5, x, x.flip(-1))
        k = torch.randint(0, len(classes) + 1, (len(x),), generator=gen)
        out = x.clone()
        for c, name in enumerate(classes, 1):
            m = k == c
            if m.any():
                out[m] = _transform(name, x[m]).round()
        return out / 255 - 0.5, k

    steps = epochs * n_fit * (len(classes) + 1) // 128
    net = _train(len(classes) + 1, batch, steps, seed, "self-supervised", progress)

    def score(x):
        return -F.log_softmax(_logits(net, x.float()), 1)[:, 0]

    s_in = score(in_and_base(n, seed)[0])
    sets = {**ood_sets(n, seed), **extra_sets(n, seed)}
    return {name: _auroc(s_in, score(x)) for name, x in sets.items()}


def main(argv=None) -> int:
    from ..cli.common import integer, out_dir, script_parser

    p = script_parser("detectors.experiments.photometric", __doc__)
    p.add_argument(
        "--n-train", type=integer(1, 30000), default=20000, help="images per class of the supervised CNN"
    )
    p.add_argument("--epochs", type=integer(1, 1000), default=8, help="epochs of the supervised CNN")
    p.add_argument("--n-fit", type=integer(1, 60000), default=10000, help="images of the self-supervised CNN")
    p.add_argument("--ss-epochs", type=integer(1, 1000), default=3, help="epochs of the self-supervised CNN")
    p.add_argument("--out", type=out_dir, default="runs/photometric", help="auroc.json and table.md")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    args = p.parse_args(argv)
    progress = not args.no_progress
    from .ood_suite import save, summarise

    sup = {
        "gamma 2, rounded to uint8": supervised(n_train=args.n_train, epochs=args.epochs, progress=progress),
        "gamma 2, dithered": supervised(
            n_train=args.n_train, epochs=args.epochs, dither=True, progress=progress
        ),
    }
    ss = {
        "gamma 0.5, gamma 1.5 + geometric + inversion": self_supervised(
            n_fit=args.n_fit, epochs=args.ss_epochs, progress=progress
        ),
        "gamma 0.5, scaled 0.6 + geometric + inversion": self_supervised(
            ("gamma 0.5", "scaled 0.6", "vertical flip", "rotation 90", "rotation 270", "inversion"),
            n_fit=args.n_fit,
            epochs=args.ss_epochs,
            progress=progress,
        ),
    }
    lines = [
        f"Supervised CNN, {args.n_train} vs {args.n_train} training images, {args.epochs} epochs "
        "(AUROC % on the test split):",
        "",
        "| gamma-2 images | AUROC |",
        "| --- | --- |",
        *(f"| {k} | {v:.1f} |" for k, v in sup.items()),
        "",
        f"Self-supervised CNN ({args.n_fit} training images, {args.ss_epochs} epochs), "
        "-log p(identity) (AUROC %):",
        "",
    ]
    sets = list(next(iter(ss.values())))
    lines += ["| classes | " + " | ".join(sets) + " | worst |", "| --- " * (len(sets) + 2) + "|"]
    for k, per in ss.items():
        r = summarise(per)
        lines.append(
            f"| {k} | "
            + " | ".join(f"{per[s]:.1f}" for s in sets)
            + f" | {r['worst']:.1f} ({r['worst_set']}) |"
        )
    print(save({"supervised": sup, "self_supervised": ss}, "\n".join(lines) + "\n", args.out))
    return 0


if __name__ == "__main__":  # user errors (a missing file, a bad value) as one line, exit 2
    from ..cli.common import run_guarded

    raise SystemExit(run_guarded("python -m detectors.experiments.photometric", main))
