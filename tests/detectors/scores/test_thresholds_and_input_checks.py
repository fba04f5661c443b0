"""Detectors' thresholds, arguments and inputs: fit(x, fpr) hits its FPR on fresh
in-distribution data, KDE's leave-one-out scores, numeric arguments are checked, floats
outside [-0.5, 0.5] are refused, an untrained model warns."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import invflow
from detectors.scores import (
    KDE,
    KNN,
    PCA,
    ApproximateMass,
    BitsPerDim,
    Ensemble,
    InputComplexity,
    Likelihood,
    LikelihoodRatio,
    MSERatio,
    MSEToMean,
    ScaleContribution,
    Typicality,
)
from detectors.scores.classifier import Energy, Mahalanobis, MaxSoftmax
from invflow.layers import UninitializedWarning


def _vector_flow(seed=0):
    torch.manual_seed(seed)
    m = invflow.VectorFlow(4, blocks=2, hidden=8).double()
    m.train()(torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 100)))
    return m


class Features(nn.Module):
    """A 'classifier' on vectors: features = x, logits = a fixed linear map (for Mahalanobis,
    MSP and energy with labels from the sign of the first coordinate)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2).double()

    def features(self, x):
        return x

    def forward(self, x):
        return self.head(x)


def _gauss(n, seed, d=4):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _detectors():
    aux = _gauss(500, 9) + 3
    flow = _vector_flow(3)
    flow.eval()
    feats = KNN(k=5).fit(_gauss(600, 11))
    pca = PCA(n_components=2).fit(_gauss(600, 12))
    return {
        "MSEToMean": MSEToMean(),
        "MSERatio": MSERatio(aux),
        "KNN": KNN(k=5),
        "KDE": KDE(),
        "PCA": PCA(n_components=2),
        "Likelihood": Likelihood(flow, batch_size=4096),
        "Typicality": Typicality(flow),
        "Ensemble": Ensemble({"knn": feats, "pca": pca}),
        "Mahalanobis": Mahalanobis(Features(), batch_size=4096),
        "LikelihoodRatio": LikelihoodRatio(flow, _vector_flow(4).eval(), batch_size=4096),
        "BitsPerDim": BitsPerDim(flow, batch_size=4096),
        "ScaleContribution": ScaleContribution(flow, batch_size=4096),
        "ApproximateMass": ApproximateMass(flow, batch_size=4096),
        "MaxSoftmax": MaxSoftmax(Features(), batch_size=4096),
        "Energy": Energy(Features(), batch_size=4096),
    }


@pytest.mark.parametrize(
    "name",
    [
        "MSEToMean",
        "MSERatio",
        "KNN",
        "KDE",
        "PCA",
        "Likelihood",
        "Typicality",
        "Ensemble",
        "Mahalanobis",
        "LikelihoodRatio",
        "BitsPerDim",
        "ScaleContribution",
        "ApproximateMass",
        "MaxSoftmax",
        "Energy",
    ],
)
def test_fit_hits_the_fpr_on_fresh_in_distribution_data(name):
    det = _detectors()[name]
    train, fresh = _gauss(800, 1), _gauss(6000, 2)
    if name == "Mahalanobis":
        det.fit(train, 0.05, y=(train[:, 0] > 0).long())
    else:
        det.fit(train, fpr=0.05)
    rate = det.predict(fresh).double().mean().item()
    assert rate == pytest.approx(0.05, abs=0.025), rate  # KDE flagged 53% before


def test_kde_leave_one_out_scores_equal_a_kde_fitted_without_the_point():
    x = _gauss(50, 4)
    det = KDE(bandwidth=0.7).fit(x)
    loo = det._held_out_scores(x.numpy())
    for i in (0, 17, 49):
        rest = torch.cat([x[:i], x[i + 1 :]])
        other = KDE(bandwidth=0.7)
        other._fit_features(rest.numpy())
        assert loo[i] == pytest.approx(float(other._score_features(x[i : i + 1].numpy())[0]), rel=1e-10)


BAD_NUMBERS = [float("nan"), float("inf"), -1.0, "1", None]


@pytest.mark.parametrize("bad", BAD_NUMBERS)
@pytest.mark.parametrize(
    "call",
    [
        lambda b: Likelihood(_vector_flow(), batch_size=b),
        lambda b: KNN(k=b),
        lambda b: KDE(bandwidth=b if b != "1" else "x"),
        lambda b: PCA(n_components=b),
        lambda b: Typicality(_vector_flow(), bootstrap=b),
        lambda b: MaxSoftmax(Features(), temperature=b),
        lambda b: Energy(Features(), temperature=b),
        lambda b: Mahalanobis(Features(), epsilon=b),
        lambda b: InputComplexity(_vector_flow(), compress_level=b),
        lambda b: Likelihood(_vector_flow()).fit(_gauss(20, 0), fpr=b),
        lambda b: Likelihood(_vector_flow()).calibrate(_gauss(20, 0), fpr=b),
    ],
)
def test_detector_numeric_arguments_are_validated(call, bad):
    if bad is None:
        bad = float("nan")
    with pytest.raises((ValueError, TypeError)) as err:
        call(bad)
    assert "must be" in str(err.value)


def test_detectors_refuse_float_images_outside_the_preprocessed_range():
    glow = invflow.Glow(1, 8, levels=2, steps=1, hidden=4).double()
    k = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    glow.train()(invflow.data.preprocess(k, dtype=torch.float64))
    det = Likelihood(glow).fit(k)
    for bad in (k.double(), k.double() / 255):
        for method in (det.score, det.predict, det.fit):
            with pytest.raises(ValueError, match=r"\[-0.5, 0.5\].*invflow.data.preprocess"):
                method(bad)
    assert det.score(invflow.data.preprocess(k, dequantize=False, dtype=torch.float64)).shape == (6,)
    ratio = LikelihoodRatio(glow, glow)
    with pytest.raises(ValueError, match="invflow.data.preprocess"):
        ratio.score(k.double())


def test_scoring_an_untrained_model_warns_once_per_call():
    glow = invflow.Glow(1, 8, levels=2, steps=1, hidden=4).double()
    k = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    det = Likelihood(glow, batch_size=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        det.score(k)
    ours = [w for w in seen if issubclass(w.category, UninitializedWarning)]
    assert len(ours) == 1 and "Likelihood.score" in str(ours[0].message)
    glow.train()(invflow.data.preprocess(k, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det.score(k)
