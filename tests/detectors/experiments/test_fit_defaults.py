"""The added OOD kinds of detectors.experiments.fit_defaults: shapes, determinism, and that
each is what its name says."""

import torch

from detectors.experiments.fit_defaults import EXTRA_KINDS, extra_sets, markdown
from detectors.experiments.ood_suite import in_and_base, summarise


def test_extra_sets_are_the_named_transformations():
    sets = extra_sets(30, seed=0)
    assert list(sets) == list(EXTRA_KINDS)
    for name, x in sets.items():
        assert x.shape == (30, 1, 28, 28) and x.dtype == torch.uint8, name
    _, base = in_and_base(30, 0)
    assert torch.equal(sets["FMNIST rotated 180"], base.flip(-1).flip(-2))
    assert torch.equal(sets["FMNIST shifted 7 px"][..., 7:, 7:], base[..., :21, :21])
    assert bool((sets["FMNIST shifted 7 px"][..., :7, :] == 0).all())
    assert bool((sets["FMNIST gamma 2"] <= base).all())  # darker, never brighter
    assert sets["rendered letters"].flatten(1).amax(1).min() >= 180  # every image has a glyph
    assert all(torch.equal(a, b) for a, b in zip(sets.values(), extra_sets(30, seed=0).values()))


def test_markdown_sorts_by_the_worst_case():
    results = {
        "a": summarise({"MNIST": 90.0, "rendered letters": 80.0}),
        "b": summarise({"MNIST": 99.0, "rendered letters": 95.0}),
    }
    lines = markdown(results).splitlines()
    assert lines[2].startswith("| b |") and "**95.0** (rendered letters)" in lines[2]
    assert "**80.0** (rendered letters) | 85.0 |" in lines[3]


def test_scored_images_are_neither_base_nor_calibration_images():
    from detectors.data import load_fashion_mnist
    from detectors.experiments.fit_defaults import scored_images
    from detectors.experiments.ood_suite import test_order

    test = load_fashion_mnist("test")[0].flatten(1)
    x = scored_images(1000).flatten(1)
    assert len(x) == 1000
    index = {bytes(t.numpy()): i for i, t in enumerate(test)}  # duplicates in the test set: any index
    used = {index[bytes(r.numpy())] for r in x}
    assert used.isdisjoint(set(test_order(0)[1000:2000].tolist())) and max(used) < 8000
