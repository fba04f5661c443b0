"""The public API of ``import detectors`` (docs/design.md, "Detectors") and the one-release
aliases of the modules that moved into packages: each warns DeprecationWarning and still
gives its names; ``import detectors`` itself imports no deprecated module."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import detectors

#: old path -> (new path, one name both give)
MOVED = {
    "detectors.imagefeatures": ("detectors.features", "image_features"),
    "detectors.classifier_objectives": ("detectors.objectives.classifier", "energy_loss"),
    "detectors.supervised": ("detectors.objectives.supervised", "ClassConditionalFlow"),
    "detectors.models": ("detectors.baselines", "PixelCNNpp"),
    "detectors.models.pixelcnn": ("detectors.baselines.pixelcnn", "discretized_logistic_log_mass"),
    "detectors.models.classifier": ("detectors.baselines.classifier", "ResNetClassifier"),
    "detectors.demo": ("detectors.experiments.demo", "run"),
    "detectors.reproduce": ("detectors.experiments.reproduce", "reproduce"),
    "detectors.ood_suite": ("detectors.experiments.ood_suite", "ood_sets"),
    "detectors.analysis": ("detectors.experiments.analysis", "spearman"),
    "detectors.protocols": ("detectors.experiments.protocols", "one_vs_rest"),
}

PUBLIC = [
    "load",
    "Bundle",
    "fit_bundle",
    "evaluate",
    "PixelCNNpp",
    "ResNetClassifier",
    "Detector",
    "Likelihood",
    "BitsPerDim",
    "LikelihoodRatio",
    "ScaleContribution",
    "LastScale",
    "ScaleRatio",
    "ContrastiveFlow",
    "ApproximateMass",
    "InputComplexity",
    "Typicality",
    "Ensemble",
    "MaxSoftmax",
    "Energy",
    "Mahalanobis",
    "BinaryClassifierScore",
    "MSEToMean",
    "MSERatio",
    "KNN",
    "KDE",
    "PCA",
]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_module_warns_and_keeps_its_names(old):
    new, name = MOVED[old]
    for mod in [m for m in sys.modules if m == old or m.startswith(old + ".")]:
        del sys.modules[mod]  # imported by an earlier test: import it afresh, so it warns again
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_old_experiments_names_warn_from_the_package():
    from detectors.experiments import runs

    with pytest.warns(DeprecationWarning, match=r"detectors\.experiments\.runs"):
        from detectors.experiments import train_model
    assert train_model is runs.train_model
    with pytest.raises(AttributeError):
        detectors.experiments.no_such_name  # noqa: B018


def test_design_names_at_their_paths():
    for name in PUBLIC:
        assert name in detectors.__all__ and getattr(detectors, name) is not None, name
    assert issubclass(detectors.LikelihoodRatio, detectors.Detector)
    assert callable(detectors.metrics.evaluate) and detectors.evaluate is detectors.metrics.evaluate
    assert callable(detectors.zoo.available) and callable(detectors.zoo.load)
    for name in ("outlier_loss", "contrastive_loss", "margin_loss", "negative_loss", "approx_mass_penalty"):
        assert callable(getattr(detectors.objectives, name)), name
    for name in (
        "outlier_objective",
        "diff_dagger_objective",
        "contrastive_objective",
        "approx_mass_objective",
    ):
        assert callable(getattr(detectors.objectives, name)), name


def test_import_detectors_imports_no_deprecated_module_and_loads_them_on_access():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "import detectors, detectors.objectives, detectors.baselines, detectors.features, detectors.experiments\n"
        "import detectors.experiments.demo, detectors.experiments.reproduce, detectors.experiments.ood_suite\n"
        "import detectors.experiments.analysis, detectors.experiments.protocols, detectors.zoo.train\n"
        "import detectors.cli.reproduce, detectors.cli.ood_suite, detectors.cli.zoo\n"
        "warnings.simplefilter('always', DeprecationWarning)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    assert detectors.protocols.one_vs_rest is not None\n"
        "assert any('detectors.protocols is deprecated' in str(x.message) for x in w), w\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        detectors.no_such_thing  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert detectors.scores.Likelihood is detectors.Likelihood
