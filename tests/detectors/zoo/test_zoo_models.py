"""detectors.zoo: every shipped model loads offline in eval mode and reproduces its card's
held-out bits/dim; the cards say how each was trained."""

import math
import socket

import pytest
import torch

import detectors.zoo as zoo
from detectors.experiments.runs import ZOO_ROLES
from detectors.zoo.recipes import CHECK_N, RECIPES, heldout_bpd, heldout_data


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("detectors.zoo tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_every_role_of_the_demo_is_shipped():
    have = zoo.available()
    assert set(ZOO_ROLES.values()) <= set(have), sorted(set(ZOO_ROLES.values()) - set(have))
    for name, line in have.items():
        assert isinstance(line, str) and "\n" not in line and "bits/dim" in line and name in RECIPES


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_model_loads_offline_in_eval_mode_and_matches_its_card(name, offline):
    if name not in zoo.available():
        pytest.fail(f"{name} is not shipped (python -m detectors.zoo.train {name}, then --export)")
    card = zoo.card(name)
    model = zoo.load(name)
    assert not any(m.training for m in model.modules())
    assert type(model).__name__ == card["model"]["class"]
    assert sum(p.numel() for p in model.parameters()) == card["model"]["parameters"]
    t = card["training"]
    assert t["steps"] > 0 and math.isfinite(t["wall_s"]) and t["wall_s"] > 0
    assert math.isclose(t["epochs"], t["steps"] * t["batch"] / 60000, abs_tol=0.01)
    assert card["command"].startswith(
        (f"python -m detectors.zoo.train {name}", f"python -m detectors zoo {name}")
    )
    assert len(card["commit"]) == 40 and card["data"]["train"] and card["data"]["heldout"]
    # the held-out bits/dim of the card, re-evaluated on a subset (same images, same noise)
    r = RECIPES[name]
    held = heldout_data(r.data, CHECK_N, size=r.size, channels=r.channels)
    assert held.shape == (CHECK_N, r.channels, r.size, r.size) and held.dtype == torch.uint8
    bpd = heldout_bpd(model, held)
    assert abs(bpd - card["check"]["bpd"]) < 1e-3, (bpd, card["check"])
    # a trained model, not an initial one (uniform noise over 256 levels is 8 bits/dim)
    assert bpd < 7.5 and abs(bpd - card["heldout_bpd"]) < 0.3


def test_unknown_name_is_refused_with_the_list():
    with pytest.raises(ValueError, match="available: .*fmnist-glow"):
        zoo.load("imagenet-glow")
    with pytest.raises(TypeError):
        zoo.card(3)


def test_shipped_features_are_the_fit_sets_features():
    """The demo's feature fit sets ship with their EfficientNet-Lite0 features: they are found by
    the images' bytes and equal a fresh extraction (float16 storage)."""
    from detectors.data import load_fashion_mnist
    from detectors.experiments.demo import (
        DemoConfig,
        feature_fit_images,
        shipped_features,
        zoo_general_images,
    )
    from detectors.features import EfficientNetLite0, extract_features, normalize_features

    cfg = DemoConfig()
    images = feature_fit_images(cfg, load_fashion_mnist("train")[0], zoo_general_images(cfg))
    shipped = shipped_features(images, cfg.feature_size)
    assert set(shipped) == {"train", "aux"} and shipped["train"].shape == (cfg.n_feature_train, 1280)
    fresh = normalize_features(
        extract_features(EfficientNetLite0(cfg.feature_size), images["train"][:3], progress=False), noise=0.0
    )
    assert torch.allclose(shipped["train"][:3], fresh, atol=2e-3)
    # other images (one changed pixel) are not served from the shipped features
    changed = images["train"].clone()
    changed[0, 0, 0, 0] ^= 1
    assert shipped_features({"train": changed}, cfg.feature_size) == {}
    assert shipped_features(images, 64) == {}


def test_a_zoo_model_is_named_by_detectors_errors():
    import numpy as np

    from detectors import Likelihood
    from detectors.scores.base import describe_model

    model = zoo.load("fmnist-glow")
    assert model.zoo_name == "fmnist-glow"
    assert describe_model("model", model) == "model (Glow 'fmnist-glow', input [1, 28, 28], grey)"
    with pytest.raises(
        ValueError, match=r"Likelihood.score: model \(Glow 'fmnist-glow', input \[1, 28, 28\], grey\) takes"
    ):
        Likelihood(model).score(np.zeros((2, 32, 32), np.uint8))
    # images of two sizes in a list: say both ways to resize
    with pytest.raises(ValueError, match=r"resize the images to one size first, or pass resize=True"):
        Likelihood(model).score([np.zeros((28, 28), np.uint8), np.zeros((30, 30), np.uint8)])
