"""Ensemble.fit fits the members that are not fitted yet (on one seeded part of its data) and
standardises and calibrates on the rest; fitted members are left alone; members must take
the same inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import invflow
from detectors.scores import KNN, PCA, Ensemble, Likelihood, MSEToMean, Typicality
from detectors.scores.classifier import Mahalanobis


def _gauss(n, seed, d=4):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _flow(seed=0, d=4):
    torch.manual_seed(seed)
    m = invflow.VectorFlow(d, blocks=2, hidden=8).double()
    m.train()(_gauss(64, seed + 100, d))  # data-dependent ActNorm initialisation
    return m.eval()


class Features(nn.Module):
    """A 'classifier' on vectors: features = x (for Mahalanobis)."""

    def features(self, x):
        return x

    def forward(self, x):
        return x[:, :2]


def _fit_part(n, seed=0, fraction=0.5):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(fraction * n))
    return perm[:k].sort().values, perm[k:].sort().values


def test_unfitted_members_are_fitted_on_one_part_and_standardised_on_the_other():
    x = _gauss(600, 1)
    pca, lik = PCA(n_components=2), Likelihood(_flow())
    ens = Ensemble({"pca": pca, "likelihood": lik})
    assert not pca.is_fitted and lik.is_fitted and not ens.is_fitted
    ens.fit(x, fpr=0.1)  # raised "PCA.score: call fit(x_in) first" before
    assert pca.is_fitted and ens.is_fitted and ens.fpr == 0.1
    fit_idx, rest_idx = _fit_part(600)
    torch.testing.assert_close(torch.from_numpy(pca.mean_), x[fit_idx].mean(0))  # fitted on its part only
    s = pca.score(x[rest_idx])
    assert ens._stats["pca"] == pytest.approx((float(s.mean()), float(s.std())), rel=1e-12)
    assert pca.threshold is not None  # the member was calibrated by its own fit
    # the fused threshold holds on fresh data from the same distribution
    rate = ens.predict(_gauss(5000, 2)).double().mean().item()
    assert 0.07 <= rate <= 0.13, rate


def test_the_reported_case_pca_with_a_transform_on_images():
    images = torch.randint(
        0, 256, (200, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    flat = lambda t: t.double().flatten(1)  # noqa: E731
    ens = Ensemble({"pca": PCA(n_components=3, transform=flat)}).fit(images)
    assert ens.score(images[:7]).shape == (7,)


def test_fitted_members_are_left_alone_and_all_data_standardise():
    pca = PCA(n_components=2).fit(_gauss(300, 5))
    mean_before = pca.mean_.copy()
    x = _gauss(400, 6)
    ens = Ensemble({"pca": pca, "mse": MSEToMean().fit(_gauss(300, 7))}).fit(x)
    assert (pca.mean_ == mean_before).all()
    s = pca.score(x)
    assert ens._stats["pca"] == pytest.approx((float(s.mean()), float(s.std())), rel=1e-12)


def test_only_the_unfitted_members_are_fitted():
    knn = KNN(k=3).fit(_gauss(100, 8))
    train_before = knn.train_.copy()
    typ = Typicality(_flow(1))
    Ensemble({"knn": knn, "typicality": typ}, member_fraction=0.25).fit(_gauss(400, 9))
    assert (knn.train_ == train_before).all()
    fit_idx, _ = _fit_part(400, fraction=0.25)
    expected = float(Likelihood(typ.model).score(_gauss(400, 9)[fit_idx]).mean())
    assert typ.entropy == pytest.approx(expected, rel=1e-12)


def test_labels_go_to_the_members_that_take_them():
    x = _gauss(300, 10)
    y = (x[:, 0] > 0).long()
    maha = Mahalanobis(Features())
    ens = Ensemble({"maha": maha, "mse": MSEToMean()}).fit(x, y=y)
    fit_idx, _ = _fit_part(300)
    xf, yf = x[fit_idx], y[fit_idx]
    expected = torch.stack([xf[yf == 0].mean(0), xf[yf == 1].mean(0)])
    torch.testing.assert_close(maha.means_, expected)
    assert ens.is_fitted
    with pytest.raises(ValueError, match=r"member 'maha'.*labels are required"):
        Ensemble({"maha": Mahalanobis(Features())}).fit(x)


def test_too_little_data_to_split_and_member_errors_are_one_line_naming_the_member():
    with pytest.raises(ValueError, match=r"members \['pca'\] are not fitted yet.*at least 2 samples") as err:
        Ensemble({"pca": PCA(n_components=1)}).fit(_gauss(3, 11))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"Ensemble.fit: member 'knn': KNN: need more than k=50") as err:
        Ensemble({"knn": KNN(k=50)}).fit(_gauss(60, 12))
    assert "\n" not in str(err.value)
    for bad in (0, 1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="member_fraction must be"):
            Ensemble({"pca": PCA()}, member_fraction=bad)


def test_members_taking_different_inputs_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"different shapes: 'a' \(\[4\]\), 'b' \(\[3\]\)"):
        Ensemble({"a": Likelihood(_flow(0, 4)), "b": Likelihood(_flow(0, 3))})
