"""Feature-space detectors on degenerate data (isotropic, fewer samples than dimensions,
constant features, a low-rank subspace): a threshold calibrated by fit(x, fpr=0.1) flags about
10% of fresh i.i.d. data from the same distribution, or the fit refuses in one line."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from detectors.scores import KDE, KNN, PCA, MSEToMean
from detectors.scores.classifier import Mahalanobis


class Identity(nn.Module):
    """Features = the vectors themselves (for Mahalanobis)."""

    def features(self, x):
        return x

    def forward(self, x):
        return x[:, :2]


def _data(kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "isotropic":  # every direction carries the same variance: 0.9 needs them all
        return torch.randn(n, 4, dtype=torch.float64, generator=g)
    if kind == "n<d":
        return torch.randn(n, 300, dtype=torch.float64, generator=g)
    if kind == "constant features":
        x = torch.randn(n, 6, dtype=torch.float64, generator=g)
        x[:, 3:] = 0.7
        return x
    if kind == "low rank":  # 3 latent directions in 8 dimensions
        mix = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(99))
        return torch.randn(n, 3, dtype=torch.float64, generator=g) @ mix
    raise AssertionError(kind)


SIZES = {"isotropic": 2000, "n<d": 250, "constant features": 2000, "low rank": 2000}
DETECTORS = {
    "PCA(0.9)": lambda: PCA(0.9),
    "PCA(0.999)": lambda: PCA(0.999),
    "PCA(50)": lambda: PCA(50),
    "KNN": lambda: KNN(k=5),
    "KDE": lambda: KDE(),
    "MSEToMean": lambda: MSEToMean(),
    "Mahalanobis": lambda: Mahalanobis(Identity()),
}


@pytest.mark.parametrize("kind", list(SIZES))
@pytest.mark.parametrize("name", list(DETECTORS))
def test_a_threshold_at_fpr_10_percent_flags_about_10_percent_of_fresh_data(kind, name):
    x, fresh = _data(kind, SIZES[kind], 1), _data(kind, 4000, 2)
    det = DETECTORS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PCA's capping warning (tested below)
        if name == "Mahalanobis":
            det.fit(x, 0.1, y=torch.zeros(len(x), dtype=torch.long))
        else:
            det.fit(x, fpr=0.1)
    rate = det.predict(fresh).double().mean().item()
    assert 0.05 <= rate <= 0.15, rate  # PCA(0.9) on isotropic data flagged 0.13% before


def test_pca_caps_its_subspace_with_a_warning_and_leaves_a_real_residual():
    x = _data("isotropic", 500, 3)
    with pytest.warns(UserWarning, match=r"asks for 4 components.*vary in 4 directions.*keeping 3"):
        det = PCA(0.9).fit(x)
    assert det.n_components_ == 3
    s = det.score(_data("isotropic", 500, 4))
    assert float(s.median()) > 0.1  # the variance of one direction (chi-square 1: median 0.45)
    with pytest.warns(UserWarning, match=r"vary in 3 directions.*keeping 2"):
        assert PCA(0.99).fit(_data("constant features", 500, 5)).n_components_ == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when the request leaves a residual
        assert PCA(2).fit(x).n_components_ == 2
        restored = PCA(0.9)  # a stored state refitted on load (detector bundles) says it once, at fit
        restored._fit_features(x.numpy())
        assert restored.n_components_ == 3 and "keeping 3" in restored.capped_


def test_pca_with_fewer_samples_than_dimensions_keeps_what_every_fold_can_keep():
    x = _data("n<d", 50, 6)  # folds fit 40 vectors: at most 38 components leave a residual
    with pytest.warns(UserWarning, match="keeping 38"):
        det = PCA(0.999).fit(x)
    assert det.n_components_ == 38 and det.components_.shape == (38, 300)


def test_pca_refuses_data_that_vary_in_one_direction():
    line = torch.linspace(-1, 1, 40, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 2.0, 3.0]])
    for x in (line, torch.ones(40, 3, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"vary in [01] direction.*use MSEToMean") as err:
            PCA(1).fit(x)
        assert "\n" not in str(err.value)


def test_empirical_mahalanobis_refuses_fewer_samples_than_features():
    x = _data("n<d", 250, 7)  # 200 per fold < 300 features: the pseudo-inverse flagged 71-91%
    with pytest.raises(ValueError, match=r"covariance='empirical' needs more samples.*at least 377") as err:
        Mahalanobis(Identity(), covariance="empirical").fit(x, 0.1, y=torch.zeros(250, dtype=torch.long))
    assert "\n" not in str(err.value)
    # constant features make the covariance singular too, but harmlessly: accepted
    x = _data("constant features", 1000, 8)
    det = Mahalanobis(Identity(), covariance="empirical").fit(x, 0.1, y=torch.zeros(1000, dtype=torch.long))
    rate = det.predict(_data("constant features", 4000, 9)).double().mean().item()
    assert 0.05 <= rate <= 0.15, rate
