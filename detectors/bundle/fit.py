"""Fitting a bundle, in named steps: :func:`fit_bundle` reads TRAIN (:func:`read_train`),
chooses the preprocessing policy (:func:`choose_policy`), starts or resumes the run directory
(:func:`start_run`), splits TRAIN into a fit part and a held-out part (:func:`split_train`),
trains the flows (:func:`train_flows`), extracts image features (:func:`extract_features`),
trains the feature flow (:func:`train_feature_flow`), fits and calibrates every detector
(:func:`fit_detectors`) and writes ``bundle.json`` (:func:`write_bundle`)."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import warnings
from collections.abc import Mapping

import torch

from invflow.validation import check_bools, check_number

from ..data.files import printable
from ..data.folders import (
    ImageFiles,
    ImagePolicy,
    describe_skipped,
    none_readable,
    read_resized,
)
from ..limits import (
    MAX_BATCH,
    MAX_DEPTH,
    MAX_FEATURE_SIZE,
    MAX_HIDDEN,
    MAX_IMAGE_SIZE,
    MAX_IMAGES,
    MAX_LEVELS,
    MAX_SEED,
    MAX_STEPS,
    MIN_FEATURE_SIZE,
)
from .catalogue import (
    CATALOGUE,
    DEFAULT_DETECTORS,
    DEFAULT_WITH_GENERAL,
    ENSEMBLE,
    FEATURE_FLOW_DIM,
    FEATURE_NEEDS,
    FEATURE_NOISE,
    Projection,
    build,
    members,
    with_members,
)
from .scoring import Bundle, read_images, with_member_scores
from .store import (
    BUNDLE_FILE,
    FEATURES_FILE,
    FIT_FILE,
    FORMAT,
    STATE_FILE,
    VERSION,
    check_out,
    inside,
    read_json,
    read_tensors,
    state,
    versions,
    write_json,
    write_tensors,
)


@dataclasses.dataclass
class FitConfig:
    """Settings of :func:`fit_bundle` (the CLI's ``fit`` options)."""

    detectors: tuple | None = None  # None: DEFAULT_WITH_GENERAL when a shipped general model
    # fits the data (detectors.zoo.general_for), else DEFAULT_DETECTORS
    steps: int = 300  # optimisation steps per flow (a few minutes on 2 CPU cores at 32x32)
    batch_size: int = 32
    lr: float = 1e-3
    levels: int = 2  # Glow scales; the image size must be a multiple of 2**levels
    depth: int = 4  # Glow steps per scale
    hidden: int = 32  # st-net channels (512 in Kingma & Dhariwal: impractical on a CPU)
    size: int | None = None  # image side; default from the data (most common size, capped at max_size)
    max_size: int = 32
    channels: int | None = None  # 1 grey / 3 RGB; default from the data
    holdout: float = 0.2  # share of TRAIN held out to calibrate the thresholds
    fpr: float = 0.05  # share of held-out in-distribution images flagged
    feature_size: int = 96  # EfficientNet-Lite0 input side for the feature detectors
    seed: int = 0
    max_images: int | None = None  # a seeded random subset of TRAIN of this size (default: all)
    feature_cap: int = 5000  # feature detectors fit on at most this many images (stratified by class)
    calibration_cap: int = 2000  # thresholds and ensembles calibrate on at most this many images
    dagger_steps: int = 300  # steps of the Diff-dagger finetune of the general model
    zoo: bool = True  # use the shipped zoo models (general models; a named set's trained models)
    progress: bool = True

    def check(self) -> None:
        """ValueError / TypeError (one line, naming the setting) for a value the CLI's ``fit``
        flags would refuse: sizes, widths and counts past the limits of ``detectors.limits``
        (named in the error), unknown detectors, shares outside (0, 1)."""
        if self.detectors is None:
            pass
        elif isinstance(self.detectors, (str, bytes)) or not isinstance(self.detectors, (tuple, list)):
            raise TypeError(
                f"FitConfig: detectors must be a tuple of catalogue names, got {self.detectors!r}"
            )
        unknown = [d for d in self.detectors or () if d not in CATALOGUE]
        if unknown or (self.detectors is not None and not self.detectors):
            raise ValueError(f"detectors: unknown {unknown}; choose from {', '.join(CATALOGUE)}")
        for name, (low, high, limit) in _LIMITS.items():
            _check_limit(getattr(self, name), name, low, high, limit, optional=name in ("size", "max_images"))
        if self.size is not None and self.size % 2**self.levels:
            raise ValueError(
                f"FitConfig: size must be a positive multiple of {2**self.levels} (2**levels), got {self.size!r}"
            )
        if self.channels not in (None, 1, 3) or isinstance(self.channels, bool):
            raise ValueError(
                f"FitConfig: channels must be 1 (grey), 3 (RGB) or None (from the data), got {self.channels!r}"
            )
        check_number(self.holdout, "holdout", "FitConfig", low=0, high=1, low_open=True, high_open=True)
        check_number(self.fpr, "fpr", "FitConfig", low=0, high=1, low_open=True, high_open=True)
        check_number(self.lr, "lr", "FitConfig", low=0, high=1, low_open=True)
        check_bools("FitConfig", progress=self.progress, zoo=self.zoo)


#: FitConfig's integer settings: (lowest, highest, the limit's name), as the CLI's ``fit`` flags
_LIMITS = {
    "steps": (1, MAX_STEPS, "MAX_STEPS"),
    "batch_size": (1, MAX_BATCH, "MAX_BATCH"),
    "levels": (1, MAX_LEVELS, "MAX_LEVELS"),
    "depth": (1, MAX_DEPTH, "MAX_DEPTH"),
    "hidden": (1, MAX_HIDDEN, "MAX_HIDDEN"),
    "size": (2, MAX_IMAGE_SIZE, "MAX_IMAGE_SIZE"),
    "max_size": (2, MAX_IMAGE_SIZE, "MAX_IMAGE_SIZE"),
    "feature_size": (MIN_FEATURE_SIZE, MAX_FEATURE_SIZE, "MAX_FEATURE_SIZE"),
    "seed": (0, MAX_SEED, "MAX_SEED"),
    "max_images": (3, MAX_IMAGES, "MAX_IMAGES"),
    "feature_cap": (3, MAX_IMAGES, "MAX_IMAGES"),
    "calibration_cap": (2, MAX_IMAGES, "MAX_IMAGES"),
    "dagger_steps": (1, MAX_STEPS, "MAX_STEPS"),
}


def _check_limit(value, name: str, low: int, high: int, limit: str, optional: bool = False) -> None:
    """An integer setting in [low, high]; past ``high`` the error names the limit."""
    try:
        check_number(value, name, "FitConfig", low=low, integer=True, optional=optional)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{e} (at most {high})") from None
    if value is not None and value > high:
        raise ValueError(
            f"FitConfig: {name} {value} is above the limit of {high} ({limit} in detectors.limits, as the "
            f"command line's flags); use a smaller value"
        )


def holdout_split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, calibration indices): a seeded permutation, ``holdout`` of it held out."""
    n_cal = max(1, int(round(holdout * n)))
    if n - n_cal < 2:
        raise ValueError(
            f"{n} images: too few to fit and hold out {holdout:.0%} for calibration "
            "(need at least 3; 100+ recommended)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_cal:].sort().values, perm[:n_cal].sort().values


def _glow(policy: ImagePolicy, cfg: FitConfig):
    import invflow

    return invflow.Glow(policy.channels, policy.size, levels=cfg.levels, steps=cfg.depth, hidden=cfg.hidden)


#: in a flow's run directory: the digests of the images it was trained on (:func:`image_digests`)
TRAINED_ON_FILE = "trained-on.json"


def image_digests(images: torch.Tensor) -> list[str]:
    """One digest per image of uint8 [N, C, S, S]: the first 16 hex digits of the SHA-1 of its
    bytes (equal images, equal digests; a chance collision between two of a million images
    is about 3e-8)."""
    return [hashlib.sha1(im.numpy().tobytes()).hexdigest()[:16] for im in images.contiguous()]


def _read_trained_on(run_dir: str, default: list) -> list:
    """The image digests recorded in ``run_dir/trained-on.json`` (``default`` when an older run
    has none); the file is read only when it is a regular file inside ``run_dir`` after
    resolving links (``store.inside``) and holds a list of digests (else ValueError)."""
    path = os.path.join(run_dir, TRAINED_ON_FILE)
    if not os.path.lexists(path):
        return default
    real = inside(run_dir, TRAINED_ON_FILE, TRAINED_ON_FILE)
    found = read_json(real, f"{TRAINED_ON_FILE} (the digests of the images the model was trained on)")
    images = found.get("images", default)
    if not isinstance(images, list) or not all(isinstance(d, str) for d in images):
        raise ValueError(
            f"{real}: 'images' must be a list of image digests (strings); remove the file or fit into "
            "a new --out"
        )
    return images


def _train_or_reuse(
    model,
    data: torch.Tensor,
    run_dir: str,
    cfg: FitConfig,
    say,
    what: str,
    start: str,
    images=None,
    objective=None,
    steps: int | None = None,
    lr: float | None = None,
    warmup: int | None = None,
):
    """Trains ``model`` on ``data`` in the Trainer run directory ``run_dir`` (resuming a run
    there, or reusing it when it already has ``cfg.steps`` steps) and returns (the model read
    back from its latest checkpoint, in eval mode; the digests of the images it was trained
    on).  ``images``: uint8 images whose content ``data`` is (default ``data``); their digests
    are recorded in ``run_dir/trained-on.json`` when training, and read back when reusing a run
    (the current ones when an older run has none).  ``what`` names the model in messages,
    ``start`` is the line printed before training.  ``objective`` (default: maximum
    likelihood), ``steps``, ``lr``, ``warmup``: a finetune's settings (a model given with an
    objective is already trained: no data-dependent initialisation)."""
    import invflow
    from invflow.train import Trainer, nll

    steps = cfg.steps if steps is None else steps
    resume = os.path.isfile(os.path.join(run_dir, "latest"))
    trainer = Trainer(
        model,
        data,
        out_dir=run_dir,
        objective=nll if objective is None else objective,
        steps=steps,
        batch_size=min(cfg.batch_size, len(data)),
        lr=cfg.lr if lr is None else lr,
        warmup=max(1, min(100, steps // 5)) if warmup is None else warmup,
        seed=cfg.seed,
        checkpoint_every=max(10, steps // 10),
        progress=cfg.progress,
        log_every=10,
    )
    if objective is not None:
        trainer.initialize = lambda: None
    digests = image_digests(data if images is None else images)
    record = os.path.join(run_dir, TRAINED_ON_FILE)
    if resume and trainer.load_latest() and trainer.step >= steps:
        say(f"{run_dir}: reusing the trained {what} (step {trainer.step})")
        digests = _read_trained_on(run_dir, digests)
    else:
        say(start + (f", resuming at step {trainer.step}" if resume else ""))
        os.makedirs(run_dir, exist_ok=True)
        if resume:  # trained on the earlier images, then on these
            digests = list(dict.fromkeys(_read_trained_on(run_dir, []) + digests))
        write_json(record, {"images": digests})
        trainer.step = 0  # fit(resume=True) reloads the checkpoint itself
        trainer.fit(resume=resume)
    return invflow.checkpoint.load(run_dir), digests


def _train_flow(run_dir: str, images: torch.Tensor, policy: ImagePolicy, cfg: FitConfig, say):
    """Trains (or resumes, or reuses) a Glow in the Trainer run directory ``run_dir``; returns
    (it read back from its latest checkpoint, in eval mode; its training images' digests)."""
    torch.manual_seed(cfg.seed)
    model = _glow(policy, cfg)
    start = (
        f"training a Glow ({sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{policy.channels}x{policy.size}x{policy.size}) on {len(images)} images for {cfg.steps} steps"
    )
    return _train_or_reuse(model, images, run_dir, cfg, say, "model", start)


def _train_vector_flow(run_dir: str, z: torch.Tensor, cfg: FitConfig, say, images=None):
    """A ``VectorFlow`` on projected features (Schmier et al. 2022's "Flow"), trained or resumed
    in the run directory ``run_dir`` like the image flow; ``images``: the uint8 images whose
    features ``z`` are.  Returns (the flow, its training images' digests)."""
    import invflow

    torch.manual_seed(cfg.seed)
    model = invflow.VectorFlow(z.shape[1], blocks=4, hidden=64)
    start = f"training a feature flow ({z.shape[1]} PCA dimensions) for {cfg.steps} steps"
    return _train_or_reuse(model, z, run_dir, cfg, say, "feature flow", start, images)


def _cached_features(out: str, images: torch.Tensor, cfg: FitConfig) -> torch.Tensor:
    """EfficientNet-Lite0 features of ``images``, cached in ``out/features.safetensors``
    (keyed by the images' digest and the input size) so a re-run fit skips the extraction.
    The cache is read only when it is a regular file inside ``out`` after resolving links
    (``store.inside``: ValueError otherwise); one that is unreadable or does not match
    is extracted again and replaced."""
    from ..features import image_features

    digest = hashlib.sha1(images.numpy().tobytes()).hexdigest()
    path = os.path.join(out, FEATURES_FILE)
    if os.path.lexists(path):  # a regular file inside ``out`` only (a link out of it: ValueError)
        real = inside(out, FEATURES_FILE, FEATURES_FILE)
        try:
            tensors, meta = read_tensors(real)
        except ValueError:  # not one the fit wrote: extracted again and replaced
            tensors, meta = {}, {}
        feats = tensors.get("features")
        if (
            meta.get("digest") == digest
            and meta.get("feature_size") == str(cfg.feature_size)
            and isinstance(feats, torch.Tensor)
            and feats.dim() == 2
            and len(feats) == len(images)
            and feats.is_floating_point()
            and bool(torch.isfinite(feats).all())
        ):
            return feats
    feats = image_features(images, cfg.feature_size, progress=cfg.progress)
    write_tensors(path, {"features": feats}, {"digest": digest, "feature_size": str(cfg.feature_size)})
    return feats


# ------------------------------------------------------------------------- the steps
@dataclasses.dataclass
class Train:
    """TRAIN as read: uint8 images (a batch or a list of any sizes), labels or None, its name
    and the unreadable files skipped."""

    images: object
    labels: torch.Tensor | None
    name: str
    skipped: list


#: why the default detectors are these (recorded in a bundle fitted with the defaults)
DEFAULTS_REASON = (
    "the best worst case over the OOD suite (docs/results.md section 6, 'The defaults of fit'): "
    "the ensemble of Diff-dagger, feature PCA, the transformation classifier, Diff and PNG "
    "complexity when a shipped general-distribution model fits the data (each member collapses "
    "on some kind of OOD data, the five together on none of the suite's sets), else PNG "
    "complexity + feature PCA"
)


def choose_zoo(train, policy: ImagePolicy, cfg: FitConfig, say) -> dict:
    """{role: zoo model} this fit uses (``cfg.zoo``): a named set's own trained models when TRAIN
    is that set, whole, at the models' size (``detectors.zoo.models_for``; the fit then trains
    no flow), else the general-distribution model of the data's colour mode and size
    (``detectors.zoo.general_for``), else {}."""
    from .. import zoo

    if not cfg.zoo:
        return {}
    named = zoo.models_for(train.name) if isinstance(train.name, str) else None
    if named and cfg.max_images is None:
        config = zoo.card(named["flow"])["model"]["config"]  # its card: no second load
        if (config["in_channels"], *config["image_size"]) == (policy.channels, policy.size, policy.size):
            say(
                f"{train.name}: using the zoo's models trained on it ({', '.join(named.values())}); "
                "--no-zoo trains new ones"
            )
            return named
    general = zoo.general_for(policy.channels, policy.size)
    return {"general": general} if general else {}


def resolve_detectors(cfg: FitConfig, zoo_names: dict) -> tuple:
    """``cfg.detectors``, or the default set: :data:`DEFAULT_WITH_GENERAL` when a shipped
    general model fits the data, else :data:`DEFAULT_DETECTORS` (:data:`DEFAULTS_REASON`)."""
    if cfg.detectors is not None:
        return tuple(cfg.detectors)
    return DEFAULT_WITH_GENERAL if "general" in zoo_names else DEFAULT_DETECTORS


def announce_members(detectors: tuple, say) -> tuple:
    """The detectors to fit: ``detectors`` with each ensemble's members (``with_members``),
    saying which members were added."""
    for ens in (d for d in detectors if members(d)):
        added = [m for m in members(ens) if m not in detectors]
        if added:
            say(f"{ens} combines {', '.join(members(ens))}: also fitting and reporting {', '.join(added)}")
    return with_members(detectors)


def read_train(data, cfg: FitConfig, say) -> Train:
    """TRAIN (named sets from their training split), unreadable files reported on one line, and
    a seeded random subset of ``cfg.max_images`` when set.  A folder's files are not decoded
    here: only their headers are read (:meth:`~detectors.data.ImageFiles.headers`), and the
    subset is drawn from the files whose header reads."""
    raw, labels, name, skipped = read_images(data, cfg.progress, split="train")
    if isinstance(raw, ImageFiles):
        n_files = len(raw) + len(skipped)
        raw, _, unreadable = raw.headers(cfg.progress)
        skipped = skipped + unreadable
        labels = torch.tensor(raw.labels, dtype=torch.int64) if labels is not None else None
        if not len(raw):
            raise ValueError(none_readable(name, n_files, skipped))
    if skipped:
        say(describe_skipped(skipped))
    if cfg.max_images is not None and len(raw) > cfg.max_images:
        keep = torch.randperm(len(raw), generator=torch.Generator().manual_seed(cfg.seed + 1))[
            : cfg.max_images
        ]
        keep = keep.sort().values
        if isinstance(raw, ImageFiles):
            raw = raw.select(keep.tolist())
        elif isinstance(raw, (list, tuple)):
            raw = [raw[int(i)] for i in keep]
        else:
            raw = raw[keep]
        labels = labels[keep] if labels is not None else None
        say(f"{name}: using a seeded random subset of {cfg.max_images} images")
    return Train(raw, labels, name, skipped)


def choose_policy(train: Train, cfg: FitConfig, say) -> ImagePolicy:
    """The resize / colour policy of the bundle: from ``cfg`` or from the data.  Image files
    are then decoded, resized and dropped one at a time (``train.images`` becomes the uint8
    batch [N, C, S, S]): the policy comes from their headers, and is checked against the
    decoded images (files that do not decode are skipped and reported, and a policy that the
    decoded images change is applied again), so the result is that of decoding them all."""
    kw = dict(size=cfg.size, channels=cfg.channels, multiple=2**cfg.levels, max_size=cfg.max_size)
    policy = ImagePolicy.from_images(train.images, **kw)
    if isinstance(train.images, ImageFiles):
        files = train.images
        x, kept, skipped, stats = read_resized(
            files, policy, cfg.progress, desc=f"reading {printable(train.name)}"
        )
        if skipped:
            say(describe_skipped(skipped))
            train.skipped = train.skipped + skipped
        if not kept:
            raise ValueError(none_readable(train.name, len(files), skipped))
        exact = ImagePolicy.from_stats(stats, **kw)
        if exact != policy:  # a header told another size or mode than the decoded pixels
            policy = exact
            x, kept2, _, _ = read_resized(files.select(kept), policy, cfg.progress, desc="resizing again")
            kept = [kept[i] for i in kept2]
        train.images = x
        train.labels = train.labels[kept] if train.labels is not None else None
    say(
        f"{train.name}: {len(train.images)} images -> {policy.channels}x{policy.size}x{policy.size} "
        f"({'grey' if policy.channels == 1 else 'RGB'}; resize the shorter side and centre-crop)"
    )
    return policy


def model_config(cfg: FitConfig) -> dict:
    return {"class": "Glow", "levels": cfg.levels, "depth": cfg.depth, "hidden": cfg.hidden}


def start_run(out: str, train: Train, policy: ImagePolicy, cfg: FitConfig, command, zoo_names=None) -> None:
    """Refuses an ``out`` holding something else or a fit with other settings, then writes
    ``fit.json`` (the settings a re-run must match to resume)."""
    settings = {
        "data": str(train.name),
        "n_images": len(train.images),
        "max_images": cfg.max_images,
        "preprocessing": policy.to_json(),
        "model": model_config(cfg),
        "holdout": cfg.holdout,
        "seed": cfg.seed,
        "zoo": dict(zoo_names or {}),
    }
    check_out(out, settings)
    os.makedirs(out, exist_ok=True)
    write_json(
        os.path.join(out, FIT_FILE), {**settings, "command": command, "config": dataclasses.asdict(cfg)}
    )


@dataclasses.dataclass
class Split:
    """TRAIN by the policy (uint8 [N, C, S, S]) and its seeded split: the fit part, the
    held-out (calibration) part, and the sample of the fit part the feature detectors fit on
    (``feat_idx``, at most ``FitConfig.feature_cap``).  ``cal_x``: calibration images from
    elsewhere (a named set's test split, when the zoo's models saw all of TRAIN), used
    instead of ``x[cal_idx]``; ``calibration``: where the calibration images come from."""

    x: torch.Tensor
    fit_idx: torch.Tensor
    cal_idx: torch.Tensor
    feat_idx: torch.Tensor | None = None
    cal_x: torch.Tensor | None = None
    calibration: str = "held-out part of TRAIN"

    @property
    def fit(self) -> torch.Tensor:
        return self.x[self.fit_idx]

    @property
    def cal(self) -> torch.Tensor:
        return self.cal_x if self.cal_x is not None else self.x[self.cal_idx]

    @property
    def feat(self) -> torch.Tensor:
        return self.x[self.fit_idx if self.feat_idx is None else self.feat_idx]


def capped_sample(idx: torch.Tensor, labels, cap: int, seed: int) -> torch.Tensor:
    """At most ``cap`` of the indices ``idx`` (sorted), seeded: all when there are no more;
    with ``labels`` (of all images) a stratified sample, each class keeping its share
    (rounded, at least one image per class when the cap allows)."""
    if len(idx) <= cap:
        return idx
    g = torch.Generator().manual_seed(seed + 3)
    if labels is None:
        return idx[torch.randperm(len(idx), generator=g)[:cap]].sort().values
    lab = labels[idx]
    classes, counts = lab.unique(return_counts=True)
    quota = (counts.double() * cap / len(idx)).floor().long().clamp(min=1 if len(classes) <= cap else 0)
    order = torch.argsort(-(counts.double() * cap / len(idx) - quota.double()))  # largest remainders
    for i in order[: max(0, cap - int(quota.sum()))]:
        quota[i] += 1
    picked = []
    for c, q in zip(classes, quota):
        members = idx[lab == c]
        picked.append(members[torch.randperm(len(members), generator=g)[: int(q)]])
    return torch.cat(picked)[:cap].sort().values


def split_train(train: Train, policy: ImagePolicy, cfg: FitConfig, say, zoo_names=None) -> Split:
    """Applies the policy and holds out ``cfg.holdout`` of TRAIN for calibration
    (:func:`holdout_split`), at most ``cfg.calibration_cap`` of it used; the feature detectors'
    sample of the fit part (:func:`capped_sample`, ``cfg.feature_cap``).  When the zoo's
    in-distribution models of a named set are reused (``zoo_names`` has a "flow"), they saw
    every training image: all of TRAIN is the fit part and the calibration images are the last
    ``cfg.calibration_cap`` of the set's test split."""
    x = policy.apply(train.images, cfg.progress)
    g = torch.Generator().manual_seed(cfg.seed + 4)
    if zoo_names and "flow" in zoo_names:
        test, _, _, _ = read_images(train.name, cfg.progress, split="test")
        test = policy.apply(test, cfg.progress)
        n_cal = min(cfg.calibration_cap, len(test))
        split = Split(
            x,
            torch.arange(len(x)),
            torch.arange(0),
            cal_x=test[len(test) - n_cal :],
            calibration=f"the last {n_cal} images of the {train.name} test split (the zoo models saw all of TRAIN)",
        )
    else:
        fit_idx, cal_idx = holdout_split(len(x), cfg.holdout, cfg.seed)
        if len(cal_idx) > cfg.calibration_cap:
            cal_idx = cal_idx[torch.randperm(len(cal_idx), generator=g)[: cfg.calibration_cap]].sort().values
        split = Split(x, fit_idx, cal_idx)
    split.feat_idx = capped_sample(split.fit_idx, train.labels, cfg.feature_cap, cfg.seed)
    say(
        f"fit part: {len(split.fit_idx)} images (feature detectors: {len(split.feat_idx)}"
        f"{', stratified by class' if train.labels is not None and len(split.feat_idx) < len(split.fit_idx) else ''}); "
        f"calibration: {len(split.cal)} images ({split.calibration})"
    )
    return split


def _min_images_for_calibration(holdout: float, n_cal: int = 2) -> int:
    """The fewest images from which :func:`holdout_split` holds out ``n_cal`` and keeps 2 to fit."""
    n = 3
    while max(1, int(round(holdout * n))) < n_cal or n - max(1, int(round(holdout * n))) < 2:
        n += 1
    return n


def check_plan(names: tuple, n_images: int, policy: ImagePolicy, cfg: FitConfig, zoo_names: dict) -> None:
    """ValueError, before anything is trained or written, when the detectors ``names`` cannot be
    fitted on ``n_images`` images of ``policy`` with ``zoo_names``: Diff-dagger without a shipped
    general model (``--no-zoo``, or none for the data's mode and size), ensembles with fewer
    than 2 held-out images to standardise their members on."""
    from ..zoo import GENERAL_MODELS

    dagger = [d for d in names if CATALOGUE[d].needs == "flow+dagger"]
    if dagger and not ({"general", "dagger"} & set(zoo_names)):
        using = [d for d in names if set(members(d)) & set(dagger)]
        which = ", ".join(dagger) + (f" (in {', '.join(using)})" if using else "")
        if not cfg.zoo:
            raise ValueError(
                f"{which} finetunes a shipped general-distribution model, which --no-zoo turns off; "
                "drop --no-zoo, or choose detectors without diff-dagger (e.g. --detectors png+pca)"
            )
        mode = f"{'grey' if policy.channels == 1 else 'RGB'} {policy.size}x{policy.size}"
        have = ", ".join(f"{'grey' if c == 1 else 'RGB'} {s}x{s}" for c, s in GENERAL_MODELS)
        raise ValueError(
            f"{which} finetunes a shipped general-distribution model, and the zoo has none for "
            f"{mode} images (it has {have}); pass --size / --grey / --rgb to match one, or "
            "choose detectors without diff-dagger (e.g. --detectors png+pca)"
        )
    ensembles = [d for d in names if members(d)]
    n_cal = max(1, int(round(cfg.holdout * n_images)))
    if ensembles and "flow" not in zoo_names and n_cal < 2:
        raise ValueError(
            f"{', '.join(ensembles)} standardise each member's score on the held-out part of TRAIN "
            f"and need at least 2 held-out images: {n_images} images with --holdout {cfg.holdout:g} "
            f"hold out {n_cal}; give at least {_min_images_for_calibration(cfg.holdout)} images "
            "(100+ recommended) or a larger --holdout"
        )


def check_needs(names: tuple, split: Split, labels) -> set:
    """What the detectors need (``Spec.needs``); ValueError when TRAIN cannot provide it."""
    needs = {CATALOGUE[d].needs for d in names}
    if ENSEMBLE in needs and len(split.cal) < 2:
        raise ValueError(
            f"{', '.join(d for d in names if members(d))} standardise each member's score on the "
            f"held-out part of TRAIN, which has {len(split.cal)} image(s); use more images or a "
            "larger --holdout"
        )
    if "features+labels" in needs and labels is None:
        supervised = [d for d in names if CATALOGUE[d].needs == "features+labels"]
        raise ValueError(
            f"detectors {supervised} need class labels: put TRAIN's images in one sub-folder "
            "per class (or pass a Dataset of (image, label) items)"
        )
    return needs


#: broadened photo patches the Diff-dagger finetune keeps the general model on
DAGGER_PATCHES = 20000


def _from_zoo(out: str, role: str, name: str, models: dict, model_paths: dict, say) -> None:
    """Copies the zoo model ``name`` into ``out/models/<role>.safetensors`` (the bundle stays
    self-contained) and loads it as ``models[role]``."""
    import shutil

    from .. import zoo

    rel = os.path.join("models", f"{role}.safetensors")
    dst = os.path.join(out, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(os.path.join(zoo.ZOO_DIR, "weights", f"{name}.safetensors"), dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    models[role], model_paths[role] = zoo.load(name), rel
    say(f"{role} model: the zoo's {name} ({zoo.card(name)['summary']})")


def _general_patches(policy: ImagePolicy) -> torch.Tensor:
    """The general model's data for the Diff-dagger finetune: broadened photo patches of the
    policy's size and colour mode (the zoo's general models were trained on them)."""
    from ..data import broaden
    from ..data.files import DatasetUnavailable
    from ..data.named import natural_patches
    from ..data.photos import photo_patches

    try:
        patches = photo_patches(DAGGER_PATCHES, policy.size, "train", seed=0, channels=policy.channels)
    except DatasetUnavailable:  # without the wallpaper packages: the scikit-image / -learn photos
        patches = natural_patches(DAGGER_PATCHES, policy.size, policy.channels, seed=0)
    return broaden(patches, seed=0)


def _finetune_dagger(run_dir: str, general_name: str, in_model, x_fit, policy, cfg: FitConfig, say):
    """Diff-dagger (Schirrmeister et al. 2020 Sec. 5.3): the zoo's general model ``general_name``
    finetuned for ``cfg.dagger_steps`` steps on broadened photo patches with the fit part as
    outliers, scored by the in-distribution flow (``objectives.diff_dagger_objective``);
    resumable in ``run_dir``.  Returns (the finetuned model in eval mode, digests)."""
    from .. import zoo
    from ..objectives import diff_dagger_objective

    model = zoo.load(general_name).train()
    start = (
        f"Diff-dagger: finetuning the zoo's {general_name} with the fit part as outliers for "
        f"{cfg.dagger_steps} steps"
    )
    return _train_or_reuse(
        model,
        _general_patches(policy),
        run_dir,
        cfg,
        say,
        "Diff-dagger general model",
        start,
        images=x_fit,
        objective=diff_dagger_objective(in_model, x_fit),
        steps=cfg.dagger_steps,
        lr=5e-4,
        warmup=min(50, max(1, cfg.dagger_steps // 5)),
    )


def train_flows(
    out: str,
    needs: set,
    x_fit: torch.Tensor,
    policy: ImagePolicy,
    cfg: FitConfig,
    say,
    trained_on=None,
    zoo_names=None,
):
    """The image flow, the general-distribution flow of ``diff`` / ``diff-dagger`` and the
    Diff-dagger finetune: (models by role, their paths relative to ``out``).  A role named in
    ``zoo_names`` ({role: zoo model}) is the zoo's model, copied into the bundle; else the flow
    trains on the fit part, the general model (``diff`` only) on natural photo patches, and
    the Diff-dagger model is the zoo's general model finetuned (:func:`_finetune_dagger`).
    ``trained_on``: a dict given the digests of each trained model's images, by role
    (:func:`image_digests`)."""
    models, model_paths = {}, {}
    trained_on = {} if trained_on is None else trained_on
    zoo_names = zoo_names or {}
    if needs & {"flow", "flow+general", "flow+dagger"}:
        if "flow" in zoo_names:
            _from_zoo(out, "flow", zoo_names["flow"], models, model_paths, say)
        else:
            model_paths["flow"] = os.path.join("models", "flow")
            models["flow"], trained_on["flow"] = _train_flow(
                os.path.join(out, model_paths["flow"]), x_fit, policy, cfg, say
            )
    if needs & {"flow+general", "flow+dagger"}:
        if "general" in zoo_names:
            _from_zoo(out, "general", zoo_names["general"], models, model_paths, say)
        elif "flow+dagger" in needs:  # fit_bundle's check_plan says why, before any training
            raise ValueError("diff-dagger needs a shipped general-distribution model (see check_plan)")
        else:
            from ..data.named import natural_patches

            general = natural_patches(
                max(1000, len(x_fit)),
                size=policy.size,
                channels=policy.channels,
                seed=cfg.seed,
                split="train",
            )
            model_paths["general"] = os.path.join("models", "general")
            say("general-distribution model: natural photo patches (scikit-image, scikit-learn, matplotlib)")
            models["general"], trained_on["general"] = _train_flow(
                os.path.join(out, model_paths["general"]), general, policy, cfg, say
            )
    if "flow+dagger" in needs:
        if "dagger" in zoo_names:
            _from_zoo(out, "dagger", zoo_names["dagger"], models, model_paths, say)
        else:
            model_paths["dagger"] = os.path.join("models", "dagger")
            models["dagger"], _ = _finetune_dagger(
                os.path.join(out, model_paths["dagger"]),
                zoo_names["general"],
                models["flow"],
                x_fit,
                policy,
                cfg,
                say,
            )
    return models, model_paths


def extract_features(out: str, needs: set, split: Split, labels, cfg: FitConfig, tensors: dict, say):
    """EfficientNet-Lite0 features of the feature sample of the fit part (``split.feat``) and of
    the calibration images: (f_fit, f_cal, the sample's images), Nones when no detector needs
    them; the sample's features (and labels) go into ``tensors`` for the state file.  Memory
    grows with the capped sample, not with TRAIN."""
    if not needs & set(FEATURE_NEEDS):
        return None, None, None
    x_feat, cal = split.feat, split.cal
    say(
        f"EfficientNet-Lite0 features at {cfg.feature_size}x{cfg.feature_size} of {len(x_feat)} + "
        f"{len(cal)} images"
    )
    feats = _cached_features(out, torch.cat([x_feat, cal]), cfg)
    f_fit, f_cal = feats[: len(x_feat)], feats[len(x_feat) :]
    tensors["features.fit"] = f_fit.float()
    if "features+labels" in needs:
        tensors["labels.fit"] = labels[split.feat_idx].long()
    return f_fit, f_cal, x_feat


def train_feature_flow(
    out: str,
    needs: set,
    f_fit,
    cfg: FitConfig,
    models,
    model_paths,
    tensors,
    say,
    x_fit=None,
    trained_on=None,
):
    """Schmier et al. 2022's "Flow": the PCA projection of the fit part's features (saved in
    ``tensors``) and a vector flow trained on them with noise; returns the projection or None.
    ``x_fit``: the fit part's images (uint8), whose digests go into ``trained_on`` when given."""
    if "features-flow" not in needs:
        return None
    projection = Projection.fit(f_fit, FEATURE_FLOW_DIM)
    tensors.update(projection.tensors())
    g = torch.Generator().manual_seed(cfg.seed + 2)
    z_fit = projection(f_fit + FEATURE_NOISE * torch.randn(f_fit.shape, generator=g))
    model_paths["feature-flow"] = os.path.join("models", "feature-flow")
    models["feature-flow"], digests = _train_vector_flow(
        os.path.join(out, model_paths["feature-flow"]), z_fit, cfg, say, x_fit
    )
    if trained_on is not None and x_fit is not None:
        trained_on["feature-flow"] = digests
    return projection


def fit_detectors(
    names, split: Split, labels, features, models, projection, cfg: FitConfig, say, tensors=None
):
    """Fits each detector on the fit part (feature detectors on its feature sample) and sets
    its threshold on the calibration images (members before ensembles; an ensemble
    standardises its members' calibration scores): (detectors by name, their ``bundle.json``
    entries), both in the order of ``names``.  ``tensors``: gets fitted arrays that go into
    the state file (the transformation classifier's)."""
    f_fit, f_cal, x_feat = features
    tensors = {} if tensors is None else tensors
    x_fit, x_cal = split.fit, split.cal
    entries, dets = [], {}
    member_cal = {}  # ensemble members' scores on the held-out part
    for dname in sorted(names, key=lambda d: CATALOGUE[d].needs == ENSEMBLE):  # members before ensembles
        spec = CATALOGUE[dname]
        params = dict(spec.params)
        if spec.cls == "KNN":
            params["k"] = max(1, min(params["k"], len(x_fit) - 1))
        det = build(dname, spec, models, cfg.feature_size, cfg.progress, params, projection, dets)
        fit_in, cal_in = (f_fit, f_cal) if spec.needs in FEATURE_NEEDS else (x_fit, x_cal)
        if (
            spec.needs == ENSEMBLE
        ):  # Ensemble.fit: mean / std per member and the threshold, on the held-out part
            known = with_member_scores(det, member_cal).fit(x_cal, cfg.fpr)
            det._stats, det.threshold, det.fpr = known._stats, known.threshold, known.fpr
        else:
            if spec.needs == "features+labels":  # the detector's own state, from the fit part only
                det._fit_state(f_fit.double().numpy(), labels[split.feat_idx].numpy())
            elif spec.needs == "images+features":  # transformed copies of the sample's images
                det._fit(x_feat, features=f_fit.double().numpy())
                for k, t in det.tensors().items():
                    tensors[f"{dname}.{k}"] = t
            else:
                det._fit(fit_in)
            det.calibrate(cal_in, cfg.fpr)  # the threshold, from the held-out part
            if any(dname in members(d) for d in names):
                member_cal[dname] = det.score(cal_in)
        dets[dname] = det
        entries.append(
            {
                "name": dname,
                "class": spec.cls,
                "params": params,
                "uses": det.uses,
                "source": spec.source,
                "threshold": det.threshold,
                "fpr": det.fpr,
                "state": state(det, spec, dname),
            }
        )
        say(f"  {dname:<11} threshold {det.threshold:.5g} (flags {cfg.fpr:.0%} of the calibration images)")
    n_cal = len(split.cal)
    if n_cal * cfg.fpr < 5:
        say(
            f"warning: the thresholds rest on {n_cal} held-out image(s), about {n_cal * cfg.fpr:.1f} "
            f"above each threshold: the share flagged on new in-distribution images can be far from "
            f"{cfg.fpr:.0%}; fit on more images (or a larger --holdout) for a calibrated threshold"
        )
    entries.sort(key=lambda e: names.index(e["name"]))
    return {d: dets[d] for d in names}, entries


class CalibrationOnTrainingDataWarning(UserWarning):
    """Some calibration images are (equal to) images a model was trained on: the thresholds
    that rest on them flag more than the chosen share of new in-distribution images."""


#: which detectors' scores come from which trained model (by role)
_ROLE_NEEDS = {
    "flow": ("flow", "flow+general"),
    "general": ("flow+general",),
    "feature-flow": ("features-flow",),
}


def check_calibration_data(names, cal: torch.Tensor, trained_on: dict, cfg: FitConfig) -> list[str]:
    """Warns (a :class:`CalibrationOnTrainingDataWarning`, one line per model) when images of
    the held-out part ``cal`` (uint8 [M, C, S, S]) equal images a model was trained on
    (``trained_on``: role -> digests, :func:`image_digests`): duplicates in TRAIN split across
    both parts, or a reused model trained on other images.  A flow scores its own training
    images as more likely than new ones, so a threshold set on them flags more than ``cfg.fpr``
    of new in-distribution images.  Returns the messages."""
    digests = image_digests(cal) if trained_on else []
    said = []
    for role, seen in trained_on.items():
        dets = [d for d in names if CATALOGUE[d].needs in _ROLE_NEEDS.get(role, ())]
        seen = set(seen)
        k = sum(d in seen for d in digests)
        if not k or not dets:
            continue
        msg = (
            f"{k} of the {len(digests)} calibration images equal images the {role} model was trained on "
            f"(duplicates in TRAIN, or a reused model): the thresholds of {', '.join(dets)} will flag "
            f"more than {cfg.fpr:.0%} of new images; remove the duplicates, or fit into a new --out"
        )
        warnings.warn(msg, CalibrationOnTrainingDataWarning, stacklevel=3)
        said.append(msg)
    return said


def write_bundle(
    out: str, train: Train, split: Split, policy, model_paths, entries, tensors, cfg, command, zoo_names=None
):
    """Writes ``state.safetensors`` (when there are fitted arrays), then ``bundle.json`` last;
    returns the metadata written (``zoo``: the zoo models used, by role; ``defaults``: why
    the default detectors are these, when they were not chosen)."""
    if tensors:
        write_tensors(os.path.join(out, STATE_FILE), tensors, {"format": FORMAT})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "versions": versions(),
        "preprocessing": policy.to_json(),
        "models": model_paths,
        "model": model_config(cfg),
        "feature_size": cfg.feature_size,
        "data": {
            "train": str(train.name),
            "n_images": len(split.x),
            "n_fit": len(split.fit_idx),
            "n_features": len(split.feat_idx) if split.feat_idx is not None else len(split.fit_idx),
            "n_calibration": len(split.cal),
            "calibration": split.calibration,
            "holdout": cfg.holdout,
            "seed": cfg.seed,
            "skipped": [p for p, _ in train.skipped],
        },
        "fit": dataclasses.asdict(cfg),
        "zoo": dict(zoo_names or {}),
        "detectors": entries,
    }
    if cfg.detectors is None:
        meta["defaults"] = DEFAULTS_REASON
    meta["fit"]["detectors"] = list(resolve_detectors(cfg, zoo_names or {}))
    write_json(os.path.join(out, BUNDLE_FILE), meta)
    return meta


def as_config(config) -> FitConfig:
    """``config`` as a :class:`FitConfig`: None gives the defaults, a FitConfig passes, a dict
    (or any mapping) of its settings is turned into one (``detectors`` as a tuple).  TypeError
    in one line for anything else or for a setting FitConfig does not have."""
    if config is None:
        return FitConfig()
    if isinstance(config, FitConfig):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(
            f"fit_bundle: config must be a FitConfig or a dict of its settings, got {type(config).__name__}"
        )
    known = [f.name for f in dataclasses.fields(FitConfig)]
    unknown = sorted(repr(k) for k in config if k not in known)
    if unknown:
        raise TypeError(
            f"fit_bundle: config has unknown settings {', '.join(unknown)}; FitConfig takes {', '.join(known)}"
        )
    settings = dict(config)
    if isinstance(settings.get("detectors"), list):
        settings["detectors"] = tuple(settings["detectors"])
    return FitConfig(**settings)


def fit_bundle(
    data, out: str, config: FitConfig | Mapping | None = None, command: str | None = None, say=print
) -> Bundle:
    """Fits the detectors of ``config`` on ``data`` (a path / named set, a ``Source``, or any
    input kind with images) and writes the bundle directory ``out`` (``detectors.bundle.store``).

    TRAIN is split (seeded) into a fit part and a held-out part of ``config.holdout``: flows
    train and fitted state is estimated on the fit part, every threshold is set on the
    held-out part so that a fraction ``config.fpr`` of it is flagged.  An ensemble
    (``detectors.Ensemble``, e.g. ``last-scale+pca``) standardises its members' scores on
    that held-out part too (its state is a monotone map of each member's score, so the same
    images may set its threshold: ``Ensemble.calibrate_on_fit_data``); its members are
    fitted and reported as well, added after it when not listed (``with_members``).
    Re-running resumes: trained flows and extracted features are reused.  Calibration images
    equal to a model's training images give a :class:`CalibrationOnTrainingDataWarning`
    (:func:`check_calibration_data`).
    """
    cfg = as_config(config)
    cfg.check()
    out = os.fspath(out)
    train = read_train(data, cfg, say)
    policy = choose_policy(train, cfg, say)
    zoo_names = choose_zoo(train, policy, cfg, say)
    names = announce_members(resolve_detectors(cfg, zoo_names), say)
    check_plan(names, len(train.images), policy, cfg, zoo_names)
    start_run(out, train, policy, cfg, command, zoo_names)
    split = split_train(train, policy, cfg, say, zoo_names)
    needs = check_needs(names, split, train.labels)
    trained_on = {}
    models, model_paths = train_flows(out, needs, split.fit, policy, cfg, say, trained_on, zoo_names)
    tensors = {}
    features = extract_features(out, needs, split, train.labels, cfg, tensors, say)
    projection = train_feature_flow(
        out, needs, features[0], cfg, models, model_paths, tensors, say, features[2], trained_on
    )
    check_calibration_data(names, split.cal, trained_on, cfg)
    dets, entries = fit_detectors(names, split, train.labels, features, models, projection, cfg, say, tensors)
    meta = write_bundle(out, train, split, policy, model_paths, entries, tensors, cfg, command, zoo_names)
    return Bundle(dets, policy, meta, cfg.feature_size, out)
