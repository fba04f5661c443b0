"""``python -m detectors demo --out DIR``: the papers' story on real data, on 2 CPU cores.

Fashion-MNIST (in-distribution) vs MNIST (OOD), as in Schirrmeister et al. 2020, Kirichenko et al.
2020 and Chali et al. 2023:

1. takes the trained flows of the model zoo (``detectors.zoo``; ``--train`` trains the
   demo's smaller models from scratch instead, resumable under ``DIR/models``): an
   in-distribution Glow on Fashion-MNIST, a general-distribution Glow on grey photo patches
   (the offline stand-in for grey 80 Million Tiny Images, Schirrmeister et al. 2020 S5.1), the in-distribution
   Glow finetuned with the outlier loss (Schirrmeister et al. 2020 Eq. 2), the general Glow finetuned with
   Fashion-MNIST as outliers (Diff-dagger, Schirrmeister et al. 2020 Sec. 5.3), and a RealNVP trained with
   the approximate-mass penalty (Chali et al. 2023) with its vanilla twin;
2. builds the papers' detectors from them with the public functions of
   ``detectors.experiments.runs`` (``flow_detectors``, ``mass_detectors``, ``feature_detectors``,
   ``feature_flows``), extracting EfficientNet-Lite0 features (ImageNet weights) for the
   feature-space baselines and flows of Schmier et al. 2022;
3. scores Fashion-MNIST test images vs MNIST digits with every detector, and writes
   ``DIR/report.md``, ``DIR/results.json``, ROC curves, score histograms and analysis plots.

With ``--train`` the PixelCNN++ and classifier baselines are trained too (they are not in
the zoo).  The report says which models were used and their training budgets.
"""

from __future__ import annotations

import json
import os
import time

import torch
from tqdm import tqdm

import invflow

from .. import objectives
from ..data import broaden, load_fashion_mnist, load_mnist_5k, natural_patches
from ..data.photos import photo_patches
from ..features import CachedFeatures, EfficientNetLite0
from ..report import format_table, write_report
from ..scores import PCA
from . import analysis
from .config import DemoConfig
from .runs import (
    DEMO_ENSEMBLES,
    ZOO_ROLES,
    Memoized,
    ensembles,
    feature_detectors,  # noqa: F401
    feature_flows,
    flow_detectors,
    mass_detectors,
    read_cache,
    train_model,
    zoo_models,
)

SMOKE = dict(
    flow_steps=1,
    hidden=8,
    batch_size=16,
    warmup=1,
    steps_general=2,
    steps_in=2,
    steps_outlier=2,
    steps_dagger=2,
    n_general=128,
    n_eval=48,
    feature_size=32,
    n_feature_train=48,
    feature_dim=4,
    n_ensemble_val=16,
    feature_flow_steps=2,
    pcnn_filters=4,
    pcnn_steps=2,
    clf_width=4,
    clf_steps=2,
)


def _glow(cfg: DemoConfig) -> invflow.Glow:
    return invflow.Glow(1, 28, levels=2, steps=cfg.flow_steps, hidden=cfg.hidden)


def _train(name: str, model, data, out: str, cfg: DemoConfig, steps: int, **kw):
    return train_model(name, model, data, out, cfg, steps, **kw)


