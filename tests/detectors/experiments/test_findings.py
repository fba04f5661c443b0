"""detectors.experiments.findings pairs zoo models that differ in one thing."""

import dataclasses
import os

import pytest

from detectors.experiments.findings import REPLICATED, ROWS, detectors_of, over_seeds, seeds_table
from detectors.zoo.recipes import RECIPES
from detectors.zoo.train import run_dir


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


def test_mass_finetunes_differ_from_each_other_only_in_alpha():
    base = RECIPES["fmnist-realnvp-mass-ft"]
    for name, alpha in (("fmnist-realnvp-mass-ft-a0.5", 0.5), ("fmnist-realnvp-mass-ft-a0.1", 0.1)):
        r = RECIPES[name]
        assert r.alpha == alpha and base.alpha == 2.0
        assert dataclasses.replace(r, name=base.name, summary=base.summary, alpha=2.0) == base


def test_seed_replicates_replace_only_the_finetunes(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"zoo fmnist-glow-from-general --seed 1"):
        detectors_of(seed=1, root=str(tmp_path))
    assert run_dir("runs/zoo", "fmnist-glow", 0) == os.path.join("runs/zoo", "fmnist-glow")
    assert run_dir("runs/zoo", "fmnist-glow", 2) == os.path.join("runs/zoo", "fmnist-glow-seed2")
    # every replicated model is a finetune of a seed-0 model, and each row uses at most one
    for name in REPLICATED:
        assert RECIPES[name].init is not None
    for _, _, needs in ROWS:
        assert len(REPLICATED.intersection(needs)) <= 1


def test_over_seeds_averages_each_row_over_the_seeds_that_have_it():
    a = {"r": {"per_set": {"MNIST": 0.6, "x": 1.0}}, "fixed": {"per_set": {"MNIST": 0.2, "x": 0.4}}}
    b = {"r": {"per_set": {"MNIST": 0.8, "x": 0.9}}}
    out = over_seeds({0: a, 1: b})
    assert out["r"]["per_set"] == pytest.approx({"MNIST": 0.7, "x": 0.95})
    assert out["r"]["worst_set"] == "MNIST" and list(out["r"]["seeds"]) == [0, 1]
    assert list(out["fixed"]["seeds"]) == [0] and out["fixed"]["worst"] == pytest.approx(0.2)
    table = seeds_table(out)
    assert "| r | 0: 60.0 (80.0), 1: 80.0 (85.0) |" in table


def test_check_replicates_lists_every_missing_replicate_in_one_error(tmp_path):
    from detectors import zoo
    from detectors.experiments.findings import check_replicates

    with pytest.raises(ValueError) as err:
        check_replicates([0, 3], str(tmp_path))
    msg = str(err.value)
    assert msg.startswith(f"{len(REPLICATED)} seed replicate(s) do not match")
    for name in REPLICATED:
        steps = zoo.card(name)["training"]["steps"]
        assert f"run python -m detectors zoo {name} --seed 3 --root {tmp_path} --steps {steps}" in msg
    # seed 0 alone needs no replicate: the shipped cards' steps
    assert check_replicates([0], str(tmp_path)) == {
        name: {0: zoo.card(name)["training"]["steps"]} for name in sorted(REPLICATED)
    }
