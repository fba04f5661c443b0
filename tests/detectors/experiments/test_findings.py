"""detectors.experiments.findings pairs zoo models that differ in one thing."""

from detectors.experiments.findings import ROWS, detectors_of
from detectors.zoo.recipes import RECIPES


def test_rows_pair_models_that_differ_in_one_setting():
    plain, outlier = RECIPES["fmnist-glow-from-general"], RECIPES["fmnist-glow-from-general-outlier"]
    assert plain.init == outlier.init == "photos-glow-broad" and outlier.reference == "photos-glow-broad"
    assert (plain.objective, outlier.objective) == ("nll", "outlier")
    assert (plain.lr, plain.warmup, plain.translate) == (outlier.lr, outlier.warmup, outlier.translate)
    ft = RECIPES["fmnist-realnvp-mass-ft"]
    assert ft.init == "fmnist-realnvp" and ft.objective == "approx_mass" and ft.arch == "realnvp"


def test_detectors_of_builds_every_row_sharing_each_model():
    dets = detectors_of()
    assert list(dets) == [name for name, _, _ in ROWS]
    for name, cls, _ in ROWS:
        assert type(dets[name]).__name__ == cls
    # one memoised model per zoo name: the likelihood and the Diff of a model share it
    assert dets["likelihood"].model is dets["Diff"].in_model
    assert dets["outlier loss: Diff"].general_model is dets["Diff"].general_model
