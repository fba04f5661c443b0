"""Classifier-based OOD baselines: ``detectors.baselines.ResNetClassifier``, the
scores of ``detectors.scores.classifier`` (MSP, Energy, Mahalanobis, in-vs-general binary
classifier) against their formulas written out independently in numpy, the training losses
of ``detectors.objectives.classifier`` and a tiny end-to-end training run."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf
from torch import nn

import invflow
from detectors.baselines import ResNetClassifier
from detectors.objectives.classifier import (
    cross_entropy_objective,
    energy_loss,
    energy_objective,
    in_vs_general_objective,
    outlier_exposure_loss,
    outlier_exposure_objective,
    uniform_cross_entropy,
)
from detectors.scores.classifier import BinaryClassifierScore, Energy, Mahalanobis, MaxSoftmax
from invflow.data import preprocess
from invflow.train import Batch, Trainer


class TinyNet(nn.Module):
    """A small smooth classifier on 1 x 4 x 4 inputs: features tanh(A x) [B, 6], 3 logits."""

    def __init__(self, seed: int = 0, classes: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(16, 6)
        self.head = nn.Linear(6, classes)
        self.double()

    def features(self, x):
        return torch.tanh(self.body(x.flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def _inputs(n: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) - 0.5


def _labelled(n_per_class: int = 30, seed: int = 0):
    """Three classes of 1 x 4 x 4 inputs around different centres (float64, in [-0.5, 0.5])."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([-0.25, 0.0, 0.25], dtype=torch.float64)
    x = torch.cat(
        [
            c + 0.15 * (torch.rand(n_per_class, 1, 4, 4, generator=g, dtype=torch.float64) - 0.5)
            for c in centres
        ]
    )
    y = torch.arange(3).repeat_interleave(n_per_class)
    return x, y


# ------------------------------------------------------------------------ score formulas
@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.3])
def test_max_softmax_formula(temperature):
    model, x = TinyNet(), _inputs()
    s = MaxSoftmax(model, temperature=temperature).score(x)
    with torch.no_grad():
        z = model(x).numpy() / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert s.dtype == torch.float64 and s.shape == (10,)
    np.testing.assert_allclose(s.numpy(), -p.max(1), rtol=1e-12)
    assert bool((s >= -1).all() and (s <= -1 / 3 + 1e-12).all())


@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.3])
def test_energy_formula(temperature):
    model, x = TinyNet(), _inputs()
    s = Energy(model, temperature=temperature).score(x)
    with torch.no_grad():
        z = model(x).numpy()
    direct = [-temperature * math.log(sum(math.exp(v / temperature) for v in row)) for row in z]
    np.testing.assert_allclose(s.numpy(), direct, rtol=1e-12)


def test_energy_direction_confident_inputs_have_lower_energy():
    """Large logits (a confident in-distribution input) -> low energy -> low score."""

    class Fixed(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] * torch.tensor([10.0, 0.0, 0.0], dtype=x.dtype)

    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 0] = 0.5  # logit 5 for class 0
    s = Energy(Fixed()).score(x)
    assert s[0] < s[1]


def test_binary_classifier_score_is_the_logit():
    model, x = TinyNet(classes=1), _inputs()
    s = BinaryClassifierScore(model).score(x)
    with torch.no_grad():
        np.testing.assert_array_equal(s.numpy(), model(x)[:, 0].numpy())
    assert BinaryClassifierScore.uses == "aux data"
    assert MaxSoftmax.uses == Energy.uses == Mahalanobis.uses == "labels"


def _direct_mahalanobis(model, x, means, precision):
    with torch.no_grad():
        f = model.features(x).numpy()
    d = f[:, None, :] - means[None]
    return np.einsum("bkf,fg,bkg->bk", d, precision, d).min(1)


