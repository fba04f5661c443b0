"""A model's own samples leave [-0.5, 0.5] and every detector kind scores them; floats that look
unpreprocessed (no negative value, maximum above 0.5: 0..255 or ToTensor 0..1) are refused
everywhere with the one rule of ``invflow.validation.check_preprocessed``."""

from __future__ import annotations

import pytest
import torch

import invflow
from detectors.baselines import ResNetClassifier
from detectors.experiments.analysis import fourier_mix, pixel_differences
from detectors.features import image_features
from detectors.inputs import as_images_with_labels, floats_to_uint8
from detectors.scores import (
    KDE,
    KNN,
    PCA,
    ApproximateMass,
    BinaryClassifierScore,
    BitsPerDim,
    Energy,
    Ensemble,
    InputComplexity,
    LastScale,
    Likelihood,
    LikelihoodRatio,
    Mahalanobis,
    MaxSoftmax,
    MSEToMean,
    ScaleContribution,
    ScaleRatio,
    Typicality,
)

RAW = r"look like 0..255 pixel values"


@pytest.fixture(scope="module")
def glow():
    torch.manual_seed(0)
    m = invflow.Glow(1, 8, levels=2, steps=1, hidden=4).double()
    k = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    m.train()(invflow.data.preprocess(k, dtype=torch.float64))
    return m.eval()


@pytest.fixture(scope="module")
def samples(glow):
    s = glow.sample(12, temperature=1.0, generator=torch.Generator().manual_seed(0)).double()
    assert float(s.min()) < -0.5 and float(s.max()) > 0.5  # they leave the cube on both sides
    return s


def _images(n, seed=1):
    return torch.randint(
        0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _classifier(classes):
    torch.manual_seed(1)
    return ResNetClassifier(in_channels=1, num_classes=classes, image_size=8, width=4).double().eval()


_LABELS = torch.arange(20) % 3

#: name -> (make the detector from a glow, fit keyword arguments or None for no fit)
DETECTORS = {
    "Likelihood": (Likelihood, None),
    "BitsPerDim": (BitsPerDim, None),
    "LikelihoodRatio": (lambda g: LikelihoodRatio(g, g), None),
    "ScaleContribution": (ScaleContribution, None),
    "LastScale": (LastScale, None),
    "ScaleRatio": (lambda g: ScaleRatio(g, g), None),
    "ApproximateMass": (ApproximateMass, None),
    "InputComplexity": (InputComplexity, None),
    "Typicality": (lambda g: Typicality(g, bootstrap=50), {}),
    "MaxSoftmax": (lambda g: MaxSoftmax(_classifier(3)), None),
    "Energy": (lambda g: Energy(_classifier(3)), None),
    "Mahalanobis": (lambda g: Mahalanobis(_classifier(3), epsilon=0.01), {"y": _LABELS}),
    "BinaryClassifierScore": (lambda g: BinaryClassifierScore(_classifier(1)), None),
    "KNN": (lambda g: KNN(3, feature_size=32), {}),
    "KDE": (lambda g: KDE(feature_size=32), {}),
    "PCA": (lambda g: PCA(2, feature_size=32), {}),
    "MSEToMean": (lambda g: MSEToMean(feature_size=32), {}),
    "Ensemble": (lambda g: Ensemble({"likelihood": Likelihood(g), "png": InputComplexity(g)}), {}),
    "Likelihood(resize=True)": (lambda g: Likelihood(g, resize=True), None),
}


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_kind_scores_a_models_own_samples_and_refuses_raw_pixels(glow, samples, name):
    make, fit_kw = DETECTORS[name]
    det = make(glow)
    if fit_kw is not None:
        det.fit(_images(20), **fit_kw)
    s = det.score(samples)
    assert s.shape == (len(samples),) and bool(torch.isfinite(s).all())
    raw = _images(4).double()  # 0..255 given as floats
    with pytest.raises(ValueError, match=RAW) as err:
        det.score(raw)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"look like torchvision's ToTensor 0..1 floats"):
        det.score(raw / 255)


def test_the_classifier_baseline_takes_samples_and_refuses_raw_pixels(samples):
    model = _classifier(3)
    assert model(samples).shape == (12, 3)
    with pytest.raises(ValueError, match=r"ResNetClassifier: input values outside .* look like 0..255"):
        model(_images(4).double())


def test_mahalanobis_perturbation_does_not_clip_a_sample_and_scores_each_alone(samples):
    det = Mahalanobis(_classifier(3), epsilon=0.01).fit(_images(20), y=torch.arange(20) % 3)
    together = det.score(samples)
    alone = torch.cat([det.score(samples[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together[:3], alone, rtol=1e-12, atol=1e-12)


def test_resize_takes_lists_of_samples_judged_together(glow, samples):
    det = Likelihood(glow, resize=True)
    as_list = [t for t in samples]
    bright = samples[:1].clamp(min=0.0) + 0.1  # one all-positive sample reaching above 0.5
    assert float(bright.min()) >= 0 and float(bright.max()) > 0.5
    scores = det.score([bright[0]] + as_list)  # judged over the list, as for one batch
    assert scores.shape == (13,) and bool(torch.isfinite(scores).all())
    images, _ = as_images_with_labels(as_list)
    torch.testing.assert_close(torch.stack(images), invflow.data.to_images(samples), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"images: input values outside .* 0..255 pixel values"):
        as_images_with_labels([t for t in _images(3).double()])
    with pytest.raises(ValueError, match=r"images: item 1: floating images hold NaN"):
        as_images_with_labels([samples[0], samples[1] * float("nan")])


def test_floats_to_uint8_maps_samples_like_to_images_and_refuses_raw_pixels(samples):
    torch.testing.assert_close(floats_to_uint8(samples), invflow.data.to_images(samples), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"where: input values outside .* 0..255"):
        floats_to_uint8(_images(2).double(), "where")


def test_feature_and_analysis_functions_apply_the_rule(samples):
    assert image_features(samples, 32).shape == (12, 1280)
    raw = _images(4).double()
    with pytest.raises(ValueError, match=r"image_features: input values outside .* 0..255 pixel values"):
        image_features(raw, 32)
    assert pixel_differences(samples).shape == (12, 1, 6, 6)
    with pytest.raises(ValueError, match=r"pixel_differences: input values outside .* 0..255"):
        pixel_differences(raw)
    assert fourier_mix(samples, samples.flip(0)).shape == samples.shape
    with pytest.raises(ValueError, match=r"fourier_mix: amplitude_images: input values outside"):
        fourier_mix(raw, raw)
