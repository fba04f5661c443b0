"""Faults on the detectors side: 2 dropped non-finite samples leave clean gradients,
3 fit(x, fpr) hits its FPR on fresh in-distribution data for every detector with fit,
5 numeric arguments, 7 floats outside [-0.5, 0.5], 9 training splits, 10 untrained models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import invflow
from detectors import objectives
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
from invflow.layers.actnorm import UninitializedWarning
from invflow.train import Batch, drop_non_finite, finite_mean, log_prob_dropping_non_finite, nll


def _vector_flow(seed=0):
    torch.manual_seed(seed)
    m = invflow.VectorFlow(4, blocks=2, hidden=8).double()
    m.train()(torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 100)))
    return m


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


# ----------------------------------------------------------- 2: dropped samples' gradients
def _bad_batch():
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[2, 0] = 1.7e308  # finite input whose latent overflows: log p = -inf, backward 0 * inf
    return x, x[[0, 1, 3, 4]]


def test_naive_dropping_gives_nan_gradients_that_drop_non_finite_avoids():
    model = _vector_flow()
    x, _ = _bad_batch()
    finite_mean(-model.log_prob(x)).backward()
    assert not all(torch.isfinite(g).all() for g in _grads(model))  # the fault, reproduced
    model.zero_grad()
    finite_mean(-log_prob_dropping_non_finite(model, x)).backward()
    assert all(torch.isfinite(g).all() for g in _grads(model))


def test_nll_objective_gradient_equals_the_batch_without_the_bad_sample():
    model = _vector_flow()
    x, good = _bad_batch()
    loss, _ = nll(model, Batch(x))
    loss.backward()
    got = _grads(model)
    model.zero_grad()
    want_loss, _ = nll(model, Batch(good))
    want_loss.backward()
    assert loss.item() == want_loss.item()
    for g, w in zip(got, _grads(model)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda lp, ref: objectives.outlier_loss(lp, ref, temperature=10.0, weight=2.0),
        lambda lp, ref: objectives.margin_loss(ref, lp, margin=3.0),
        lambda lp, ref: objectives.nll(lp),
    ],
)
def test_outlier_and_margin_losses_gradients_equal_the_batch_without_the_bad_sample(loss_fn):
    model, reference = _vector_flow(0), _vector_flow(1)
    x, good = _bad_batch()
    with torch.no_grad():
        ref_x, ref_good = reference.log_prob(x), reference.log_prob(good)
    loss = loss_fn(log_prob_dropping_non_finite(model, x), ref_x)
    loss.backward()
    got = _grads(model)
    model.zero_grad()
    loss_fn(model.log_prob(good), ref_good).backward()
    for g, w in zip(got, _grads(model)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_trainer_objectives_with_draws_take_the_step():
    model = _vector_flow()
    x, _ = _bad_batch()
    outliers = torch.randn(8, 4, dtype=torch.float64)
    batch = Batch(x=x, generator=torch.Generator().manual_seed(0))
    loss, _ = objectives.margin_objective(outliers)(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in _grads(model))


def test_drop_non_finite_keeps_the_values_and_leaves_all_bad_or_no_grad_alone():
    calls = []

    def fn(t):
        calls.append(len(t))
        return t.sum(1) * torch.where(t[:, 0] > 0, torch.tensor(float("inf"), dtype=t.dtype), t.new_ones(()))

    x = torch.tensor([[1.0, 2.0], [-1.0, 2.0], [-2.0, 1.0]], dtype=torch.float64, requires_grad=True)
    out = drop_non_finite(fn, x)
    assert calls == [3, 2] and out[0].item() == float("inf")
    torch.testing.assert_close(out[1:], torch.tensor([1.0, -1.0], dtype=torch.float64))
    with torch.no_grad():
        drop_non_finite(fn, x)
    assert calls == [3, 2, 3]


# --------------------------------------------------- 3: thresholds hit their FPR on fresh data
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


# ------------------------------------------------------------ 5: numeric arguments
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
        lambda b: objectives.outlier_loss(torch.zeros(3), torch.zeros(3), temperature=b),
        lambda b: objectives.outlier_loss(torch.zeros(3), torch.zeros(3), weight=b),
        lambda b: objectives.margin_loss(torch.zeros(3), torch.zeros(3), margin=b),
        lambda b: objectives.contrastive_loss(
            torch.zeros(3), torch.zeros(3), clamp=b if b != -1.0 else float("-inf")
        ),
        lambda b: objectives.negative_loss(
            torch.zeros(3), torch.zeros(3), threshold=b if b != -1.0 else float("nan")
        ),
        lambda b: objectives.approx_mass_penalty(
            _vector_flow(), torch.zeros(2, 4, dtype=torch.float64), alpha=b
        ),
        lambda b: objectives.outlier_objective(_vector_flow(), torch.zeros(2, 4), temperature=b),
        lambda b: objectives.approx_mass_objective(alpha=b),
    ],
)
def test_detector_numeric_arguments_are_validated(call, bad):
    if bad is None:
        bad = float("nan")
    with pytest.raises((ValueError, TypeError)) as err:
        call(bad)
    assert "must be" in str(err.value)


# ------------------------------------------------------------------- 7: input range
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


# ------------------------------------------------------------------- 10: untrained models
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


# ------------------------------------------------- 8: interruption and run directories (CLI)
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train(tmp_path, out, *extra, wait=True):
    data = tmp_path / "tiny.npz"
    if not data.exists():
        np.savez(data, images=np.random.default_rng(0).integers(0, 256, (16, 1, 4, 4), dtype=np.uint8))
    cmd = [
        sys.executable,
        "-m",
        "detectors",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch",
        "4",
        "--levels",
        "1",
        "--depth",
        "1",
        "--hidden",
        "4",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _train_in_process(tmp_path, out, *extra):
    from detectors.__main__ import main

    data = tmp_path / "tiny.npz"
    return main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--batch",
            "4",
            "--levels",
            "1",
            "--depth",
            "1",
            "--hidden",
            "4",
            *extra,
        ]
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_cli_checkpoints_on_signal_then_resumes(tmp_path, sig, capsys):
    out = tmp_path / "run"
    proc = _train(tmp_path, out, "--steps", "1000000", "--checkpoint-every", "1000000", wait=False)
    deadline = time.time() + 180
    while not (out / "log.csv").exists() and time.time() < deadline:  # opened after the init
        time.sleep(0.2)
    proc.send_signal(sig)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    latest = (out / "latest").read_text().strip()
    step = int(latest.split("-")[1])
    assert 1 <= step < 1000000 and (out / latest / "model.safetensors").exists(), text
    assert f"{signal.Signals(sig).name} at step {step}: checkpoint written" in text
    if sig == signal.SIGTERM:
        return
    capsys.readouterr()
    # a fresh run in the same directory is refused (exit 2) ...
    assert _train_in_process(tmp_path, out, "--steps", str(step + 2)) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--resume" in err and "--overwrite" in err, err
    # ... --resume continues from the interruption's checkpoint ...
    assert _train_in_process(tmp_path, out, "--steps", str(step + 2), "--resume") == 0
    assert f"resumed from step {step}" in capsys.readouterr().out
    assert (out / "latest").read_text().strip() == f"step-{step + 2:07d}"
    # ... and --overwrite starts again: the old checkpoints are gone
    assert _train_in_process(tmp_path, out, "--steps", "2", "--overwrite") == 0
    assert sorted(d for d in os.listdir(out) if d.startswith("step-")) == ["step-0000002"]


def test_train_cli_resume_with_nothing_says_so(tmp_path, capsys):
    np.savez(
        tmp_path / "tiny.npz", images=np.random.default_rng(0).integers(0, 256, (16, 1, 4, 4), dtype=np.uint8)
    )
    assert _train_in_process(tmp_path, tmp_path / "empty", "--steps", "1", "--resume") == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_train_help_shows_checkpoint_every_default(capsys):
    from detectors.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 200)" in text and "SIGINT" in text and "--overwrite" in text


def test_prepare_run_dir_keeps_foreign_files(tmp_path):
    from invflow.train import prepare_run_dir

    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "log.csv").write_text("step\n")
    (tmp_path / "step-0000003").mkdir()
    with pytest.raises(ValueError, match="not empty"):
        prepare_run_dir(str(tmp_path))
    prepare_run_dir(str(tmp_path), resume=True)  # nothing touched
    assert (tmp_path / "log.csv").exists()
    with pytest.raises(ValueError, match="exclude"):
        prepare_run_dir(str(tmp_path), resume=True, overwrite=True)
    prepare_run_dir(str(tmp_path), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


# ----------------------------------------------------------------- 9: training splits
def test_training_reads_training_splits(monkeypatch):
    from detectors import datasets

    seen = []
    monkeypatch.setattr(
        datasets,
        "load_fashion_mnist",
        lambda split: seen.append(("fm", split)) or (torch.zeros(3, 1, 28, 28, dtype=torch.uint8), None),
    )
    monkeypatch.setattr(
        datasets,
        "natural_patches",
        lambda n, size, seed, split: (
            seen.append(("patches", split)) or torch.zeros(n, 1, size, size, dtype=torch.uint8)
        ),
    )
    datasets.load_named("fashion-mnist", split="train")
    datasets.load_named("patches", n=2, split="train")
    datasets.load_named("fashion-mnist-test", split="train")  # an explicit split wins
    datasets.load_named("fashion-mnist")  # evaluation keeps the test split
    assert seen == [("fm", "train"), ("patches", "train"), ("fm", "test"), ("fm", "test")]
    with pytest.raises(ValueError, match="split"):
        datasets.load_named("fashion-mnist", split="val")

    from detectors import cli_train

    calls = []

    class Stop(Exception):
        pass

    def fake_load(spec, **kw):
        calls.append((spec, kw))
        raise Stop

    monkeypatch.setattr(cli_train, "load_named", fake_load)

    class Args:
        data, out, resume, overwrite, seed = "fashion-mnist", "/nonexistent-run-dir", False, False, 0

    with pytest.raises(Stop):
        cli_train.run_train(Args())
    assert calls == [("fashion-mnist", {"split": "train"})]


def test_fit_reads_training_splits_of_named_sets(monkeypatch, tmp_path):
    """`fit --data fashion-mnist` fits on the training split (the fit path)."""
    from detectors import bundle, datasets, folders

    seen = []

    def fake_load_named(spec, n=None, seed=0, split="test"):
        seen.append(split)
        raise RuntimeError("stop here")

    monkeypatch.setattr(datasets, "load_named", fake_load_named)
    with pytest.raises(RuntimeError, match="stop here"):
        bundle.fit_bundle("fashion-mnist", tmp_path / "det")
    assert seen == ["train"]
    with pytest.raises(RuntimeError, match="stop here"):
        folders.load_source("fashion-mnist")  # scoring reads the test split
    assert seen == ["train", "test"]
