"""The offline OOD suite: every set is built, deterministic, of the right kind; the worst
case and the recommendation follow the per-set AUROCs."""

import pytest
import torch

from detectors.experiments.ood_suite import (
    KINDS,
    MAX_N,
    in_and_base,
    markdown,
    ood_sets,
    recommend,
    score_suite,
)
from detectors.scores import Detector


def test_sets_are_offline_uint8_and_deterministic():
    a, b = ood_sets(12, seed=1), ood_sets(12, seed=1)
    assert list(a) == list(KINDS)
    for name, x in a.items():
        assert x.shape == (12, 1, 28, 28) and x.dtype == torch.uint8, name
        assert torch.equal(x, b[name]), name
    x_in, base = in_and_base(12, seed=1)
    assert torch.equal(a["FMNIST inverted"], 255 - base) and torch.equal(
        a["FMNIST upside down"], base.flip(-2)
    )
    # transformations start from test images disjoint from the scored ones
    assert not any(torch.equal(u, v) for u in x_in for v in base)
    # shuffling keeps each image's pixel values, only their places change
    assert torch.equal(a["FMNIST pixels shuffled"].flatten(1).sort(1).values, base.flatten(1).sort(1).values)
    assert (a["constant"].float().flatten(1).std(1) == 0).all() and a["constant"].float().std() > 10


@pytest.mark.parametrize("n", [0, MAX_N + 1, 2.5])
def test_set_size_outside_what_every_source_has_is_refused(n):
    with pytest.raises(ValueError, match=f"expected an integer in \\[1, {MAX_N}\\]"):
        ood_sets(n)


class MeanBrightness(Detector):
    """Scores the mean pixel value: brighter = more anomalous."""

    def _score_batch(self, x):
        return x.float().flatten(1).mean(1)


def test_worst_case_and_recommendation():
    x_in = torch.full((10, 1, 28, 28), 100, dtype=torch.uint8)
    sets = {
        "bright": torch.full((10, 1, 28, 28), 200, dtype=torch.uint8),
        "dark": torch.full((10, 1, 28, 28), 10, dtype=torch.uint8),
    }
    res = score_suite({"brightness": MeanBrightness()}, x_in, sets)["brightness"]
    assert res["per_set"] == {"bright": 1.0, "dark": 0.0}
    assert res["worst"] == 0.0 and res["worst_set"] == "dark" and res["mean"] == 0.5
    results = {
        "a": {"worst": 0.95, "per_set": {"s": 0.95}, "worst_set": "s", "mean": 0.95},
        "b": {"worst": 0.97, "per_set": {"s": 0.97}, "worst_set": "s", "mean": 0.97},
        "c": {"worst": 0.4, "per_set": {"s": 0.4}, "worst_set": "s", "mean": 0.4},
    }
    assert recommend(results, floor=0.9) == ["b", "a"]
    assert recommend(results, floor=0.99) == ["b"]
    assert "No detector reaches" in markdown(results, floor=0.99)


def test_named_ensembles_refuse_one_member_and_duplicates_and_hint_at_features():
    from detectors.experiments.runs import ensembles

    dets = {"likelihood": object(), "last scale": object()}
    for spec in ("likelihood", "likelihood+likelihood", "likelihood+"):
        with pytest.raises(ValueError, match="two or more different"):
            ensembles(dets, [spec], torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="need --features"):
        ensembles(dets, ["likelihood+features: PCA"], torch.zeros(2, 1, 4, 4))


def test_zoo_is_reachable_from_import_detectors():
    import detectors

    assert "fmnist-glow" in detectors.zoo.available()
