"""``python -m detectors demo --out DIR``: the papers' story on real data, on 2 CPU cores.

Fashion-MNIST (in-distribution) vs MNIST (OOD), as in seeds 000, 003 and 004:

1. trains a general-distribution Glow on grey natural-photo patches (the offline stand-in
   for grey 80 Million Tiny Images, seed 000 S5.1), an in-distribution Glow on Fashion-MNIST,
   an in-distribution Glow finetuned with the outlier loss (seed 000 Eq. 2) and a general
   Glow finetuned with Fashion-MNIST as outliers (Diff-dagger, seed 000 Sec. 5.3);
2. extracts EfficientNet-Lite0 features (ImageNet weights) and fits the feature-space
   baselines and flows of seed 002 (MSE, MSE-ratio, KNN, KDE, PCA, Flow, Flow-ratio and the
   contrastive flow);
3. scores Fashion-MNIST test images vs MNIST digits with every detector, and writes
   ``DIR/report.md``, ``DIR/results.json``, ROC curves, score histograms and analysis plots.

Everything is shrunk to fit about 10 minutes on 2 CPU cores (small Glows, a few hundred
steps, 1000 + 1000 evaluation images); the report says so.  Models are trained through
``invflow.train.Trainer`` with checkpoints under ``DIR/models``: an interrupted demo
resumes where it stopped, and a finished one re-scores without retraining.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import invflow
from invflow.train import Trainer, nll

from . import analysis, objectives
from .datasets import broaden, load_fashion_mnist, load_mnist_5k, natural_patches
from .report import format_table, write_report
from .scores import (KDE, KNN, PCA, ApproximateMass, ContrastiveFlow, InputComplexity, Likelihood,
                     LikelihoodRatio, MSERatio, MSEToMean, ScaleContribution, ScaleRatio, Typicality)


@dataclass
class DemoConfig:
    seed: int = 0
    # Glow on [1, 28, 28]: 2 scales (14x14, 7x7), `flow_steps` steps each, st-net width `hidden`
    flow_steps: int = 4
    hidden: int = 64
    batch_size: int = 64
    lr: float = 5e-3            # seed 000 uses 5e-4 for 250 epochs; a short budget needs more
    warmup: int = 50
    translate: int = 1          # seed 000 S4.1: translations for Fashion-MNIST
    steps_general: int = 600
    steps_in: int = 600
    steps_outlier: int = 300    # finetuning the in-distribution Glow with the outlier loss
    steps_dagger: int = 300     # finetuning the general Glow with Fashion-MNIST as outliers
    lr_finetune: float = 2e-3
    n_general: int = 30000      # natural-photo patches (broadened, see datasets.broaden)
    n_eval: int = 1000          # Fashion-MNIST test images and MNIST digits scored (balanced)
    features: bool = True
    feature_size: int = 96      # EfficientNet input size (224 in ImageNet training; 96 for speed)
    n_feature_train: int = 1000
    feature_dim: int = 64       # PCA projection of the normalised features before the flows
    feature_flow_steps: int = 200
    feature_noise: float = 1e-2
    baselines: bool = True      # PixelCNN++ and classifier detectors (seed 000 Tab. 1/4, seed 004 Tab. 2)
    pcnn_filters: int = 16
    pcnn_steps: int = 100
    clf_width: int = 16
    clf_steps: int = 300


SMOKE = dict(flow_steps=1, hidden=8, batch_size=16, warmup=1, steps_general=2, steps_in=2, steps_outlier=2,
             steps_dagger=2, n_general=128, n_eval=48, feature_size=32, n_feature_train=48, feature_dim=4,
             feature_flow_steps=2, pcnn_filters=4, pcnn_steps=2, clf_width=4, clf_steps=2)


class Memoized(torch.nn.Module):
    """Wraps a model so that repeated evaluations of identical inputs (several detectors
    scoring the same images) run the model once: outputs are cached by the SHA-1 of the
    input's bytes.  Inputs that require grad (approximate mass) bypass the cache."""

    def __init__(self, model: torch.nn.Module, max_entries: int = 64):
        super().__init__()
        self.model, self.max_entries = model, max_entries
        self._cache: dict = {}

    def forward(self, x: torch.Tensor):
        if x.requires_grad or torch.is_grad_enabled():
            return self.model(x)
        key = (x.dtype, tuple(x.shape), hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest())
        if key not in self._cache:
            if len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self.model(x)
        return self._cache[key]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).log_prob


