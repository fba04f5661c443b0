"""Detectors refuse what would give silent garbage, in one line: non-finite thresholds, inputs,
transforms, weights and scores; models that disagree or do not fit the detector, at
construction and naming the model; images of another size (with resize=True they are resized
as detector bundles do)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import invflow
from detectors.data import ImagePolicy
from detectors.scores import (
    KNN,
    PCA,
    Detector,
    Ensemble,
    InputComplexity,
    Likelihood,
    LikelihoodRatio,
    MSERatio,
    ScaleContribution,
    Typicality,
)
from detectors.scores.classifier import Mahalanobis, MaxSoftmax

NAN, INF = float("nan"), float("inf")


def _glow(channels=1, size=8, seed=0):
    torch.manual_seed(seed)
    glow = invflow.Glow(channels, size, levels=2, steps=1, hidden=4).double()
    k = torch.randint(0, 256, (8, channels, size, size), dtype=torch.uint8)
    glow.train()(invflow.data.preprocess(k, dtype=torch.float64))
    return glow.eval()


def _flow(d=4):
    torch.manual_seed(0)
    m = invflow.VectorFlow(d, blocks=2, hidden=8).double()
    m.train()(torch.randn(64, d, dtype=torch.float64))
    return m.eval()


def _images(n, channels=1, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


class Logits(nn.Module):
    """A classifier on vectors whose logits are the first two coordinates (NaN stays NaN)."""

    def features(self, x):
        return x

    def forward(self, x):
        return x[:, :2]


# -- thresholds -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [NAN, INF, -INF, "0.5", True])
def test_a_threshold_or_fpr_set_by_hand_must_be_finite(bad):
    det = Likelihood(_flow()).fit(torch.randn(50, 4, dtype=torch.float64))
    before = det.threshold
    with pytest.raises((ValueError, TypeError), match="threshold must be a finite number") as err:
        det.threshold = bad
    _one_line(err)
    assert det.threshold == before
    with pytest.raises((ValueError, TypeError), match="fpr must be"):
        det.fpr = bad
    det.threshold = None  # uncalibrated again
    with pytest.raises(RuntimeError, match="no threshold yet"):
        det.predict(torch.randn(3, 4, dtype=torch.float64))
    det.threshold = np.float32(2.5)
    assert det.threshold == 2.5 and isinstance(det.threshold, float)


class _Constant(Detector):
    """Scores every input with ``value`` (to reach the threshold's own checks)."""

    def __init__(self, value, **kw):
        super().__init__(**kw)
        self.value = value

    def _score_batch(self, x):
        return torch.full((len(x),), self.value, dtype=torch.float64)


def test_calibration_scores_that_give_no_finite_threshold_are_refused():
    x = torch.zeros(20, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"threshold at fpr=0.05 would be inf \(20 of 20 .* infinite\)"):
        _Constant(INF).fit(x)
    with pytest.raises(ValueError, match=r"20 of 20 scores are NaN for finite inputs"):
        _Constant(NAN).fit(x)


# -- non-finite inputs, transforms, weights, outputs -------------------------------------------
def _every_detector():
    flow = _flow()
    return {
        "Likelihood": Likelihood(flow),
        "Typicality": Typicality(flow),
        "LikelihoodRatio": LikelihoodRatio(flow, _flow()),
        "PCA": PCA(2),
        "KNN": KNN(3),
        "MSERatio": MSERatio(torch.randn(30, 4, dtype=torch.float64) + 2),
        "Mahalanobis": Mahalanobis(Logits()),
        "MaxSoftmax": MaxSoftmax(Logits()),
        "Ensemble": Ensemble({"likelihood": Likelihood(flow), "knn": KNN(3)}),
    }


@pytest.mark.parametrize("name", list(_every_detector()))
def test_nan_and_inf_inputs_are_refused_by_fit_and_score_naming_the_rows(name):
    det = _every_detector()[name]
    x = torch.randn(60, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    kw = {"y": (x[:, 0] > 0).long()} if name == "Mahalanobis" else {}
    bad = x.clone()
    bad[7, 1], bad[9, 0] = NAN, INF
    with pytest.raises(ValueError, match=r"2 of 60 inputs contain NaN or Inf \(first at index 7\)") as err:
        det.fit(bad, **kw)
    _one_line(err)
    det.fit(x, **kw)
    with pytest.raises(ValueError, match=r"inputs contain NaN or Inf"):
        det.score(bad[5:10])
    assert bool(torch.isfinite(det.score(x[:5])).all())


def test_a_transform_that_gives_nan_is_refused_not_floored():
    def broken(t):
        out = t.double().flatten(1).clone()
        out[1] = NAN
        return out

    images = _images(10, size=2)
    with pytest.raises(
        ValueError, match=r"transform= gave NaN or Inf for 1 of 10 inputs \(first at index 1\)"
    ):
        Likelihood(_flow(), transform=broken).score(images)
    with pytest.raises(ValueError, match=r"PCA: the transform gave NaN or Inf features for 1 of 10"):
        PCA(2, transform=broken).fit(images)
    aux = torch.randn(10, 4, dtype=torch.float64)
    aux[3, 3] = NAN
    with pytest.raises(ValueError, match=r"MSERatio: got NaN or Inf features for 1 of 10"):
        MSERatio(aux)


def test_a_model_with_nan_weights_is_refused_at_construction_naming_it():
    flow = _flow()
    with torch.no_grad():
        next(iter(flow.parameters())).fill_(NAN)
    with pytest.raises(
        ValueError, match=r"Likelihood: model \(VectorFlow, input \[4\]\) has NaN or Inf in"
    ) as err:
        Likelihood(flow)
    _one_line(err)
    with pytest.raises(ValueError, match=r"LikelihoodRatio: general_model \(VectorFlow"):
        LikelihoodRatio(_flow(), flow)


def test_nan_scores_from_finite_inputs_are_refused():
    class NanLogits(Logits):
        def forward(self, x):
            out = x[:, :2].clone()
            out[0] = NAN
            return out

    with pytest.raises(ValueError, match=r"MaxSoftmax.score: 1 of 4 scores are NaN for finite inputs"):
        MaxSoftmax(NanLogits()).score(torch.randn(4, 4, dtype=torch.float64))


# -- models that do not fit ------------------------------------------------------------------
def test_models_that_take_different_images_are_refused_at_construction_naming_both():
    with pytest.raises(ValueError) as err:
        LikelihoodRatio(_glow(1), _glow(3))
    msg = _one_line(err)
    assert "in_model (Glow, input [1, 8, 8], grey) and general_model (Glow, input [3, 8, 8], RGB)" in msg


def test_models_that_cannot_serve_the_detector_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"InputComplexity: needs a model of grey or RGB images.*VectorFlow"):
        InputComplexity(_flow())
    with pytest.raises(
        ValueError, match=r"scale index 5 out of range for model \(Glow, input \[1, 8, 8\], grey\) with 2"
    ):
        ScaleContribution(_glow(), scales=[0, 5])
    assert ScaleContribution(_glow(), scales=[0, -2]).scales == [0, -2]


def test_images_of_another_size_or_mode_raise_naming_the_model_and_the_fix():
    det = Likelihood(_glow(1, 8))
    for method in (det.score, det.fit):
        with pytest.raises(ValueError) as err:
            method(_images(4, channels=3, size=16))
        msg = _one_line(err)
        assert "model (Glow, input [1, 8, 8], grey) takes images [1, 8, 8], got [3, 16, 16]" in msg
        assert "resize=True" in msg and "ImagePolicy(8, 1).apply(images)" in msg
    with pytest.raises(ValueError, match=r"takes inputs \[B, 4\], got \[5, 3\]"):
        Likelihood(_flow()).score(torch.randn(5, 3, dtype=torch.float64))


# -- resize=True -----------------------------------------------------------------------------
def test_resize_brings_any_images_to_the_models_size_and_mode_as_bundles_do():
    glow = _glow(1, 8)
    big = _images(6, channels=3, size=16)
    expected = Likelihood(glow).score(ImagePolicy(8, 1).apply(big))
    det = Likelihood(glow, resize=True)
    torch.testing.assert_close(det.score(big), expected, rtol=0, atol=0)
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in big[:3]]
    pil.append(Image.fromarray(np.full((12, 20), 90, dtype=np.uint8)))  # another size, grey
    scores = det.fit(pil).score(pil)
    torch.testing.assert_close(scores[:3], expected[:3], rtol=0, atol=0)
    assert det.predict(big).shape == (6,)
    # a batch that already has the model's shape passes unchanged (floats are not re-quantised)
    x = invflow.data.preprocess(_images(3), dtype=torch.float64)
    torch.testing.assert_close(det.score(x), Likelihood(glow).score(x), rtol=0, atol=0)
    # composites resize once for their members
    ens = Ensemble({"likelihood": Likelihood(glow), "typicality": Typicality(glow)}, resize=True)
    assert ens.fit(_images(20, channels=3, size=12)).score(big).shape == (6,)


