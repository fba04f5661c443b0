"""detectors.bundle.catalogue: every detector a bundle can fit, described without result
numbers (they live in docs/results.md and go stale in code)."""

from __future__ import annotations

import re

from detectors.bundle import CATALOGUE, DEFAULT_DETECTORS, FitConfig, members, with_members
from detectors.bundle.catalogue import ENSEMBLE


def test_catalogue_strings_carry_no_result_numbers():
    for name, spec in CATALOGUE.items():
        assert "AUROC" not in spec.source, name
        assert not re.search(r"\b\d+\.\d\b", spec.source), (name, spec.source)


def test_default_set_and_ensembles_name_catalogue_detectors():
    from detectors.bundle.catalogue import DEFAULT_WITH_GENERAL

    assert set(DEFAULT_DETECTORS) | set(DEFAULT_WITH_GENERAL) <= set(CATALOGUE)
    assert FitConfig().detectors is None  # chosen from the data: fit.resolve_detectors
    for name, spec in CATALOGUE.items():
        assert (spec.needs == ENSEMBLE) == bool(members(name))
        assert set(members(name)) <= set(CATALOGUE)
    assert with_members(["png+pca"]) == ("png+pca", "png", "pca")


def test_fit_runs_in_named_steps():
    from detectors.bundle import fit

    for step in (
        "read_train",
        "choose_policy",
        "start_run",
        "split_train",
        "train_flows",
        "extract_features",
        "train_feature_flow",
        "fit_detectors",
        "write_bundle",
    ):
        assert callable(getattr(fit, step)), step
