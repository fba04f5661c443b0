"""The fitted bundle in memory: :class:`Bundle` (a Mapping name -> Detector sharing one
preprocessing policy), the one way images come in for fit and score (:func:`read_images`,
:func:`prepare`) and scoring a source in chunks of :data:`SCORE_CHUNK` images
(:meth:`Bundle.score_chunks`), so that memory does not grow with a folder."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch

from ..data.files import printable
from ..data.folders import (
    ImageFiles,
    ImagePolicy,
    Source,
    UnreadableImagesWarning,
    describe_skipped,
    load_source,
    none_readable,
    read_resized,
)
from ..inputs import as_images_with_labels
from ..scores import Detector, Ensemble
from .catalogue import CATALOGUE, FEATURE_NEEDS, Spec

#: images scored at a time by :meth:`Bundle.score_chunks`: a multiple of the detectors' batch
#: of 256 (and of the feature extractor's 64), so that the batches, and so the scores, are the
#: same as when all images are scored at once
SCORE_CHUNK = 256


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

    def score_chunks(self, source: Source, chunk: int = SCORE_CHUNK, progress: bool = False):
        """Scores ``source`` (a :class:`~detectors.data.Source`; ``load_source(..., lazy=True)``
        reads a folder one file at a time) ``chunk`` images at a time; yields, per chunk,
        (names of the images scored, {name: float64 [k]} scores, skipped [(path, reason)] of
        files that did not decode).  Memory holds one chunk of decoded images at a time, and
        the scores equal :meth:`score` of all images at once (``chunk`` a multiple of 256)."""
        from tqdm import tqdm

        images, names = source.images, list(source.paths)
        with tqdm(
            total=len(names), desc=f"scoring {printable(source.name)}", unit="img", disable=not progress
        ) as bar:
            for start in range(0, len(names), chunk):
                part, skipped = images[start : start + chunk], []
                if isinstance(part, ImageFiles):
                    x, kept, skipped, _ = read_resized(part, self.policy)
                    part_names = [part.paths[i] for i in kept]
                else:
                    x, part_names = self.policy.apply(part), names[start : start + chunk]
                scores = (
                    self.score(x, progress=False)
                    if len(x)
                    else {n: torch.zeros(0, dtype=torch.float64) for n in self}
                )
                bar.update(len(part))
                yield part_names, scores, skipped

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
    Images are a uint8 batch [N, C, H, W], a list of PIL images / uint8 [C, H, W] (any sizes),
    or for a folder an :class:`~detectors.data.ImageFiles` (decoded one at a time when used)."""
    if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__"):
        x = load_source(x, progress=progress, split=split, lazy=True)
    if isinstance(x, Source):
        return x.images, x.labels, x.name, x.skipped
    images, labels = as_images_with_labels(x, "images", progress)
    return images, labels, type(x).__name__, []


def prepare(x, policy: ImagePolicy, progress: bool = False) -> torch.Tensor:
    """``x`` -> uint8 [N, C, S, S] by ``policy``: :func:`read_images`, then ``policy.apply``;
    image files are decoded, resized and dropped one at a time, and those that do not decode
    are skipped with an ``UnreadableImagesWarning`` naming them."""
    images, _, name, skipped = read_images(x, progress)
    if isinstance(images, ImageFiles):
        n = len(images) + len(skipped)
        images, _, more, _ = read_resized(images, policy, progress)
        skipped = skipped + more
        if skipped:
            warnings.warn(describe_skipped(skipped), UnreadableImagesWarning, stacklevel=2)
        if not len(images):
            raise ValueError(none_readable(name, n, skipped))
    return policy.apply(images, progress)


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