def _features(cfg: DemoConfig, images: dict[str, torch.Tensor], out: str) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 features, normalised to the unit sphere (Schmier et al. 2022 Sec. 5), cached."""
    from ..features import EfficientNetLite0, extract_features, normalize_features

    path = os.path.join(out, "features.pt")
    key = {k: list(v.shape) for k, v in images.items()} | {"size": cfg.feature_size, "seed": cfg.seed}
    cached = read_cache(path)
    if (
        cached is not None
        and cached.get("key") == json.dumps(key)
        and isinstance(cached.get("features"), dict)
    ):
        return cached["features"]
    extractor = EfficientNetLite0(input_size=cfg.feature_size)
    feats = shipped_features(images, cfg.feature_size)
    for name, x in images.items():
        if name in feats:
            tqdm.write(f"[features] {name}: {len(x)} images, shipped with detectors.zoo")
            continue
        tqdm.write(f"[features] {name}: {len(x)} images")
        feats[name] = normalize_features(extract_features(extractor, x, progress=True), noise=0.0)
    tmp = path + ".tmp"
    torch.save({"key": json.dumps(key), "features": feats}, tmp)
    os.replace(tmp, path)
    return feats


def _baseline_detectors(cfg: DemoConfig, out: str, fm_train, y_train, general) -> dict:
    """PixelCNN++ (likelihood and ratio to a general PixelCNN++, Schirrmeister et al. 2020 Tab. 1) and classifier
    detectors on a small ResNet (MSP, energy, Mahalanobis; the in-vs-general classifier of
    Schirrmeister et al. 2020, S9)."""
    from ..baselines import PixelCNNpp, ResNetClassifier
    from ..objectives import classifier as co
    from ..scores import BinaryClassifierScore, Energy, Likelihood, LikelihoodRatio, Mahalanobis, MaxSoftmax

    def pcnn():
        return PixelCNNpp(1, 28, filters=cfg.pcnn_filters, resnets=1, levels=2)

    pc_general = Memoized(_train("pcnn-general", pcnn(), general, out, cfg, cfg.pcnn_steps))
    pc_in = Memoized(_train("pcnn-in", pcnn(), fm_train, out, cfg, cfg.pcnn_steps))
    clf = _train(
        "classifier",
        ResNetClassifier(1, 10, 28, width=cfg.clf_width),
        (fm_train, y_train),
        out,
        cfg,
        cfg.clf_steps,
        objective=co.cross_entropy_objective(),
    )
    binary = _train(
        "in-vs-general",
        ResNetClassifier(1, 1, 28, width=cfg.clf_width),
        fm_train,
        out,
        cfg,
        cfg.clf_steps,
        objective=co.in_vs_general_objective(general),
    )
    n = min(len(fm_train), 5000)
    return {
        "PixelCNN++: likelihood": Likelihood(pc_in),
        "PixelCNN++: Diff": LikelihoodRatio(pc_in, pc_general),
        "classifier: MSP": MaxSoftmax(clf),
        "classifier: energy": Energy(clf),
        "classifier: Mahalanobis": Mahalanobis(clf).fit(fm_train[:n], y=y_train[:n]),
        "in-vs-general classifier": BinaryClassifierScore(binary),
    }


def images_digest(x: torch.Tensor) -> str:
    """SHA-1 of a uint8 image tensor's shape and bytes (identifies a set of images)."""
    import hashlib

    h = hashlib.sha1(str(tuple(x.shape)).encode())
    h.update(x.contiguous().numpy().tobytes())
    return h.hexdigest()


