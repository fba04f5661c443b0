"""Trained models shipped with the package (no network): safetensors weights + JSON model cards.

    >>> import detectors
    >>> detectors.zoo.available()          # {name: one-line card}
    >>> model = detectors.zoo.load("fmnist-glow")     # eval mode, ready to score
    >>> detectors.zoo.card("fmnist-glow")["heldout_bpd"]

Each card (``detectors/zoo/cards/NAME.json``) gives the training data, the exact command
(``python -m detectors zoo NAME``; cards written before say ``python -m detectors.zoo.train NAME``,
which runs the same), steps / epochs, wall time on the machine that trained
it, the held-out bits/dim and the commit.  Recipes: ``detectors.zoo.recipes``.
"""

from __future__ import annotations

import json
import os

ZOO_DIR = os.path.dirname(os.path.abspath(__file__))


def _names() -> list[str]:
    cards = os.path.join(ZOO_DIR, "cards")
    if not os.path.isdir(cards):
        return []
    return sorted(
        f[:-5]
        for f in os.listdir(cards)
        if f.endswith(".json") and os.path.exists(os.path.join(ZOO_DIR, "weights", f[:-5] + ".safetensors"))
    )


def card(name: str) -> dict:
    """The model card of ``name`` (a dict; see the module docstring).  ValueError for an unknown name."""
    if not isinstance(name, str):
        raise TypeError(f"detectors.zoo: name must be a str, got {type(name).__name__}")
    if name not in _names():
        raise ValueError(f"detectors.zoo: unknown model {name!r}; available: {', '.join(_names()) or 'none'}")
    with open(os.path.join(ZOO_DIR, "cards", f"{name}.json")) as f:
        return json.load(f)


def available() -> dict[str, str]:
    """{name: one-line card} of every shipped model: what it is, its training budget and its
    held-out bits/dim."""
    out = {}
    for name in _names():
        c = card(name)
        t = c["training"]
        out[name] = (
            f"{c['summary']}; {t['steps']} steps ({t['epochs']} epochs), {t['wall_s'] / 60:.0f} min; "
            f"held-out {c['heldout_bpd']:.3f} bits/dim; {c['status']}"
        )
    return out


def load(name: str):
    """The zoo model ``name`` in eval mode (``invflow.load`` of its safetensors weights; no
    network, no pickle), with ``model.zoo_name = name``: detectors name it by it in their
    errors (``detectors.scores.base.describe_model``).  ValueError for an unknown name
    (listing the available ones)."""
    import invflow

    card(name)  # validates the name
    model = invflow.load(os.path.join(ZOO_DIR, "weights", f"{name}.safetensors"))
    model.zoo_name = name
    return model.eval()


#: the general-distribution model for images of (channels, size): broadened photo patches
GENERAL_MODELS = {
    (1, 28): "photos-glow-broad",
    (1, 32): "photos-glow-broad-32",
    (3, 32): "photos-rgb-glow-broad-32",
}
#: named sets with trained zoo models, by role: the in-distribution flow (trained with the
#: outlier loss), the general model and its Diff-dagger finetune against that set
DATASET_MODELS = {
    "fashion-mnist": {
        "flow": "fmnist-glow-outlier",
        "general": "photos-glow-broad",
        "dagger": "photos-glow-dagger",
    },
}


def general_for(channels: int, size: int) -> str | None:
    """The name of the shipped general-distribution model for images of ``channels`` x
    ``size`` x ``size``, or None when the zoo has none (:data:`GENERAL_MODELS`)."""
    name = GENERAL_MODELS.get((channels, size))
    return name if name in _names() else None


def models_for(dataset: str) -> dict[str, str] | None:
    """{role: zoo name} of the shipped models trained on the named set ``dataset``
    (:data:`DATASET_MODELS`), or None when some are not shipped."""
    names = DATASET_MODELS.get(str(dataset).lower())
    if names is None or not all(n in _names() for n in names.values()):
        return None
    return dict(names)


__all__ = [
    "available",
    "card",
    "load",
    "general_for",
    "models_for",
    "GENERAL_MODELS",
    "DATASET_MODELS",
    "ZOO_DIR",
]
