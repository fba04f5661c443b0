"""A flow of your own from invflow's layers, trained by maximum likelihood on a 2-D toy
density, checked for exactness and saved.

    python examples/custom_flow.py [--steps 500]

The layers are the ones a Glow step uses (Kingma & Dhariwal 2018): actnorm, an invertible
1x1 convolution (on vectors: an invertible linear map) and an affine coupling whose st-net is
any ``nn.Module`` you pass.  log p(x) = log N(f(x); 0, I) + log|det df/dx| (change of variables).
"""

from __future__ import annotations

import argparse
import math

import torch
from safetensors.torch import save_file
from torch import nn

import invflow
from invflow import masks


def two_moons(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points of the two-moons density, [n, 2] float64 (a standard 2-D flow benchmark)."""
    t = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.stack([torch.cos(t), torch.sin(t)], 1)
    x[~upper] = torch.stack([1 - torch.cos(t[~upper]), 0.5 - torch.sin(t[~upper])], 1)
    return x + 0.05 * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def st_net(in_features: int, out_features: int) -> nn.Module:
    """The coupling's conditioner: any module mapping [B, in] -> [B, out] works."""
    return nn.Sequential(nn.Linear(in_features, 64), nn.ReLU(), nn.Linear(64, out_features))


def build_flow(blocks: int = 6) -> invflow.Sequential:
    layers = []
    for k in range(blocks):
        layers += [
            invflow.ActNorm(2),
            invflow.InvConv1x1(2, lu=True),
            invflow.AffineCoupling(2, masks.Channel(k % 2), net=st_net, scale="tanh"),
        ]
    return invflow.Sequential(*layers)


def log_prob(flow: invflow.Sequential, x: torch.Tensor) -> torch.Tensor:
    z, logdet = flow(x)
    return -0.5 * (z**2).sum(1) - math.log(2 * math.pi) + logdet


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--out", default="custom_flow.safetensors", help="where to save the trained weights")
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    flow = build_flow().double()
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for step in range(args.steps):
        loss = -log_prob(flow, two_moons(256, g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  NLL {loss.item():.3f} nats")
    flow.eval()
    x = two_moons(512, g)
    with torch.no_grad():
        z, logdet = flow(x)
        x_back, inv_logdet = flow.inverse(z)
    print(
        f"inverse error {float((x_back - x).abs().max()):.2e}, log-det sum {float((logdet + inv_logdet).abs().max()):.2e}"
    )
    # the log-det equals log|det J| of the brute-force Jacobian
    jac = torch.autograd.functional.jacobian(lambda v: flow(v)[0], x[:1]).reshape(2, 2)
    print(f"log-det {float(logdet[0]):.6f} vs brute force {float(torch.linalg.slogdet(jac)[1]):.6f}")
    save_file(flow.state_dict(), args.out)  # safetensors: no pickle
    held_out_nll = float(-log_prob(flow, x).mean())
    print(f"held-out NLL {held_out_nll:.3f} nats; weights in {args.out}")
    return held_out_nll


if __name__ == "__main__":
    main()
