"""Training smoke tests of the fused backend on a device (stage 4 of `make gpu-check`).

    python tools/gpu_smoke.py --device cuda     # bf16 autocast training, CUDA graph, no syncs
    python tools/gpu_smoke.py --device cpu      # the CPU-runnable part (DRY_RUN=1, make test)

1. bf16-autocast Glow training: 40 Adam steps (16 on CPU, a smaller Glow) on structured images, fused backend; the loss
   must be finite at every step and fall by at least 10%.
2. CUDA graph capture of a whole training step (forward, backward, optimizer step); replaying
   it must give the eager step's loss and parameters.
3. No host synchronisation in a training step once ActNorm is initialised
   (torch.cuda.set_sync_debug_mode("error") raises on any sync).
Prints one line per check and exits non-zero when one fails.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invflow  # noqa: E402


def structured_images(n: int, size: int, device: str, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-0.5, 0.5] (a learnable distribution, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    img = (img * 255).floor() / 256 - 0.5 + torch.rand(img.shape, generator=g) / 256
    return img.to(device)


def make_model(device: str) -> invflow.Glow:
    torch.manual_seed(0)
    if device == "cpu":  # the dry run only keeps this script from rotting: keep it cheap
        return invflow.Glow(3, 16, levels=2, steps=2, hidden=16)
    return invflow.Glow(3, 16, levels=2, steps=4, hidden=64).to(device)


def nll(model, x) -> torch.Tensor:
    return -model.log_prob(x).mean() / (x[0].numel() * math.log(2.0)) + 8.0  # bits/dim


def check_autocast_training(device: str) -> str:
    model = make_model(device).train()
    data = structured_images(256, 16, device)
    steps, batch = (40, 32) if device == "cuda" else (16, 16)  # CPU: short, it runs in make test
    opt = torch.optim.Adam(model.parameters(), lr=2e-3 if device == "cuda" else 5e-3)
    losses = []
    for step in range(steps):
        x = data[(step * batch) % 256:(step * batch) % 256 + batch]
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = nll(model, x)
        if not torch.isfinite(loss):
            raise AssertionError(f"non-finite loss {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    if not last < 0.9 * first:
        raise AssertionError(f"loss did not fall by 10%: {first:.3f} -> {last:.3f} bits/dim")
    return f"bf16 autocast training: {first:.3f} -> {last:.3f} bits/dim in {steps} steps, all finite"


def _train_step(model, opt, x):
    loss = nll(model, x)
    loss.backward()
    opt.step()
    return loss


def check_cuda_graph() -> str:
    device = "cuda"
    model = make_model(device).train()
    x = structured_images(32, 16, device)
    model(x)  # ActNorm's data-dependent init happens eagerly, outside the graph
    twin = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    opt_twin = torch.optim.Adam(twin.parameters(), lr=1e-3, capturable=True)
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as the CUDA graphs docs require
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            _train_step(model, opt, static_x)
            opt_twin.zero_grad(set_to_none=True)
            _train_step(twin, opt_twin, static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = _train_step(model, opt, static_x)
    for step in range(3):
        static_x.copy_(structured_images(32, 16, device, seed=step + 1))
        graph.replay()
        opt_twin.zero_grad(set_to_none=True)
        eager_loss = _train_step(twin, opt_twin, static_x)
        torch.testing.assert_close(static_loss, eager_loss, rtol=1e-4, atol=1e-4)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
    return "CUDA graph: a captured training step replays like eager (3 replays, loss and parameters)"


def check_no_host_sync() -> str:
    device = "cuda"
    model = make_model(device).train()
    x = structured_images(32, 16, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    _train_step(model, opt, x)  # initialises ActNorm (one sync per layer, once)
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            _train_step(model, opt, x)
            opt.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "no host sync in a training step (set_sync_debug_mode('error'), 2 steps)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args(argv)
    checks = [("autocast", lambda: check_autocast_training(args.device))]
    if args.device == "cuda":
        checks += [("graph", check_cuda_graph), ("sync", check_no_host_sync)]
    failed = 0
    with invflow.backend("fused"):
        for name, check in checks:
            start = time.perf_counter()
            try:
                msg = check()
                print(f"gpu_smoke: PASS {name}: {msg} ({time.perf_counter() - start:.1f} s)")
            except Exception as err:  # report every check, then fail
                failed += 1
                traceback.print_exc()
                print(f"gpu_smoke: FAIL {name}: {type(err).__name__}: {err}")
    if args.device == "cpu":
        print("gpu_smoke: CUDA graph and host-sync checks need a GPU (not run on cpu)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
