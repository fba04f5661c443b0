"""st-networks: the conditioners that map the conditioning part of a coupling's input to
the parameters h = [raw scale, shift] of the transformed part (2 x its channels).

Every network's last layer starts at zero, so a fresh coupling is the identity up to the
constant initial scale (sigmoid(2) for Glow's scale function; Glow Sec. 3.3)."""

from __future__ import annotations

from torch import nn


def zero_init(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class GlowNet(nn.Sequential):
    """Glow's st-net (Kingma & Dhariwal 2018, Sec. 3.3 / Table 4): 3x3 conv -> ReLU ->
    1x1 conv -> ReLU -> zero-initialised 3x3 conv, on [B, C, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 512):
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            zero_init(nn.Conv2d(hidden, out_channels, 3, padding=1)),
        )


class MLP(nn.Sequential):
    """Fully-connected st-net for vectors [B, D]: ``layers`` hidden ReLU layers of width
    ``hidden`` and a zero-initialised output layer."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 512, layers: int = 2):
        mods: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        mods.append(zero_init(nn.Linear(width, out_features)))
        super().__init__(*mods)