def shipped_features(images: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """The unit-sphere EfficientNet-Lite0 features shipped in ``detectors/zoo/features-SIZE.safetensors``
    for those of ``images`` whose bytes match the stored digests (the demo's fit sets)."""
    from safetensors import safe_open

    from ..zoo import ZOO_DIR

    path = os.path.join(ZOO_DIR, "weights", f"features-efficientnet-lite0-{size}.safetensors")
    if not os.path.exists(path):
        return {}
    out = {}
    with safe_open(path, framework="pt") as f:
        digests = json.loads(f.metadata()["digests"])
        for name, x in images.items():
            if digests.get(name) == images_digest(x):
                out[name] = f.get_tensor(name).float()
    return out


def feature_fit_images(
    cfg: DemoConfig, fm_train: torch.Tensor, general: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The images the feature detectors are fitted on: ``n_feature_train`` Fashion-MNIST training
    images and as many general-distribution images (seeded)."""
    g = torch.Generator().manual_seed(cfg.seed + 2)
    n = cfg.n_feature_train
    return {
        "train": fm_train[torch.randperm(len(fm_train), generator=g)[:n]],
        "aux": general[torch.randperm(len(general), generator=g)[:n]],
    }


def zoo_general_images(cfg: DemoConfig) -> torch.Tensor:
    """The general-distribution images of the zoo demo: patches of the 32 training photos."""
    return photo_patches(max(2000, cfg.n_feature_train), 28, split="train", seed=cfg.seed)


def _train_models(cfg: DemoConfig, out: str, fm_train, general) -> dict:
    """``--train``: the demo's Glows from scratch at the demo budget, by role (see
    ``experiments.ZOO_ROLES``); the in-distribution Glow doubles as the vanilla flow."""
    general_glow = _train("general", _glow(cfg), general, out, cfg, cfg.steps_general)
    in_glow = _train("in", _glow(cfg), fm_train, out, cfg, cfg.steps_in)
    outlier_glow = _train(
        "in-outlier-loss",
        _glow(cfg),
        fm_train,
        out,
        cfg,
        cfg.steps_outlier,
        objective=objectives.outlier_objective(general_glow, general),
        init=in_glow,
        lr=cfg.lr_finetune,
    )
    dagger_glow = _train(
        "general-dagger",
        _glow(cfg),
        general,
        out,
        cfg,
        cfg.steps_dagger,
        objective=objectives.diff_dagger_objective(in_glow, fm_train),
        init=general_glow,
        lr=cfg.lr_finetune,
    )
    return {
        "in": in_glow,
        "general": general_glow,
        "outlier": outlier_glow,
        "dagger": dagger_glow,
        "vanilla": in_glow,
    }


def _zoo_notes() -> list[str]:
    from .. import zoo

    lines = []
    for role, name in ZOO_ROLES.items():
        c = zoo.card(name)
        t = c["training"]
        lines.append(
            f"{name} ({role}): {c['model']['class']} {c['model']['parameters']:,} parameters, "
            f"{t['steps']} steps ({t['epochs']} epochs, {t['wall_s'] / 60:.0f} min), held-out "
            f"{c['heldout_bpd']:.3f} bits/dim ({c['status']})"
        )
    return lines


def run(out: str = "runs/demo", smoke: bool = False, train: bool | None = None, **overrides) -> dict:
    """Runs the demo; returns the results dict written to ``out/results.json``.

    ``train=False`` (the default without ``smoke``) scores with the shipped zoo models
    (``detectors.zoo``; minutes); ``train=True`` (``--train``, and ``smoke``) trains the demo's
    models from scratch under ``out/models`` (resumable)."""
    cfg = DemoConfig(**{**(SMOKE if smoke else {}), **overrides})
    train = smoke if train is None else bool(train)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    os.makedirs(out, exist_ok=True)
    print(
        f"invflow {invflow.__version__}: backend={invflow.current_backend()}, threads={torch.get_num_threads()}, "
        f"models: {'trained here' if train else 'detectors.zoo'}, output in {out}"
    )

    # -- data --------------------------------------------------------------------------
    fm_train, y_train = load_fashion_mnist("train")
    fm_test, _ = load_fashion_mnist("test")
    mnist, _ = load_mnist_5k()
    rng = torch.Generator().manual_seed(cfg.seed)
    test_order = torch.randperm(len(fm_test), generator=rng)
    x_in = fm_test[test_order[: cfg.n_eval]]
    x_val = fm_test[test_order[cfg.n_eval : cfg.n_eval + cfg.n_ensemble_val]]  # standardises the ensembles
    x_out = mnist[torch.randperm(len(mnist), generator=rng)[: cfg.n_eval]]
    if train:
        general = broaden(natural_patches(cfg.n_general, size=28, channels=1, seed=cfg.seed), seed=cfg.seed)
        what = f"{len(general)} broadened patches of 15 photos"
    else:  # the zoo's general distribution: patches of the 32 training photos (detectors.data.photos)
        general = zoo_general_images(cfg)
        what = (
            f"patches of the 32 training photos of detectors.data.photos ({len(general)} here for the feature aux "
            "set; the general Glows trained on them broadened)"
        )
    print(
        f"data: Fashion-MNIST train {len(fm_train)}, scored {len(x_in)} Fashion-MNIST test vs {len(x_out)} "
        f"MNIST; general distribution: {what}"
    )

    # -- models ------------------------------------------------------------------------
    if train:
        models = _train_models(cfg, out, fm_train, general)
    else:
        models = zoo_models()
        missing = [ZOO_ROLES[r] for r in ZOO_ROLES if r not in models]
        if missing:
            raise RuntimeError(
                f"zoo models missing: {', '.join(missing)}; train them (python -m detectors zoo "
                f"NAME) or run the demo with --train"
            )
    baseline_dets = (
        _baseline_detectors(cfg, out, fm_train, y_train, general) if cfg.baselines and train else {}
    )
    t_train = time.perf_counter() - t0

    # -- detectors (experiments: the papers' detector sets) ------------------------------
    dets = flow_detectors(
        models["in"], models["general"], models["dagger"], models["outlier"], fit_images=fm_train[:2000]
    )
    dets.update(mass_detectors(models["vanilla"], models.get("penalised")))
    dets.update(baseline_dets)
    feature_dets = {}
    if cfg.features:
        feature_inputs = feature_fit_images(cfg, fm_train, general) | {"in": x_in, "out": x_out}
        feats = _features(cfg, feature_inputs, out)
        feature_dets = {
            f"features: {k}": v for k, v in feature_detectors(feats["train"], feats["aux"]).items()
        }
        feature_dets.update(
            {f"features: {k}": v for k, v in feature_flows(cfg, feats["train"], feats["aux"], out).items()}
        )
    scores = {}
    for name, det in tqdm(dets.items(), desc="scoring", unit="detector"):
        scores[name] = (det.score(x_in), det.score(x_out))
    for name, det in feature_dets.items():
        scores[name] = (det.score(feats["in"]), det.score(feats["out"]))
    if cfg.features:  # pixel-level + semantic evidence (the OOD suite's recommendation, RESULTS.md 6)
        lookup = CachedFeatures(EfficientNetLite0(input_size=cfg.feature_size))
        for k in ("train", "in", "out"):
            lookup.add(feature_inputs[k], feats[k])
        members = dict(dets) | {
            "features: PCA": PCA(n_components=0.9, transform=lookup).fit(feature_inputs["train"])
        }
        specs = [e for e in DEMO_ENSEMBLES if all(m.strip() in members for m in e.split("+"))]
        for name, det in tqdm(ensembles(members, specs, x_val).items(), desc="ensembles", unit="detector"):
            scores[name] = (det.score(x_in), det.score(x_out))
            feature_dets[name] = det
    uses = {name: det.uses for name, det in {**dets, **feature_dets}.items()}
    uses.update({k: "aux data" for k in scores if "outlier loss" in k})

    # -- analyses (Schirrmeister et al. 2020 Sec. 2, Fig. 3) --------------------------------------------
    adir = os.path.join(out, "analysis")
    os.makedirs(adir, exist_ok=True)
    in_glow, general_glow = models["in"], models["general"]
    with torch.no_grad():
        pre = lambda x: invflow.data.preprocess(x, dequantize=False)  # noqa: E731
        ps_in = {
            m: torch.cat([mod(pre(x)).per_scale for x in (x_in, x_out)]).numpy()
            for m, mod in (("in", in_glow), ("general", general_glow))
        }
    corr = analysis.likelihood_correlations(ps_in["in"], ps_in["general"])
    analysis.plot_per_scale_correlations(
        ps_in["in"],
        ps_in["general"],
        os.path.join(adir, "per_scale_correlations.png"),
        labels=("Fashion-MNIST Glow", "general Glow"),
    )
    analysis.plot_pixel_difference_histograms(
        {"Fashion-MNIST": x_in, "MNIST": x_out, "general": general[:2000]},
        os.path.join(adir, "pixel_differences.png"),
    )
    analysis.plot_latents(in_glow, x_in[:4], os.path.join(adir, "latents.png"))

    seconds = time.perf_counter() - t0
    if train:
        budget = [
            f"Trained here: Glows of 2 scales x {cfg.flow_steps} steps, st-net width {cfg.hidden}, "
            f"{cfg.steps_in}/{cfg.steps_general} steps (in/general) at batch {cfg.batch_size} and lr {cfg.lr} "
            f"(Schirrmeister et al. 2020: 3 scales x 32 steps, width 512, 250 epochs at 5e-4); outlier-loss and Diff-dagger "
            f"models finetuned for {cfg.steps_outlier}/{cfg.steps_dagger} steps at lr {cfg.lr_finetune}. General "
            "distribution: patches of 15 photos, photometrically broadened (detectors.data.broaden).",
        ]
    else:
        budget = [
            "Models: detectors.zoo (python -m detectors zoo; cards in detectors/zoo/cards): "
            + "; ".join(_zoo_notes())
            + ". General distribution: grey patches of 32 photos (scikit-image, "
            "scikit-learn, matplotlib, Debian wallpapers; detectors.data.photos), photometrically broadened for the general "
            "and Diff-dagger Glows (detectors.data.broaden); held-out bits/dim on 8 other photos. Feature aux set: "
            "the unbroadened patches."
        ]
    notes = budget + [
        f"Scored {len(x_in)} Fashion-MNIST test images vs {len(x_out)} MNIST digits (balanced, Chali et al. 2023 Sec. 4.3), "
        "noise-free, non-finite log-likelihoods set to -3e6 (Schirrmeister et al. 2020 S4.5).",
        f"Spearman correlation of the two Glows' log-likelihoods on the scored images: total "
        f"{corr['total']:.2f}, per scale "
        + ", ".join(f"{c:.2f}" for c in corr["per_scale"])
        + " (Schirrmeister et al. 2020 Fig. 3: the last scale correlates least).",
        f"Wall time {seconds:.0f} s ({t_train:.0f} s {'training' if train else 'loading'}).",
    ]
    if cfg.baselines and train:
        notes.insert(
            -1,
            f"Baselines: PixelCNN++ ({cfg.pcnn_filters} filters, {cfg.pcnn_steps} steps; Schirrmeister et al. 2020 used "
            f"120 filters) on Fashion-MNIST and on the general distribution; ResNet classifiers (width "
            f"{cfg.clf_width}, {cfg.clf_steps} steps) for MSP, energy, Mahalanobis (labels) and the "
            f"in-vs-general classifier (aux data).",
        )
    elif cfg.baselines:
        notes.insert(
            -1,
            "PixelCNN++ and classifier baselines are not in the zoo: python -m detectors demo --train "
            "or python -m detectors reproduce baselines.",
        )
    if cfg.features:
        notes.insert(
            2,
            f"Features: EfficientNet-Lite0 (ImageNet) at {cfg.feature_size}x{cfg.feature_size}, "
            f"normalised to the unit sphere; baselines fitted on {cfg.n_feature_train} Fashion-MNIST "
            f"training images; flows on a {cfg.feature_dim}-d PCA projection.",
        )
    results = write_report(
        out,
        "Fashion-MNIST (test)",
        "MNIST",
        scores,
        config=cfg.settings() | {"train": train},
        notes=notes,
        supervised=uses,
    )
    print()
    print(format_table(results))
    print()
    for line in notes:
        print("- " + line)
    print(f"\nreport: {os.path.join(out, 'report.md')}")
    return results