@pytest.mark.parametrize("covariance", ["ledoit_wolf", "empirical"])
def test_mahalanobis_fit_and_distance_against_numpy(covariance):
    model = TinyNet()
    x, y = _labelled()
    det = Mahalanobis(model, covariance=covariance).fit(x, y=y)
    with torch.no_grad():
        f = model.features(x).numpy()
    yn = y.numpy()
    means = np.stack([f[yn == k].mean(0) for k in range(3)])
    centred = f - means[yn]
    if covariance == "empirical":  # Lee et al.: tied covariance (1/N) sum (f - mu_y)(f - mu_y)^T, inverted
        precision = np.linalg.inv(centred.T @ centred / len(f))
    else:
        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    np.testing.assert_allclose(det.means_.numpy(), means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(det.precision_.numpy(), precision, rtol=1e-6)
    x_test = _inputs(12, seed=3)
    direct = _direct_mahalanobis(model, x_test, means, precision)
    np.testing.assert_allclose(det.score(x_test).numpy(), direct, rtol=1e-6)
    assert det.needs_grad is False


def test_mahalanobis_direction_far_input_scores_higher():
    model = TinyNet()
    x, y = _labelled()
    det = Mahalanobis(model).fit(x, y=y)
    far = torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64)
    far[1] = -0.5
    far[2, :, ::2] = 0.5
    far[2, :, 1::2] = -0.5
    s_in, s_far = det.score(x), det.score(far)
    assert float(s_far.min()) > float(s_in.max())
    assert bool(det.predict(far).all())


def test_mahalanobis_input_perturbation():
    model = TinyNet()
    x, y = _labelled()
    plain = Mahalanobis(model).fit(x, y=y)
    eps = 2e-3
    pert = Mahalanobis(model, epsilon=eps).fit(x, y=y)
    assert pert.needs_grad is True
    x_test = torch.cat([_inputs(8, seed=5), x[::10]])
    s0, s1 = plain.score(x_test), pert.score(x_test)
    assert not torch.allclose(s0, s1)
    assert bool((s1 < s0).all())  # the perturbed input is closer to its closest class
    # Lee et al. Eq. 4 written out: x' = x - eps * sign(grad_x min_k M_k(x)), score = min_k M_k(x')
    xr = x_test.clone().requires_grad_(True)
    d = plain.distances(xr).min(1).values
    (g,) = torch.autograd.grad(d.sum(), xr)
    x_prime = (x_test - eps * g.sign()).detach()
    direct = _direct_mahalanobis(model, x_prime, plain.means_.numpy(), plain.precision_.numpy())
    np.testing.assert_allclose(s1.numpy(), direct, rtol=1e-9)
    assert bool((torch.from_numpy(direct) < plain.distances(x_test).min(1).values.detach()).all())


# ------------------------------------------------------------------------ common API
def _resnet(num_classes=3, seed=0):
    torch.manual_seed(seed)
    return ResNetClassifier(in_channels=1, num_classes=num_classes, image_size=8, width=4)


def _detectors():
    return {
        "msp": (MaxSoftmax(_resnet()), {}),
        "msp_t": (MaxSoftmax(_resnet(), temperature=1000.0), {}),
        "energy": (Energy(_resnet()), {}),
        "mahalanobis": (Mahalanobis(_resnet()), {"y": torch.arange(40) % 3}),
        "mahalanobis_eps": (Mahalanobis(_resnet(), epsilon=0.01, batch_size=16), {"y": torch.arange(40) % 3}),
        "binary": (BinaryClassifierScore(_resnet(num_classes=1)), {}),
    }


@pytest.mark.parametrize("name", list(_detectors()))
def test_common_api(name):
    det, fit_kw = _detectors()[name]
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
    assert det.fit(images, fpr=0.2, **fit_kw) is det
    s = det.score(images)
    assert s.dtype == torch.float64 and s.shape == (40,) and s.device.type == "cpu"
    assert bool(torch.isfinite(s).all())
    flagged = det.predict(images).float().mean().item()
    if name.startswith("mahalanobis"):
        # fit calibrates on cross-fitted scores (for fresh data): the fitting images score lower
        assert 0.0 < flagged <= 0.2
    else:
        assert abs(flagged - 0.2) <= 0.05
    # uint8 input == noise-free preprocessed floats
    floats = preprocess(images, dequantize=False)
    torch.testing.assert_close(det.score(floats), s, rtol=1e-6, atol=1e-9)
    # calibrate on separate data; batching does not change scores
    other = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8, generator=g)
    det.calibrate(other, fpr=0.1)
    assert det.fpr == 0.1 and det.threshold is not None
    det.batch_size = 7
    torch.testing.assert_close(det.score(images), s, rtol=1e-6, atol=1e-9)
    # the model is back in its previous (train) mode after scoring
    assert det.model.training
    # wrong input rank
    with pytest.raises(ValueError):
        det.score(torch.zeros(5))
    with pytest.raises(ValueError):
        det.score(torch.zeros(2, 1, 1, 8, 8))


