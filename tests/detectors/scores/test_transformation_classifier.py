"""TransformationClassifier: fitted on images, it scores flipped, rotated and inverted copies
of unseen in-distribution images as more anomalous than the images themselves."""

import numpy as np
import pytest
import torch

import detectors
from detectors.data import load_fashion_mnist


@pytest.fixture(scope="module")
def fitted():
    x, _ = load_fashion_mnist("train")
    det = detectors.TransformationClassifier(max_fit=40, progress=False)
    det._fit(x[:120])
    return det


@pytest.fixture(scope="module")
def test_images():
    return load_fashion_mnist("test")[0][:40]


def test_transformed_images_score_higher(fitted, test_images):
    s0 = fitted.score(test_images)
    assert s0.dtype == torch.float64 and s0.shape == (40,) and bool(torch.isfinite(s0).all())
    for t in (lambda x: x.flip(-2), lambda x: x.rot90(1, (-2, -1)), lambda x: 255 - x):
        s = fitted.score(t(test_images).contiguous())
        # the pairwise AUROC of transformed vs untransformed (a small classifier: 120 images)
        auroc = (s[:, None] > s0[None, :]).double().mean()
        assert auroc > 0.75 and s.mean() > s0.mean() + 0.2, (auroc, s.mean(), s0.mean())


def test_scores_of_features_equal_scores_of_images(fitted, test_images):
    from detectors.features import image_features

    f = image_features(test_images, fitted.feature_size)
    torch.testing.assert_close(fitted.score(f), fitted.score(test_images), rtol=1e-9, atol=1e-9)


def test_state_round_trips(fitted, test_images):
    other = detectors.TransformationClassifier(progress=False)
    other.load_tensors(**fitted.tensors())
    torch.testing.assert_close(other.score(test_images), fitted.score(test_images))
    with pytest.raises(ValueError, match="expected coef"):
        other.load_tensors(torch.zeros(3, 8), torch.zeros(3))


def test_score_is_minus_log_probability_of_the_identity(fitted, test_images):
    from detectors.features import image_features

    f = image_features(test_images, fitted.feature_size).double().numpy()
    logits = f @ fitted.coef_.T + fitted.intercept_
    p0 = np.exp(logits[:, 0]) / np.exp(logits).sum(1)
    np.testing.assert_allclose(fitted.score(test_images).numpy(), -np.log(p0), rtol=1e-9)


def test_bad_inputs_are_refused():
    det = detectors.TransformationClassifier(progress=False)
    with pytest.raises(ValueError, match="square images"):
        det._fit(torch.zeros(4, 1, 28, 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 2"):
        det._fit(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="fit"):
        det.score(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    for bad in (dict(max_fit=1), dict(C=0), dict(seed=-1)):
        with pytest.raises(ValueError):
            detectors.TransformationClassifier(**bad)