def _glow(cfg: DemoConfig) -> invflow.Glow:
    return invflow.Glow(1, 28, levels=2, steps=cfg.flow_steps, hidden=cfg.hidden)


def _train(name: str, model, data, out: str, cfg: DemoConfig, steps: int, objective=nll, init=None,
           lr: float | None = None, translate: int | None = None):
    """Trains (or resumes, or reloads when finished) ``model`` under ``out/models/name``."""
    if init is not None:
        model.load_state_dict(init.state_dict())
    trainer = Trainer(model, data, out_dir=os.path.join(out, "models", name), objective=objective,
                      steps=steps, batch_size=cfg.batch_size, lr=lr or cfg.lr, warmup=cfg.warmup,
                      translate=cfg.translate if translate is None else translate,
                      checkpoint_every=max(1, steps // 3), seed=cfg.seed, log_every=10)
    tqdm.write(f"[{name}] {steps} steps")
    trainer.fit(resume=True)
    model.eval()
    return model


def _features(cfg: DemoConfig, images: dict[str, torch.Tensor], out: str) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 features, normalised to the unit sphere (seed 002 Sec. 5), cached."""
    from .features import EfficientNetLite0, extract_features, normalize_features

    path = os.path.join(out, "features.pt")
    key = {k: list(v.shape) for k, v in images.items()} | {"size": cfg.feature_size, "seed": cfg.seed}
    if os.path.exists(path):
        cached = torch.load(path, weights_only=True)
        if cached.get("key") == json.dumps(key):
            return cached["features"]
    extractor = EfficientNetLite0(input_size=cfg.feature_size)
    feats = {}
    for name, x in images.items():
        tqdm.write(f"[features] {name}: {len(x)} images")
        feats[name] = normalize_features(extract_features(extractor, x, progress=True), noise=0.0)
    tmp = path + ".tmp"
    torch.save({"key": json.dumps(key), "features": feats}, tmp)
    os.replace(tmp, path)
    return feats


def _feature_detectors(cfg: DemoConfig, feats: dict[str, torch.Tensor], out: str) -> dict:
    """Seed 002 Sec. 5.1 baselines plus the flows on features (Flow, Flow-ratio, contrastive)."""
    train, aux = feats["train"], feats["aux"]
    dets = {
        "features: MSE to mean": MSEToMean().fit(train),
        "features: MSE-ratio": MSERatio(aux).fit(train),
        "features: KNN (k=5)": KNN(k=5).fit(train),
        "features: KDE": KDE().fit(train),
        "features: PCA": PCA(n_components=0.9).fit(train),
    }
    dets.update({f"features: {k}": v for k, v in feature_flows(cfg, train, aux, out).items()})
    return dets


def feature_flows(cfg, train: torch.Tensor, aux: torch.Tensor, out: str) -> dict:
    """"Flow", "Flow-ratio" and "contrastive flow" (seed 002 Sec. 4-5): vector flows on a PCA
    projection of the normalised features (seed 002 used 128-d MOCO outputs), trained on noisy
    copies so the density is valid (Sec. 5); the contrastive flow starts from the Flow and is
    clamped at its median in-distribution log p minus 20 (Algorithm 1).  ``cfg`` needs seed,
    feature_dim, feature_noise, feature_flow_steps and the training fields of ``_train``."""
    from sklearn.decomposition import PCA as SkPCA

    g = torch.Generator().manual_seed(cfg.seed + 1)
    noisy = lambda f: f + cfg.feature_noise * torch.randn(f.shape, generator=g)  # noqa: E731
    pca = SkPCA(n_components=min(cfg.feature_dim, train.shape[1], len(train)), random_state=cfg.seed)
    pca.fit(train.numpy())
    scale = float(np.sqrt(pca.explained_variance_[0]))

    def project(f: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(pca.transform(f.numpy()) / scale).float()

    z_train, z_aux = project(noisy(train)), project(noisy(aux))
    dim = z_train.shape[1]
    kw = dict(out=out, cfg=dataclasses.replace(cfg, translate=0), steps=cfg.feature_flow_steps, lr=1e-3,
              translate=0)

    def vflow():
        return invflow.VectorFlow(dim, blocks=4, hidden=128)

    flow_in = _train("feature-flow-in", vflow(), z_train, **kw)
    flow_aux = _train("feature-flow-aux", vflow(), z_aux, **kw)
    with torch.no_grad():
        clamp = float(flow_in.log_prob(z_train).median()) - 20.0
    flow_cf = _train("feature-flow-contrastive", vflow(), z_train, objective=objectives.contrastive_objective(
        z_aux, clamp=clamp), init=flow_in, **kw)
    return {"Flow": Likelihood(flow_in, transform=project),
            "Flow-ratio": LikelihoodRatio(flow_in, flow_aux, transform=project),
            "contrastive flow": ContrastiveFlow(flow_cf, transform=project)}


def _baseline_detectors(cfg: DemoConfig, out: str, fm_train, y_train, general) -> dict:
    """PixelCNN++ (likelihood and ratio to a general PixelCNN++, seed 000 Tab. 1) and classifier
    detectors on a small ResNet (MSP, energy, Mahalanobis; the in-vs-general classifier of seed
    000 S9)."""
    from . import classifier_objectives as co
    from .models import PixelCNNpp, ResNetClassifier
    from .scores import BinaryClassifierScore, Energy, Mahalanobis, MaxSoftmax

    def pcnn():
        return PixelCNNpp(1, 28, filters=cfg.pcnn_filters, resnets=1, levels=2)

    pc_general = Memoized(_train("pcnn-general", pcnn(), general, out, cfg, cfg.pcnn_steps))
    pc_in = Memoized(_train("pcnn-in", pcnn(), fm_train, out, cfg, cfg.pcnn_steps))
    clf = _train("classifier", ResNetClassifier(1, 10, 28, width=cfg.clf_width), (fm_train, y_train), out, cfg,
                 cfg.clf_steps, objective=co.cross_entropy_objective())
    binary = _train("in-vs-general", ResNetClassifier(1, 1, 28, width=cfg.clf_width), fm_train, out, cfg,
                    cfg.clf_steps, objective=co.in_vs_general_objective(general))
    n = min(len(fm_train), 5000)
    return {
        "PixelCNN++: likelihood": Likelihood(pc_in),
        "PixelCNN++: Diff": LikelihoodRatio(pc_in, pc_general),
        "classifier: MSP": MaxSoftmax(clf),
        "classifier: energy": Energy(clf),
        "classifier: Mahalanobis": Mahalanobis(clf).fit(fm_train[:n], y=y_train[:n]),
        "in-vs-general classifier": BinaryClassifierScore(binary),
    }


def run(out: str = "runs/demo", smoke: bool = False, **overrides) -> dict:
    """Runs the demo; returns the results dict written to ``out/results.json``."""
    cfg = DemoConfig(**{**(SMOKE if smoke else {}), **overrides})
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    os.makedirs(out, exist_ok=True)
    print(f"invflow {invflow.__version__}: backend={invflow.current_backend()}, threads={torch.get_num_threads()}, "
          f"output in {out}")

    # -- data --------------------------------------------------------------------------
    fm_train, y_train = load_fashion_mnist("train")
    fm_test, _ = load_fashion_mnist("test")
    mnist, _ = load_mnist_5k()
    rng = torch.Generator().manual_seed(cfg.seed)
    x_in = fm_test[torch.randperm(len(fm_test), generator=rng)[: cfg.n_eval]]
    x_out = mnist[torch.randperm(len(mnist), generator=rng)[: cfg.n_eval]]
    general = broaden(natural_patches(cfg.n_general, size=28, channels=1, seed=cfg.seed), seed=cfg.seed)
    print(f"data: Fashion-MNIST train {len(fm_train)}, scored {len(x_in)} Fashion-MNIST test vs {len(x_out)} "
          f"MNIST; general distribution: {len(general)} broadened natural-photo patches")

    # -- models ------------------------------------------------------------------------
    general_glow = _train("general", _glow(cfg), general, out, cfg, cfg.steps_general)
    in_glow = _train("in", _glow(cfg), fm_train, out, cfg, cfg.steps_in)
    outlier_glow = _train("in-outlier-loss", _glow(cfg), fm_train, out, cfg, cfg.steps_outlier,
                          objective=objectives.outlier_objective(general_glow, general), init=in_glow,
                          lr=cfg.lr_finetune)
    dagger_glow = _train("general-dagger", _glow(cfg), general, out, cfg, cfg.steps_dagger,
                         objective=objectives.diff_dagger_objective(in_glow, fm_train), init=general_glow,
                         lr=cfg.lr_finetune)
    # several detectors share each model: evaluate every model once per batch
    in_glow, general_glow, outlier_glow, dagger_glow = map(Memoized, (in_glow, general_glow, outlier_glow,
                                                                      dagger_glow))
    baseline_dets = _baseline_detectors(cfg, out, fm_train, y_train, general) if cfg.baselines else {}
    t_train = time.perf_counter() - t0

    # -- detectors ---------------------------------------------------------------------
    dets = {
        "likelihood": Likelihood(in_glow),
        "typicality (batch 1)": Typicality(in_glow).fit(fm_train[:2000]),
        "scale 1 (14x14)": ScaleContribution(in_glow, scales=0),
        "last scale (7x7)": ScaleContribution(in_glow, scales=-1),
        "Diff": LikelihoodRatio(in_glow, general_glow),
        "Diff, last scale": ScaleRatio(in_glow, general_glow, scales=-1),
        "Diff-dagger": LikelihoodRatio(in_glow, dagger_glow),
        "PNG complexity": InputComplexity(in_glow),
        "approximate mass": ApproximateMass(in_glow),
        "outlier loss: likelihood": Likelihood(outlier_glow),
        "outlier loss: last scale": ScaleContribution(outlier_glow, scales=-1),
        "outlier loss: Diff": LikelihoodRatio(outlier_glow, general_glow),
        "outlier loss: Diff-dagger": LikelihoodRatio(outlier_glow, dagger_glow),
    }
    dets.update(baseline_dets)
    feature_inputs = None
    if cfg.features:
        g = torch.Generator().manual_seed(cfg.seed + 2)
        n = cfg.n_feature_train
        feature_inputs = {
            "train": fm_train[torch.randperm(len(fm_train), generator=g)[:n]],
            "aux": general[torch.randperm(len(general), generator=g)[:n]],
            "in": x_in, "out": x_out,
        }
        feats = _features(cfg, feature_inputs, out)
        feature_dets = _feature_detectors(cfg, feats, out)
    scores = {}
    for name, det in tqdm(dets.items(), desc="scoring", unit="detector"):
        scores[name] = (det.score(x_in), det.score(x_out))
    if cfg.features:
        for name, det in feature_dets.items():
            scores[name] = (det.score(feats["in"]), det.score(feats["out"]))
    uses = {name: det.uses for name, det in {**dets, **(feature_dets if cfg.features else {})}.items()}
    uses.update({k: "aux data" for k in scores if k.startswith("outlier loss")})

    # -- analyses (seed 000 Sec. 2, Fig. 3) --------------------------------------------
    adir = os.path.join(out, "analysis")
    os.makedirs(adir, exist_ok=True)
    with torch.no_grad():
        pre = lambda x: invflow.data.preprocess(x, dequantize=False)  # noqa: E731
        ps_in = {m: torch.cat([mod(pre(x)).per_scale for x in (x_in, x_out)]).numpy()
                 for m, mod in (("in", in_glow), ("general", general_glow))}
    corr = analysis.likelihood_correlations(ps_in["in"], ps_in["general"])
    analysis.plot_per_scale_correlations(ps_in["in"], ps_in["general"], os.path.join(adir, "per_scale_correlations.png"),
                                         labels=("Fashion-MNIST Glow", "general Glow"))
    analysis.plot_pixel_difference_histograms({"Fashion-MNIST": x_in, "MNIST": x_out, "general": general[:2000]},
                                              os.path.join(adir, "pixel_differences.png"))
    analysis.plot_latents(in_glow, x_in[:4], os.path.join(adir, "latents.png"))

    seconds = time.perf_counter() - t0
    notes = [
        f"Shrunk to run in about 10 minutes on 2 CPU cores: Glows of 2 scales x {cfg.flow_steps} steps, "
        f"st-net width {cfg.hidden}, trained {cfg.steps_in}/{cfg.steps_general} steps (in/general) at batch "
        f"{cfg.batch_size} and lr {cfg.lr} (seed 000: 3 scales x 32 steps, width 512, 250 epochs at 5e-4); "
        f"outlier-loss and Diff-dagger models finetuned for {cfg.steps_outlier}/{cfg.steps_dagger} steps at lr "
        f"{cfg.lr_finetune}.",
        f"Scored {len(x_in)} Fashion-MNIST test images vs {len(x_out)} MNIST digits (balanced, seed 004 Sec. 4.3), "
        "noise-free, non-finite log-likelihoods set to -3e6 (seed 000 S4.5).",
        "General distribution: patches of 15 natural photos (scikit-image, scikit-learn, matplotlib), "
        "grey, photometrically broadened (contrast, black point, polarity; detectors.datasets.broaden): "
        "a narrow stand-in for grey 80 Million Tiny Images.",
        f"Spearman correlation of the two Glows' log-likelihoods on the scored images: total "
        f"{corr['total']:.2f}, per scale " + ", ".join(f"{c:.2f}" for c in corr["per_scale"]) +
        " (seed 000 Fig. 3: the last scale correlates least).",
        f"Wall time {seconds:.0f} s ({t_train:.0f} s training).",
    ]
    if cfg.baselines:
        notes.insert(-1, f"Baselines: PixelCNN++ ({cfg.pcnn_filters} filters, {cfg.pcnn_steps} steps; seed 000 used "
                         f"120 filters) on Fashion-MNIST and on the general distribution; ResNet classifiers (width "
                         f"{cfg.clf_width}, {cfg.clf_steps} steps) for MSP, energy, Mahalanobis (labels) and the "
                         f"in-vs-general classifier (aux data).")
    if cfg.features:
        notes.insert(3, f"Features: EfficientNet-Lite0 (ImageNet) at {cfg.feature_size}x{cfg.feature_size}, "
                        f"normalised to the unit sphere; baselines fitted on {cfg.n_feature_train} Fashion-MNIST "
                        f"training images; flows on a {cfg.feature_dim}-d PCA projection.")
    results = write_report(out, "Fashion-MNIST (test)", "MNIST", scores, config=dataclasses.asdict(cfg),
                           notes=notes, supervised=uses)
    print()
    print(format_table(results))
    print()
    for line in notes:
        print("- " + line)
    print(f"\nreport: {os.path.join(out, 'report.md')}")
    return results
