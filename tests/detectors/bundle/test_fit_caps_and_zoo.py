"""fit's caps (feature sample, calibration images) and its use of the zoo's models."""

import torch

from detectors import zoo
from detectors.bundle import FitConfig, fit_bundle
from detectors.bundle.fit import capped_sample


def test_capped_sample_keeps_all_below_the_cap():
    idx = torch.arange(10, 20)
    assert torch.equal(capped_sample(idx, None, 10, 0), idx)


def test_capped_sample_is_stratified_by_class():
    labels = torch.cat([torch.zeros(600), torch.ones(300), torch.full((100,), 2)]).long()
    idx = torch.arange(1000)
    got = capped_sample(idx, labels, 100, 0)
    assert len(got) == 100 and len(got.unique()) == 100 and bool((got[1:] > got[:-1]).all())
    assert torch.bincount(labels[got]).tolist() == [60, 30, 10]
    # a subset of the indices given, seeded
    sub = idx[::3]
    got = capped_sample(sub, labels, 50, 1)
    assert set(got.tolist()) <= set(sub.tolist()) and torch.equal(got, capped_sample(sub, labels, 50, 1))
    assert not torch.equal(got, capped_sample(sub, labels, 50, 2))
    # without labels: a seeded random subset of the cap's size
    got = capped_sample(idx, None, 7, 0)
    assert len(got) == 7 and set(got.tolist()) <= set(idx.tolist())


def test_zoo_names_its_general_models_by_mode_and_size():
    assert zoo.general_for(1, 28) == "photos-glow-broad"
    assert zoo.general_for(3, 64) is None
    assert zoo.models_for("fashion-mnist")["flow"] == "fmnist-glow-outlier"
    assert zoo.models_for("mnist") is None


def test_a_subset_of_fashion_mnist_gets_the_general_model_and_a_dagger_finetune(tmp_path):
    """--n keeps the zoo's Fashion-MNIST flows out (they saw other images), but the shipped grey
    28x28 general model is used: diff-dagger finetunes it, and the caps hold."""
    cfg = FitConfig(
        detectors=("diff-dagger", "transforms"),
        steps=2,
        dagger_steps=2,
        max_images=60,
        feature_cap=20,
        calibration_cap=5,
        progress=False,
    )
    said = []
    bundle = fit_bundle("fashion-mnist", tmp_path / "det", cfg, say=said.append)
    meta = bundle.config
    assert meta["zoo"] == {"general": "photos-glow-broad"}
    assert meta["data"]["n_features"] == 20 and meta["data"]["n_calibration"] == 5
    assert set(meta["models"]) == {"flow", "general", "dagger"}
    assert meta["models"]["general"] == "models/general.safetensors"
    general = zoo.load("photos-glow-broad")
    dagger = bundle.detectors["diff-dagger"].general_model
    assert any(
        not torch.equal(a, b) for a, b in zip(general.state_dict().values(), dagger.state_dict().values())
    )
    import detectors

    again = detectors.load(tmp_path / "det")
    x = detectors.data.load_fashion_mnist("test")[0][:8]
    for name, s in bundle.score(x).items():
        torch.testing.assert_close(again.score(x)[name], s)


def test_plans_that_cannot_work_fail_before_anything_is_trained_or_written(tmp_path):
    import pytest

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=g)
    out = tmp_path / "det"
    with pytest.raises(ValueError, match="--no-zoo turns off; drop --no-zoo") as err:
        cfg = FitConfig(
            detectors=("diff-dagger+pca+transforms+diff+png",), zoo=False, steps=1, progress=False
        )
        fit_bundle(x, out, cfg, say=lambda *a: None)
    assert "diff-dagger (in diff-dagger+pca+transforms+diff+png)" in str(err.value) and not out.exists()
    # a mode and size without a shipped general model: the message names what the zoo has
    cfg = FitConfig(detectors=("diff-dagger",), size=16, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"none for grey 16x16 images \(it has grey 28x28"):
        fit_bundle(x, out, cfg, say=lambda *a: None)
    assert not out.exists()
    # an ensemble needs 2 held-out images: at --holdout 0.2 that is 8 images, not 3
    cfg = FitConfig(detectors=("png+pca",), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"7 images with --holdout 0.2 hold out 1; give at least 8 images"):
        fit_bundle(x[:7], out, cfg, say=lambda *a: None)
    assert not out.exists()
