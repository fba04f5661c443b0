"""detectors.experiments.photometric: its transformations and a tiny end-to-end run of both CNNs."""

import pytest
import torch

from detectors.experiments.fit_defaults import EXTRA_KINDS
from detectors.experiments.ood_suite import KINDS
from detectors.experiments.photometric import _transform, self_supervised, supervised


def test_transformations_keep_the_uint8_range_and_do_what_they_say():
    x = torch.arange(256.0).view(1, 1, 16, 16)
    g2 = _transform("gamma 2", x)
    assert g2.min() == 0 and g2.max() == 255 and (g2 <= x).all() and (g2.flatten().diff() >= 0).all()
    assert (_transform("gamma 0.5", x) >= x).all()
    assert torch.equal(_transform("inversion", x), 255 - x)
    assert torch.equal(_transform("vertical flip", x), x.flip(-2))
    with pytest.raises(ValueError, match="unknown transformation 'gamma 3'.*gamma 0.5"):
        _transform("gamma 3", x)


def test_unknown_classes_are_refused_before_training():
    with pytest.raises(ValueError, match="unknown transformation"):
        self_supervised(("gamma 0.5", "sepia"), n_fit=8, epochs=1, n=8, progress=False)


def test_tiny_runs_score_every_set():
    auroc = supervised("inversion", n_train=256, epochs=2, progress=False)
    assert auroc > 90  # inversion is plain to see, even after 4 steps' worth of training
    assert 0 <= supervised(n_train=64, epochs=1, dither=True, progress=False) <= 100
    per = self_supervised(n_fit=64, epochs=1, n=40, progress=False)
    assert list(per) == [*KINDS, *EXTRA_KINDS]
    assert all(0 <= v <= 100 for v in per.values())


def test_the_same_seed_gives_the_same_result():
    a = supervised(n_train=64, epochs=1, seed=3, progress=False)
    b = supervised(n_train=64, epochs=1, seed=3, progress=False)
    assert a == b


def test_counts_are_checked_before_training():
    with pytest.raises(ValueError, match="epochs"):
        supervised(n_train=64, epochs=0, progress=False)
    with pytest.raises(ValueError, match="n_fit"):
        self_supervised(n_fit=0, progress=False)
