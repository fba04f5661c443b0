"""The experiment pieces shared by ``python -m detectors demo`` and ``python -m detectors
reproduce``: model training with resume, the detector sets of the papers built from trained
models, feature-space detectors and flows, and the zoo models.

Public (used by demo, reproduce and the OOD suite):

* :func:`train_model` -- trains / resumes / reloads a model under ``out/models/NAME`` with
  ``invflow.train.Trainer``;
* :func:`flow_detectors` -- the likelihood-based detectors of Schirrmeister et al. 2020 from an
  in-distribution flow and optionally a general, a Diff-dagger and an outlier-loss flow;
* :func:`mass_detectors` -- approximate mass (Chali et al. 2023) of a vanilla and a penalised flow;
* :func:`feature_detectors`, :func:`feature_flows` -- Schmier et al. 2022 Sec. 4-5 on image features;
* :func:`zoo_models` -- the shipped models (``detectors.zoo``) under the roles above;
* :class:`Memoized` -- runs a model once for several detectors scoring the same batch;
* :func:`read_cache` -- a run's cached features (``torch.save`` dicts of tensors), read safely.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import torch
from tqdm import tqdm

import invflow
from invflow.train import Trainer, nll

from .. import objectives
from ..scores import (
    KDE,
    KNN,
    PCA,
    ApproximateMass,
    ContrastiveFlow,
    InputComplexity,
    Likelihood,
    LikelihoodRatio,
    MSERatio,
    MSEToMean,
    ScaleContribution,
    ScaleRatio,
    Typicality,
)


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
        key = (
            x.dtype,
            tuple(x.shape),
            hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest(),
        )
        if key not in self._cache:
            if len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self.model(x)
        return self._cache[key]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).log_prob


def read_cache(path: str) -> dict | None:
    """The dict a run cached at ``path`` with ``torch.save`` (features and their key), or None
    when there is none or it is not such a dict (damaged, or written by something else: the
    caller computes it again and replaces it).  Read with ``weights_only=True`` (tensors and
    plain containers only, no code) from a regular file only: a named pipe or a device at
    ``path`` raises ValueError in one line (``invflow.io.open_regular``) instead of hanging."""
    import pickle
    import zipfile

    from invflow.io import open_regular

    if not os.path.lexists(path):
        return None
    with open_regular(path, "a feature cache written by torch.save") as f:
        try:
            cached = torch.load(f, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile, OSError):
            return None
    return cached if isinstance(cached, dict) else None


def train_model(
    name: str,
    model,
    data,
    out: str,
    cfg,
    steps: int,
    objective=nll,
    init=None,
    lr: float | None = None,
    translate: int | None = None,
):
    """Trains (or resumes, or reloads when finished) ``model`` under ``out/models/name``;
    returns it in eval mode.  ``cfg`` supplies seed, batch_size, lr, warmup and translate
    (a ``detectors.experiments.config.RunConfig``); ``init`` is a model whose weights start the run."""
    if init is not None:
        model.load_state_dict(init.state_dict())
    trainer = Trainer(
        model,
        data,
        out_dir=os.path.join(out, "models", name),
        objective=objective,
        steps=steps,
        batch_size=cfg.batch_size,
        lr=lr or cfg.lr,
        warmup=cfg.warmup,
        translate=cfg.translate if translate is None else translate,
        checkpoint_every=max(1, steps // 3),
        seed=cfg.seed,
        log_every=10,
    )
    tqdm.write(f"[{name}] {steps} steps")
    trainer.fit(resume=True)
    model.eval()
    return model


def flow_detectors(in_model, general=None, dagger=None, outlier=None, fit_images=None) -> dict:
    """The likelihood-based detectors of Schirrmeister et al. 2020 from trained
    image flows, by table row name:

    ``in_model`` alone: likelihood, per-scale contributions (Tab. 2), PNG complexity (Serrà
    et al. 2020), typicality (Nalisnick et al. 2019, batch 1; needs ``fit_images``, uint8
    in-distribution training images); with ``general``: Diff and Diff of the last scale (Eq. 1,
    Tab. 2); with ``dagger`` (a general model finetuned with in-distribution data as outliers,
    Sec. 5.3): Diff-dagger; with ``outlier`` (an in-distribution model trained with the outlier
    loss, Eq. 2): its likelihood, last scale, Diff and Diff-dagger.  Models with two or more
    scales; several detectors share each model through :class:`Memoized`."""
    m_in = Memoized(in_model)
    dets = {"likelihood": Likelihood(m_in)}
    if fit_images is not None:
        dets["typicality (batch 1)"] = Typicality(m_in).fit(fit_images)
    dets["scale 1"] = ScaleContribution(m_in, scales=0)
    dets["last scale"] = ScaleContribution(m_in, scales=-1)
    m_g = Memoized(general) if general is not None else None
    m_d = Memoized(dagger) if dagger is not None else None
    if m_g is not None:
        dets["Diff"] = LikelihoodRatio(m_in, m_g)
        dets["Diff, last scale"] = ScaleRatio(m_in, m_g, scales=-1)
    if m_d is not None:
        dets["Diff-dagger"] = LikelihoodRatio(m_in, m_d)
    dets["PNG complexity"] = InputComplexity(m_in)
    if outlier is not None:
        m_o = Memoized(outlier)
        dets["outlier loss: likelihood"] = Likelihood(m_o)
        dets["outlier loss: last scale"] = ScaleContribution(m_o, scales=-1)
        if m_g is not None:
            dets["outlier loss: Diff"] = LikelihoodRatio(m_o, m_g)
        if m_d is not None:
            dets["outlier loss: Diff-dagger"] = LikelihoodRatio(m_o, m_d)
    return dets


def mass_detectors(vanilla=None, penalised=None) -> dict:
    """Approximate mass ||d log p(x)/dx|| (Zhang et al. 2021, Chali et al. 2023 Eq. 1) of a vanilla flow
    ("approximate mass") and of one trained with the penalty of Eq. 2 ("penalised: approximate
    mass"), plus the penalised flow's likelihood."""
    dets = {}
    if vanilla is not None:
        dets["approximate mass"] = ApproximateMass(vanilla)
    if penalised is not None:
        dets["penalised: likelihood"] = Likelihood(penalised)
        dets["penalised: approximate mass"] = ApproximateMass(penalised)
    return dets


def feature_detectors(train: torch.Tensor, aux: torch.Tensor | None = None, transform=None) -> dict:
    """Schmier et al. 2022 Sec. 5.1 baselines fitted on in-distribution features ``train`` [N, D]
    (MSE to mean, KNN, KDE, PCA; MSE-ratio with auxiliary features ``aux``)."""
    kw = {} if transform is None else {"transform": transform}
    dets = {"MSE to mean": MSEToMean(**kw)}
    if aux is not None:
        dets["MSE-ratio"] = MSERatio(aux, **kw)
    dets.update({"KNN (k=5)": KNN(k=5, **kw), "KDE": KDE(**kw), "PCA": PCA(n_components=0.9, **kw)})
    for det in dets.values():
        det.fit(train)
    return dets


#: the detectors :func:`feature_flows` can build, in the order it returns them
FEATURE_FLOWS = ("Flow", "Flow-ratio", "contrastive flow")


def feature_flows(
    cfg,
    train: torch.Tensor,
    aux: torch.Tensor | None,
    out: str,
    which=FEATURE_FLOWS,
    name: str = "feature-flow",
    steps: int | None = None,
) -> dict:
    """ "Flow", "Flow-ratio" and "contrastive flow" (Schmier et al. 2022 Sec. 4-5): vector flows on a PCA
    projection of the normalised features (Schmier et al. 2022 used 128-d MOCO outputs), trained on noisy
    copies so the density is valid (Sec. 5); the contrastive flow starts from the Flow and is
    clamped at its median in-distribution log p minus 20 (Algorithm 1).

    ``train`` [N, D] in-distribution features, ``aux`` [M, D] auxiliary (contrastive)
    features, needed only for "Flow-ratio" and "contrastive flow".  ``which``: the subset of
    :data:`FEATURE_FLOWS` to build (only the flows they need are trained: the aux flow for
    "Flow-ratio", the in-distribution flow always).  Models go to ``out/models/NAME-in``,
    ``NAME-aux``, ``NAME-contrastive`` (distinct ``name`` per fit, e.g. per one-vs-rest
    class); ``steps`` per flow, default ``cfg.feature_flow_steps``.  ``cfg`` needs seed,
    feature_dim, feature_noise, feature_flow_steps and the training fields of
    :func:`train_model`.  Returns {detector name: detector} in the order of FEATURE_FLOWS.
    Raises ValueError for an unknown or empty ``which``, a ``steps`` below 1, or a missing
    ``aux``."""
    from sklearn.decomposition import PCA as SkPCA

    which = (which,) if isinstance(which, str) else tuple(which)
    unknown = [w for w in which if w not in FEATURE_FLOWS]
    if not which or unknown:
        raise ValueError(f"feature_flows: which must be a non-empty subset of {FEATURE_FLOWS}, got {which!r}")
    steps = cfg.feature_flow_steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"feature_flows: steps must be an int >= 1 (or None for cfg.feature_flow_steps), got {steps!r}"
        )
    need_aux = "Flow-ratio" in which or "contrastive flow" in which
    if need_aux and aux is None:
        raise ValueError(
            "feature_flows: aux (auxiliary features [M, D]) is required for 'Flow-ratio' and "
            "'contrastive flow'; pass aux or which=('Flow',)"
        )
    g = torch.Generator().manual_seed(cfg.seed + 1)
    noisy = lambda f: f + cfg.feature_noise * torch.randn(f.shape, generator=g)  # noqa: E731
    pca = SkPCA(n_components=min(cfg.feature_dim, train.shape[1], len(train)), random_state=cfg.seed)
    pca.fit(train.numpy())
    scale = float(np.sqrt(pca.explained_variance_[0]))

    def project(f: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(pca.transform(f.numpy()) / scale).float()

    z_train = project(noisy(train))
    z_aux = project(noisy(aux)) if need_aux else None
    dim = z_train.shape[1]
    kw = dict(out=out, cfg=dataclasses.replace(cfg, translate=0), steps=steps, lr=1e-3, translate=0)

    def vflow():
        return invflow.VectorFlow(dim, blocks=4, hidden=128)

    flow_in = train_model(f"{name}-in", vflow(), z_train, **kw)
    dets = {}
    if "Flow" in which:
        dets["Flow"] = Likelihood(flow_in, transform=project)
    if "Flow-ratio" in which:
        flow_aux = train_model(f"{name}-aux", vflow(), z_aux, **kw)
        dets["Flow-ratio"] = LikelihoodRatio(flow_in, flow_aux, transform=project)
    if "contrastive flow" in which:
        with torch.no_grad():
            clamp = float(flow_in.log_prob(z_train).median()) - 20.0
        objective = objectives.contrastive_objective(z_aux, clamp=clamp)
        flow_cf = train_model(
            f"{name}-contrastive", vflow(), z_train, objective=objective, init=flow_in, **kw
        )
        dets["contrastive flow"] = ContrastiveFlow(flow_cf, transform=project)
    return dets


#: the zoo model of each role in :func:`flow_detectors` / :func:`mass_detectors`
ZOO_ROLES = {
    "in": "fmnist-glow",
    "general": "photos-glow-broad",
    "dagger": "photos-glow-dagger",
    "outlier": "fmnist-glow-outlier",
    "vanilla": "fmnist-realnvp",
    "penalised": "fmnist-realnvp-mass",
}


def zoo_models() -> dict:
    """{role: model} of the shipped models (``detectors.zoo``) for the roles of
    :data:`ZOO_ROLES`; roles whose model is not shipped are left out."""
    from .. import zoo

    have = zoo.available()
    return {role: zoo.load(name) for role, name in ZOO_ROLES.items() if name in have}


#: the ensembles the demo reports: pixel-level (flow) and semantic (feature) evidence, which
#: fail on different OOD sets (docs/results.md section 6, the OOD suite); names of the members
#: as in the demo's table
DEMO_ENSEMBLES = (
    "Diff-dagger + features: PCA",
    "outlier loss: Diff-dagger + features: PCA",
    "PNG complexity + features: PCA",
    "last scale + features: PCA",
)


def ensembles(dets: dict, specs, val_in: torch.Tensor) -> dict:
    """{"ensemble: A + B": detectors.Ensemble} for each spec "A + B" (members: names in
    ``dets``, already fitted, scoring the same inputs), standardised on ``val_in``:
    in-distribution inputs that no member was fitted on and that are not scored.  ValueError
    naming the unknown members and the known names."""
    from ..scores import Ensemble

    out = {}
    for spec in specs:
        names = [n.strip() for n in spec.split("+")]
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            raise ValueError(
                f"ensemble {spec!r}: expected two or more different detector names joined by '+'"
            )
        unknown = [n for n in names if n not in dets]
        if unknown:
            hint = (
                " (the 'features: ...' detectors need --features)"
                if any(n.startswith("features:") for n in unknown)
                else ""
            )
            raise ValueError(f"ensemble {spec!r}: unknown detector(s) {unknown}{hint}; known: {sorted(dets)}")
        out[f"ensemble: {' + '.join(names)}"] = Ensemble({n: dets[n] for n in names}).fit(val_in)
    return out