def test_errors():
    x, y = _labelled()
    det = Mahalanobis(TinyNet())
    with pytest.raises(RuntimeError, match="fit"):
        det.score(x)
    with pytest.raises(ValueError, match="labels"):
        det.fit(x)
    with pytest.raises(ValueError, match="one label per sample"):
        det.fit(x, y=y[:-1])
    with pytest.raises(ValueError, match="integers"):
        det.fit(x, y=y.double())
    with pytest.raises(TypeError, match="y=labels"):
        det.fit(x, y)
    det.fit(x, y=y.tolist())  # any integer sequence works
    with pytest.raises(TypeError, match="features"):
        Mahalanobis(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="epsilon"):
        Mahalanobis(TinyNet(), epsilon=-1.0)
    with pytest.raises(ValueError, match="covariance"):
        Mahalanobis(TinyNet(), covariance="shrunk")
    for cls in (MaxSoftmax, Energy):
        with pytest.raises(ValueError, match="temperature"):
            cls(TinyNet(), temperature=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        MaxSoftmax(TinyNet(classes=1)).score(x)
    with pytest.raises(ValueError, match="one logit"):
        BinaryClassifierScore(TinyNet()).score(x)


# ------------------------------------------------------------------------ losses
def _logits(n, k, seed):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_outlier_exposure_loss_formula(weight):
    li, la = _logits(6, 4, 0), _logits(5, 4, 1)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    a, b = li.numpy(), la.numpy()

    def log_softmax(z):
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ce = -log_softmax(a)[np.arange(6), y.numpy()].mean()
    uniform = (-log_softmax(b).mean(1)).mean()
    got = outlier_exposure_loss(li, y, la, weight)
    assert got.item() == pytest.approx(ce + weight * uniform, rel=1e-12)
    assert outlier_exposure_loss(li, y, la, weight=0.0).item() == pytest.approx(
        F.cross_entropy(li, y).item(), rel=1e-12
    )
    default = outlier_exposure_loss(li, y, la).item()  # weight 0.5
    assert default == pytest.approx(ce + 0.5 * uniform, rel=1e-12)


def test_uniform_term_minimal_for_uniform_logits():
    k = 5
    flat = torch.full((3, k), 1.7, dtype=torch.float64)
    assert torch.allclose(uniform_cross_entropy(flat), torch.full((3,), math.log(k), dtype=torch.float64))
    assert bool((uniform_cross_entropy(_logits(50, k, 2)) > math.log(k)).all())
    li, y = _logits(4, k, 3), torch.tensor([0, 1, 2, 3])
    assert outlier_exposure_loss(li, y, flat, 0.5).item() == pytest.approx(
        F.cross_entropy(li, y).item() + 0.5 * math.log(k), rel=1e-12
    )
    with pytest.raises(ValueError):
        outlier_exposure_loss(li, y[:3], flat)
    with pytest.raises(ValueError):
        outlier_exposure_loss(li, y, _logits(3, k + 1, 0))


def test_energy_loss_formula():
    li, la, y = _logits(6, 3, 4), _logits(7, 3, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    e_in = -torch.logsumexp(li, 1).numpy()
    e_out = -torch.logsumexp(la, 1).numpy()
    m_in, m_out, lam = -2.0, 1.0, 0.3
    reg = (np.maximum(0, e_in - m_in) ** 2).mean() + (np.maximum(0, m_out - e_out) ** 2).mean()
    got = energy_loss(li, y, la, m_in=m_in, m_out=m_out, weight=lam)
    assert got.item() == pytest.approx(F.cross_entropy(li, y).item() + lam * reg, rel=1e-12)


# ------------------------------------------------------------------------ the ResNet
def test_resnet_shapes():
    torch.manual_seed(0)
    m = ResNetClassifier()  # 1 x 28 x 28, 10 classes, width 32
    assert sum(p.numel() for p in m.parameters()) == 307_690  # the count in the module docstring
    x = torch.rand(2, 1, 28, 28) - 0.5
    assert m(x).shape == (2, 10) and m.features(x).shape == (2, 128)
    rgb = ResNetClassifier(in_channels=3, num_classes=4, image_size=32, width=8, blocks=(2, 1, 1))
    x3 = torch.rand(3, 3, 32, 32) - 0.5
    assert rgb(x3).shape == (3, 4) and rgb.features(x3).shape == (3, 32) and rgb.num_features == 32
    one = ResNetClassifier(in_channels=3, num_classes=1, image_size=(8, 12), width=4)
    assert one(torch.zeros(2, 3, 8, 12)).shape == (2, 1)


def test_resnet_errors():
    m = ResNetClassifier(1, 3, image_size=8, width=4)
    with pytest.raises(TypeError, match="preprocess"):
        m(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="dtype"):
        m(torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="channels"):
        m(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="size"):
        m(torch.zeros(2, 1, 9, 8))
    with pytest.raises(ValueError):
        m(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        m(torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="preprocess"):
        m(torch.full((2, 1, 8, 8), 255.0))
    bad_kwargs = (
        {"image_size": 4},
        {"blocks": (1, 1)},
        {"blocks": (1, 0, 1)},
        {"width": 0},
        {"num_classes": 0},
    )
    for bad in bad_kwargs:
        with pytest.raises(ValueError):
            ResNetClassifier(**bad)


def test_resnet_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = ResNetClassifier(in_channels=3, num_classes=5, image_size=(8, 10), width=4, blocks=(1, 2, 1))
    x = torch.rand(4, 3, 8, 10) - 0.5
    m.train()
    with torch.no_grad():
        m(x)  # moves the BatchNorm running statistics away from their initial values
    path = tmp_path / "classifier.safetensors"
    invflow.save(m, path)
    loaded = invflow.load(path)
    assert type(loaded) is ResNetClassifier and loaded.config() == m.config()
    m.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))


# ------------------------------------------------------------------------ end to end
def _dark_bright(n: int = 64, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    lo = torch.randint(0, 100, (n, 1, size, size), generator=g)
    hi = torch.randint(156, 256, (n, 1, size, size), generator=g)
    images = torch.where(y.view(-1, 1, 1, 1) == 1, hi, lo).to(torch.uint8)
    return images, y


def _last_row(path):
    with open(path / "log.csv") as f:
        return list(csv.DictReader(f))[-1]


def test_train_cross_entropy_end_to_end(tmp_path):
    images, y = _dark_bright()
    torch.manual_seed(0)
    model = ResNetClassifier(1, 2, image_size=16, width=8)
    summary = Trainer(
        model,
        (images, y),
        str(tmp_path),
        objective=cross_entropy_objective(),
        steps=30,
        batch_size=16,
        lr=1e-2,
        warmup=1,
        progress=False,
        checkpoint_every=100,
    ).fit()
    assert summary["steps"] == 30 and summary["skipped"] == 0
    row = _last_row(tmp_path)
    assert {"ce", "acc", "loss"} <= set(row) and math.isfinite(float(row["ce"]))
    model.eval()
    with torch.no_grad():
        acc = (model(preprocess(images, dequantize=False)).argmax(1) == y).float().mean().item()
    assert acc > 0.9
    # the trained classifier plugs into the detectors
    s = Energy(model).fit(images).score(images)
    assert bool(torch.isfinite(s).all())
    with pytest.raises(ValueError, match="labels"):
        cross_entropy_objective()(model, Batch(x=preprocess(images[:4])))


@pytest.mark.parametrize("which", ["oe", "energy", "in_vs_general"])
def test_objectives_with_auxiliary_data(tmp_path, which):
    images, y = _dark_bright(32, 8)
    aux = torch.randint(100, 156, (20, 8, 8), dtype=torch.uint8)  # [N, H, W] greyscale works too
    classes = 1 if which == "in_vs_general" else 2
    torch.manual_seed(0)
    model = ResNetClassifier(1, classes, image_size=8, width=4)
    before = [p.detach().clone() for p in model.parameters()]
    objective, data, keys = {
        "oe": (outlier_exposure_objective(aux, aux_batch=6), (images, y), {"ce", "oe", "acc"}),
        "energy": (energy_objective(aux), (images, y), {"ce", "energy_in", "energy_aux", "acc"}),
        "in_vs_general": (in_vs_general_objective(aux), images, {"bce", "acc"}),
    }[which]
    summary = Trainer(
        model,
        data,
        str(tmp_path),
        objective=objective,
        steps=3,
        batch_size=8,
        progress=False,
        checkpoint_every=100,
    ).fit()
    assert summary["skipped"] == 0
    row = _last_row(tmp_path)
    assert keys <= set(row)
    assert all(math.isfinite(float(row[k])) for k in keys | {"loss"})
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="batch size"):
        outlier_exposure_objective(aux, aux_batch=0)
    with pytest.raises(ValueError, match="non-empty"):
        in_vs_general_objective(aux[:0])
    if which == "in_vs_general":
        assert 0.0 <= float(row["acc"]) <= 1.0
        with pytest.raises(ValueError, match="one logit"):
            in_vs_general_objective(aux)(
                ResNetClassifier(1, 3, image_size=8, width=4),
                Batch(x=preprocess(images[:4]), generator=torch.Generator()),
            )
