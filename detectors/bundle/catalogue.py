"""The detectors a bundle can fit: :data:`CATALOGUE` maps each name to a :class:`Spec` (what it
needs, its class in ``detectors.scores``, its parameters, what it uses beyond unlabelled
in-distribution data, and its source), and :func:`build` makes the unfitted detector.

The default set is chosen by the worst case over the OOD suite (``detectors.experiments.ood_suite``;
docs/results.md section 6, "The OOD suite: which detectors never collapse"): every single
detector collapses on some kind of OOD data (PNG complexity on upside-down Fashion-MNIST,
feature PCA and KNN on inverted Fashion-MNIST, the last scale on constant images), while the
ensemble of PNG complexity and feature PCA keeps the best worst case without auxiliary data
(a bundle trains its flow on TRAIN only; the suite's best needs a general-distribution model).
Its members come along so that users see each.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class Spec:
    """A detector the bundle can fit: what it needs ("flow", "flow+general", "flow+dagger",
    "features", "images+features" (fitted on images, scored on their features),
    "features+labels", "features-flow", or "ensemble": other catalogue detectors, named in
    ``params["members"]``, that score the bundle's images), its class, its constructor
    parameters, what it uses beyond unlabelled in-distribution data, and its source."""

    needs: str
    cls: str
    params: dict
    uses: str
    source: str


CATALOGUE: dict[str, Spec] = {
    "likelihood": Spec(
        "flow", "Likelihood", {}, "-", "raw -log p(x) (the baseline that fails on simpler OOD data)"
    ),
    "bpd": Spec("flow", "BitsPerDim", {}, "-", "bits per dimension"),
    "last-scale": Spec(
        "flow",
        "LastScale",
        {},
        "-",
        "Schirrmeister et al. 2020, Eq. 3: -c_L(x), the last scale's contribution",
    ),
    "typicality": Spec(
        "flow",
        "Typicality",
        {"batch_size": 1},
        "-",
        "Nalisnick et al. 2019: |-log p(x) - H| (one input per test)",
    ),
    "png": Spec("flow", "InputComplexity", {}, "-", "Serra et al. 2020: model bits - PNG bits"),
    "mass": Spec("flow", "ApproximateMass", {}, "-", "Chali et al. 2023, Eq. 1: ||d log p(x) / dx||"),
    "diff": Spec(
        "flow+general",
        "LikelihoodRatio",
        {},
        "aux data",
        "Schirrmeister et al. 2020, Eq. 1: -(log p_in - log p_general); general = the shipped "
        "general-distribution model of the data's colour mode and size (detectors.zoo), else one "
        "trained on natural photo patches",
    ),
    "diff-dagger": Spec(
        "flow+dagger",
        "LikelihoodRatio",
        {},
        "aux data",
        "Schirrmeister et al. 2020 (Diff-dagger): Diff to the general model finetuned with TRAIN as "
        "outliers (the outlier loss with the roles swapped; --dagger-steps)",
    ),
    "mse": Spec(
        "features",
        "MSEToMean",
        {},
        "-",
        "Schmier et al. 2022 baseline: ||f - mean||^2 on EfficientNet features",
    ),
    "knn": Spec("features", "KNN", {"k": 5}, "-", "k-th nearest-neighbour distance on EfficientNet features"),
    "kde": Spec("features", "KDE", {}, "-", "-log Gaussian KDE on EfficientNet features"),
    "pca": Spec(
        "features", "PCA", {"n_components": 0.9}, "-", "PCA reconstruction error on EfficientNet features"
    ),
    "transforms": Spec(
        "images+features",
        "TransformationClassifier",
        {"max_fit": 1000},
        "-",
        "Golan & El-Yaniv 2018, Hendrycks et al. 2019: -log p(identity | EfficientNet features) of a "
        "classifier of vertical flips, 90/270-degree rotations and inversions of TRAIN",
    ),
    "feature-flow": Spec(
        "features-flow",
        "Likelihood",
        {},
        "-",
        "Schmier et al. 2022 'Flow' baseline: -log p of a vector flow on PCA-projected EfficientNet features",
    ),
    "mahalanobis": Spec(
        "features+labels",
        "Mahalanobis",
        {},
        "labels",
        "Lee et al. 2018: distance to the closest class mean on EfficientNet features "
        "(needs class sub-folders)",
    ),
    "png+pca": Spec(
        "ensemble",
        "Ensemble",
        {"members": ["png", "pca"]},
        "-",
        "detectors.Ensemble: the z-scores of png and pca summed, each standardised on the held-out "
        "part of TRAIN; the best worst case of the OOD suite without aux data (docs/results.md section 6)",
    ),
    "diff-dagger+pca+transforms+diff+png": Spec(
        "ensemble",
        "Ensemble",
        {"members": ["diff-dagger", "pca", "transforms", "diff", "png"]},
        "aux data",
        "detectors.Ensemble of Diff-dagger and Diff (pixel statistics against the general "
        "model), PNG complexity, feature PCA (semantics) and the "
        "transformation classifier (orientation, polarity): the best worst case over the OOD "
        "suite, the added kinds and the RGB example (docs/results.md section 6); the default "
        "when a shipped general model fits the data",
    ),
    "diff-dagger+pca+transforms": Spec(
        "ensemble",
        "Ensemble",
        {"members": ["diff-dagger", "pca", "transforms"]},
        "aux data",
        "detectors.Ensemble of Diff-dagger (pixel statistics), feature PCA (semantics) and the "
        "transformation classifier (orientation, polarity)",
    ),
    "diff+pca+transforms": Spec(
        "ensemble",
        "Ensemble",
        {"members": ["diff", "pca", "transforms"]},
        "aux data",
        "detectors.Ensemble of Diff to the general model, feature PCA and the transformation "
        "classifier (no finetune: for a general model without a Diff-dagger finetune)",
    ),
    "png+pca+transforms": Spec(
        "ensemble",
        "Ensemble",
        {"members": ["png", "pca", "transforms"]},
        "-",
        "detectors.Ensemble of PNG complexity, feature PCA and the transformation classifier",
    ),
    "last-scale+pca": Spec(
        "ensemble",
        "Ensemble",
        {"members": ["last-scale", "pca"]},
        "-",
        "detectors.Ensemble: the z-scores of last-scale and pca summed, each standardised on "
        "the held-out part of TRAIN (its OOD suite worst case: docs/results.md section 6)",
    ),
}
FEATURE_NEEDS = ("features", "features+labels", "features-flow", "images+features")
ENSEMBLE = "ensemble"
#: PCA dimensions before the vector flow; training noise (Schmier et al. 2022, Sec. 5)
FEATURE_FLOW_DIM, FEATURE_NOISE = 32, 1e-2


def members(name: str) -> list:
    """The catalogue detectors the bundle detector ``name`` combines ([] unless an ensemble)."""
    spec = CATALOGUE[name]
    return list(spec.params["members"]) if spec.needs == ENSEMBLE else []


def with_members(names) -> tuple:
    """``names`` with the members of each ensemble among them added right after it when not
    listed: an ensemble needs its fitted members, and the bundle reports them too (each with
    its own threshold), so a listed ensemble always comes with the detectors it combines."""
    out = []
    for name in names:
        for n in [name] + members(name):
            if n not in out:
                out.append(n)
    return tuple(out)


class Projection:
    """f -> (f - mean) @ components.T / scale: the PCA projection (scikit-learn's
    ``PCA.transform``, whiten=False) of unit-norm features before the feature flow, scaled by
    the first component's standard deviation.  Saved in the bundle with the flow."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: float):
        self.mean, self.components, self.scale = mean.double(), components.double(), float(scale)

    @classmethod
    def fit(cls, f: torch.Tensor, dim: int) -> Projection:
        from sklearn.decomposition import PCA as SkPCA

        pca = SkPCA(n_components=min(dim, f.shape[1], len(f) - 1), svd_solver="full").fit(f.double().numpy())
        return cls(
            torch.from_numpy(pca.mean_),
            torch.from_numpy(pca.components_),
            float(np.sqrt(pca.explained_variance_[0])),
        )

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        return ((f.double() - self.mean) @ self.components.T / self.scale).float()

    def tensors(self) -> dict:
        return {
            "projection.mean": self.mean,
            "projection.components": self.components,
            "projection.scale": torch.tensor([self.scale], dtype=torch.float64),
        }

    @classmethod
    def from_tensors(cls, t: dict) -> Projection:
        return cls(t["projection.mean"], t["projection.components"], float(t["projection.scale"][0]))


class FeatureVectors(torch.nn.Module):
    """``features(x)``: feature vectors [B, D] as they are, images [B, C, H, W] through
    EfficientNet-Lite0 at ``feature_size`` (unit-norm): lets ``Mahalanobis`` work on the
    bundle's image features."""

    def __init__(self, feature_size: int = 96):
        super().__init__()
        self.feature_size = feature_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            from ..features import image_features

            return image_features(x, self.feature_size)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


#: the default set when no shipped general model fits the data (members are added)
DEFAULT_DETECTORS = ("png+pca",)
#: the default set when one does (``detectors.zoo.general_for``)
DEFAULT_WITH_GENERAL = ("diff-dagger+pca+transforms+diff+png",)


def build(
    name: str,
    spec: Spec,
    models: dict,
    feature_size: int,
    progress: bool,
    params: dict | None = None,
    projection: Projection | None = None,
    built: dict | None = None,
):
    """The unfitted detector ``name``; an ensemble is built from its members in ``built``
    (fitted detectors by name)."""
    from .. import scores

    cls = getattr(scores, spec.cls)
    kw = dict(spec.params if params is None else params)
    if spec.needs == ENSEMBLE:
        names = kw.pop("members")
        missing = [m for m in names if m not in (built or {})]
        if missing:
            raise ValueError(f"detector {name!r} combines {names}, but {missing} are not in the bundle")
        return cls({m: built[m] for m in names}, progress=progress, **kw)
    if spec.needs == "features-flow":
        return cls(models["feature-flow"], transform=projection, progress=progress, **kw)
    if spec.needs == "features+labels":
        return cls(FeatureVectors(feature_size), progress=progress, **kw)
    if spec.needs in ("features", "images+features"):
        return cls(feature_size=feature_size, progress=progress, **kw)
    if spec.needs == "flow+general":
        return cls(models["flow"], models["general"], progress=progress, **kw)
    if spec.needs == "flow+dagger":
        return cls(models["flow"], models["dagger"], progress=progress, **kw)
    return cls(models["flow"], progress=progress, **kw)
