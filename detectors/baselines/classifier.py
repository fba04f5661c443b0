"""A small pre-activation ResNet classifier for the classifier-based baselines of the five
papers (``detectors.scores.classifier``): maximum softmax probability and outlier exposure
("MSP-OE", Schirrmeister et al. 2020 Tab. 4), energy and Mahalanobis (Chali et al. 2023 Tab. 2), and the
in-distribution-vs-general-distribution classifier of Schirrmeister et al. 2020 S9 (``num_classes=1``).

    model = ResNetClassifier(in_channels=1, num_classes=10, image_size=28)
    logits = model(invflow.data.preprocess(images, dequantize=False))   # [B, 10]
    feats = model.features(x)                                             # [B, 4 * width]

Architecture (He, Zhang, Ren & Sun 2016, "Identity mappings in deep residual networks",
pre-activation blocks), written from the paper: a 3 x 3 stem convolution to ``width``
channels, then three stages of ``blocks[i]`` basic blocks with ``width``, ``2 * width`` and
``4 * width`` channels, the first block of stages 2 and 3 with stride 2.  A block is

    h = relu(bn1(x));  out = conv2(relu(bn2(conv1(h)))) + shortcut

with the identity as shortcut, or a 1 x 1 (strided) convolution of h where the shape changes.
The trunk ends with relu(bn(.)), global average pooling (the penultimate ``features``, used by
the Mahalanobis detector) and a linear head.  Convolutions have no bias (BatchNorm follows).
Any image size >= 8 works (two halvings leave >= 2 x 2); ``image_size`` fixes the size the
model accepts, as for the other models of the project.

Input contract: floats from ``invflow.data.preprocess`` (values in [-0.5, 0.5]) in the
model's dtype and on its device, [B, C, H, W].  Integer input raises ``TypeError`` (the
detectors accept raw uint8 and preprocess it); wrong rank / channels / size, NaN / Inf and
batches that look unpreprocessed (no negative value and a maximum above 0.5: raw 0..255
pixel values or torchvision's 0..1 given as floats; ``invflow.validation.check_preprocessed``,
the rule every image model applies) raise ``ValueError``.  Any other values are accepted: a
flow's samples, which leave [-0.5, 0.5], and the input perturbation of the Mahalanobis
detector (Lee et al. 2018).

Size and speed of the default ``ResNetClassifier()`` (1 x 28 x 28, width=32, blocks=(1, 1, 1),
10 classes): 307,690 parameters; measured 1.7-2.5 training steps/s (forward + backward +
Adamax step of the cross-entropy loss, train mode; three runs of 30 steps after 3 warm-up
steps) at batch 64 on one CPU thread (torch 2.13, shared 2-core machine under load).  About
2.4 GMACs per forward pass of the batch (conv multiply-adds).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from invflow import checkpoint
from invflow.validation import check_model_input

MIN_IMAGE_SIZE = 8


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"ResNetClassifier: {name} must be an int >= {minimum}, got {value!r}")
    return value


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b, Fig. 4e): BN-ReLU-conv3x3-BN-ReLU-conv3x3
    plus the identity, or a 1 x 1 convolution of the pre-activated input where the number of
    channels or the resolution changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(h)
        h = self.conv1(h)
        h = self.conv2(F.relu(self.bn2(h)))
        return h + skip


@checkpoint.register
class ResNetClassifier(nn.Module):
    """Small pre-activation ResNet classifier; see the module docstring.

    Args:
        in_channels: C >= 1.
        num_classes: K >= 1 logits; K = 1 is a binary classifier with one logit (the
            in-distribution-vs-general classifier of Schirrmeister et al. 2020 S9, ``BinaryClassifierScore``).
        image_size: H = W (int) or (H, W), each >= 8.
        width: channels of the first stage (then 2 * width, 4 * width).
        blocks: number of residual blocks in each of the three stages (each >= 1).

    ``forward(x)`` -> logits [B, K]; ``features(x)`` -> penultimate features [B, 4 * width]
    (after global average pooling); ``num_features`` = 4 * width.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, image_size=28, width: int = 32, blocks=(1, 1, 1)
    ):
        super().__init__()
        c = _positive_int("in_channels", in_channels)
        k = _positive_int("num_classes", num_classes)
        w = _positive_int("width", width)
        if (
            isinstance(image_size, bool)
            or not isinstance(image_size, (int, list, tuple))
            or (not isinstance(image_size, int) and len(image_size) != 2)
        ):
            raise ValueError(f"ResNetClassifier: image_size must be an int or (H, W), got {image_size!r}")
        h, wd = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        for name, size in (("height", h), ("width", wd)):
            _positive_int(f"image {name}", size, MIN_IMAGE_SIZE)
        if not isinstance(blocks, (list, tuple)) or len(blocks) != 3:
            raise ValueError(
                f"ResNetClassifier: blocks must be three ints (blocks per stage), got {blocks!r}"
            )
        for i, b in enumerate(blocks):
            _positive_int(f"blocks[{i}]", b)

        self.in_channels, self.num_classes, self.image_size = c, k, (h, wd)
        self.width, self.blocks = w, tuple(blocks)
        self.input_shape = (c, h, wd)
        self.num_features = 4 * w

        self.stem = nn.Conv2d(c, w, 3, padding=1, bias=False)
        stages, cin = [], w
        for i, (cout, n) in enumerate(zip((w, 2 * w, 4 * w), self.blocks)):
            layers = [PreActBlock(cin, cout, stride=1 if i == 0 else 2)]
            layers += [PreActBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, k)

    # -- checkpoints -------------------------------------------------------------------
    def config(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "width": self.width,
            "blocks": list(self.blocks),
        }

    @classmethod
    def from_config(cls, config: dict) -> ResNetClassifier:
        return cls(**config)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    # -- the network -------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 4 * width]: relu(bn(trunk(x))) averaged over space."""
        self.check_input(x)
        h = self.stages(self.stem(x))
        return F.relu(self.bn(h)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes]."""
        return self.head(self.features(x))

    # -- validation --------------------------------------------------------------------
    def check_input(self, x) -> None:
        """TypeError for non-tensors, integer dtypes and a dtype other than the parameters';
        ValueError for wrong rank, channels or size, another device, an empty batch, NaN / Inf
        and batches that look unpreprocessed (``invflow.validation.check_preprocessed``: 0..255 or
        torchvision's 0..1 floats); a flow's samples beyond [-0.5, 0.5] pass."""
        check_model_input(
            x,
            type(self).__name__,
            self.input_shape,
            self.stem.weight,
            images=True,
            integer_hint="; preprocess the images, or pass the raw uint8 images to a detector, "
            "which preprocesses them",
        )