def test_resize_needs_square_grey_or_rgb_models_and_a_bool():
    with pytest.raises(ValueError, match=r"resize=True needs models that take square grey or RGB images"):
        Likelihood(_flow(), resize=True)
    with pytest.raises(TypeError, match="resize must be True or False"):
        Likelihood(_glow(), resize="yes")


def test_a_models_own_samples_are_scored_and_raw_pixels_refused():
    glow = _glow(1, 8)
    samples = glow.sample(16, temperature=1.0, generator=torch.Generator().manual_seed(0)).double()
    assert float(samples.abs().max()) > 0.5  # they leave the data's cube
    for det in (Likelihood(glow), Typicality(glow).fit(_images(20)), InputComplexity(glow)):
        assert bool(torch.isfinite(det.score(samples)).all())
    with pytest.raises(ValueError, match=r"look like 0..255 pixel values.*invflow.data.preprocess") as err:
        Likelihood(glow).score(_images(4).double())
    _one_line(err)


def test_a_model_that_is_not_one_is_refused_at_construction():
    for make in (
        Likelihood,
        Typicality,
        InputComplexity,
        ScaleContribution,
        lambda m: LikelihoodRatio(_flow(), m),
    ):
        for bad in (None, "fmnist-glow", 3):
            with pytest.raises(TypeError, match=r"must be a flow \(an nn.Module with log_prob") as err:
                make(bad)
            _one_line(err)
    with pytest.raises(TypeError, match=r"model must be a flow .*got str; load it first"):
        Likelihood("fmnist-glow")
    with pytest.raises(TypeError, match=r"MaxSoftmax: model must be a classifier"):
        MaxSoftmax(None)


def test_features_of_another_dimension_than_fitted_are_refused():
    x = torch.randn(50, 4, dtype=torch.float64)
    for det in (PCA(2), KNN(3), MSERatio(x + 1)):
        det.fit(x)
        with pytest.raises(ValueError, match=r"fitted on 4-dimensional features, got 5-dimensional") as err:
            det.score(torch.randn(3, 5, dtype=torch.float64))
        _one_line(err)
    ens = Ensemble({"pca": PCA(2)}).fit(x)
    with pytest.raises(ValueError, match=r"PCA.score: fitted on 4-dimensional features"):
        ens.score(torch.randn(3, 5, dtype=torch.float64))
