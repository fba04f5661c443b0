"""The fitted bundle in memory: :class:`Bundle` (a Mapping name -> Detector sharing one
preprocessing policy) and the one way images come in for fit and score (:func:`read_images`,
:func:`prepare`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from ..data.folders import ImagePolicy, Source, load_source
from ..inputs import as_images_with_labels
from ..scores import Detector, Ensemble
from .catalogue import CATALOGUE, FEATURE_NEEDS, Spec


class Bundle(Mapping):
    """Fitted detectors sharing one preprocessing policy; a Mapping name -> Detector."""

    def __init__(
        self,
        detectors: dict,
        policy: ImagePolicy,
        config: dict | None = None,
        feature_size: int = 96,
        path: str | None = None,
    ):
        self.detectors, self.policy, self.config = dict(detectors), policy, dict(config or {})
        self.feature_size, self.path = feature_size, path

    # Mapping
    def __getitem__(self, name):
        return self.detectors[name]

    def __iter__(self):
        return iter(self.detectors)

    def __len__(self) -> int:
        return len(self.detectors)

    def __repr__(self) -> str:
        dets = ", ".join(f"{n}: {d!r}" for n, d in self.detectors.items())
        return (
            f"Bundle({self.path or ''} {self.policy.size}x{self.policy.size}x{self.policy.channels}; {dets})"
        )

    @property
    def thresholds(self) -> dict:
        return {n: d.threshold for n, d in self.detectors.items()}

    @property
    def uses(self) -> dict:
        return {n: d.uses for n, d in self.detectors.items()}

    def prepare(self, x, progress: bool = False) -> torch.Tensor:
        """Any accepted input (or a path / named set) -> uint8 [N, C, S, S] by the bundle's policy."""
        return prepare(x, self.policy, progress)

    def score(self, x, progress: bool | None = None) -> dict:
        """{name: float64 [N]} anomaly scores (higher = more anomalous) of every detector."""
        images = self.prepare(x, progress=bool(progress))
        feats, out = None, {}
        for name, det in self.detectors.items():
            if progress is not None:
                det.progress = progress
            if self._scores_from_members(det):
                continue  # below, from its members' scores
            if CATALOGUE.get(name, Spec("", "", {}, "", "")).needs in FEATURE_NEEDS:
                if feats is None:
                    from ..features import image_features

                    feats = image_features(images, self.feature_size, progress=det.progress)
                out[name] = det.score(feats)
            else:
                out[name] = det.score(images)
        for name, det in self.detectors.items():
            if self._scores_from_members(det):
                out[name] = with_member_scores(det, out).score(images)
        return {name: out[name] for name in self.detectors}

    def _scores_from_members(self, det) -> bool:
        """Whether ``det`` is an Ensemble of this bundle's own detectors (each under its name)."""
        return isinstance(det, Ensemble) and all(
            self.detectors.get(m) is d and not isinstance(d, Ensemble) for m, d in det.members.items()
        )

    def decision_function(self, x) -> dict:
        return self.score(x)

    __call__ = score

    def predict(self, x, progress: bool | None = None) -> dict:
        """{name: bool [N]}: True where the score is above the detector's calibrated threshold."""
        return {n: s > self.detectors[n].threshold for n, s in self.score(x, progress).items()}


def read_images(x, progress: bool = False, split: str = "test"):
    """The one way images come in, for fit and score: (uint8 images, labels or None, name,
    skipped files).  A path / named set is read with ``detectors.data.load_source`` (named sets
    from ``split``), a ``Source`` as it is, every other kind with
    ``detectors.inputs.as_images_with_labels`` (preprocessed floats mapped back to uint8 once).
    Images are a uint8 batch [N, C, H, W] or a list of PIL images / uint8 [C, H, W] (any sizes)."""
    if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__"):
        x = load_source(x, progress=progress, split=split)
    if isinstance(x, Source):
        return x.images, x.labels, x.name, x.skipped
    images, labels = as_images_with_labels(x, "images", progress)
    return images, labels, type(x).__name__, []


def prepare(x, policy: ImagePolicy, progress: bool = False) -> torch.Tensor:
    """``x`` -> uint8 [N, C, S, S] by ``policy``: :func:`read_images`, then ``policy.apply``."""
    return policy.apply(read_images(x, progress)[0], progress)


class _KnownScores(Detector):
    """An ensemble member whose scores on the batch at hand are already computed."""

    def __init__(self, name: str, scores: torch.Tensor):
        super().__init__()
        self.member, self.scores = name, scores

    def score(self, x):
        if len(x) != len(self.scores):
            raise RuntimeError(f"{self.member}: {len(self.scores)} known scores for a batch of {len(x)}")
        return self.scores


def with_member_scores(ens: Ensemble, scores: dict) -> Ensemble:
    """A copy of ``ens`` whose members return their known ``scores[name]`` (float64 [N]) for
    the N inputs at hand, so that ``Ensemble``'s own standardisation and sum (its ``fit`` /
    ``score``) run without scoring the members again (the bundle scores each detector once)."""
    known = copy.copy(ens)
    known.members = {name: _KnownScores(name, scores[name]) for name in ens.members}
    return known
