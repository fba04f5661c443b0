"""In-process A/B of invflow's fused model path: a Glow training step (or the
approximate-mass penalty step) run by the eager reference, by the fused backend with the
channels-last Glow scale and the folded GlowNet switched off ("fused-before", the
layer-by-layer fused ops), and by the fused backend as it is ("fused-now"); same weights and
data, interleaved rounds with a rotating first row, process CPU time per call (leaves out time
spent waiting for a core on a shared machine), 1 thread.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 python bench/ab_model_step.py
    MODE=penalty R=12 python bench/ab_model_step.py          # approx_mass_penalty + backward
    K=32 HID=512 R=3 python bench/ab_model_step.py           # the Schirrmeister et al. 2020 size

Environment: K (steps per scale, 4), HID (st-net width, 64), B (batch, 16), R (rounds, 20),
MODE (train | penalty).
"""

from __future__ import annotations

import copy
import os
import sys
import time

import harness  # puts the repository root on sys.path
import torch

import invflow
import invflow.models.glow as glow_mod
from invflow import nets

NEW_SCALE, NEW_FOLD = glow_mod.fused_glow_scale, nets.GlowNet._fold_structure
# row -> (backend, the channels-last Glow scale and the folded GlowNet switched on)
CONFIGS = {"eager": ("reference", True), "fused-before": ("fused", False), "fused-now": ("fused", True)}


def set_paths(on: bool) -> None:
    """Switches the fused model path's two optimisations on (as shipped) or off."""
    glow_mod.fused_glow_scale = NEW_SCALE if on else (lambda *a: None)
    nets.GlowNet._fold_structure = NEW_FOLD if on else (lambda self: None)


class LogProb:
    """``approx_mass_penalty`` calls ``model.log_prob(x)``."""

    def __init__(self, model):
        self.model = model

    def log_prob(self, x):
        return self.model(x).log_prob


def main() -> int:
    from detectors.objectives import approx_mass_penalty

    torch.set_num_threads(1)
    k = int(os.environ.get("K", "4"))
    hidden = int(os.environ.get("HID", "64"))
    batch = int(os.environ.get("B", "16"))
    repeats = int(os.environ.get("R", "20"))
    mode = os.environ.get("MODE", "train")
    base, x = harness.glow_model(32, 3, k, hidden, batch)

    fns = {}
    for name, (be, on) in CONFIGS.items():
        m = copy.deepcopy(base).train()
        opt = harness.trainer_optimizer(m.parameters())

        def f(m=m, opt=opt, be=be, on=on):
            set_paths(on)
            opt.zero_grad(set_to_none=True)
            with invflow.backend(be):
                loss = -m(x).log_prob.mean() if mode == "train" else approx_mass_penalty(LogProb(m), x)
            loss.backward()
            if mode == "train":
                opt.step()

        fns[name] = f
    with torch.no_grad():
        lps = {}
        for name, (be, on) in CONFIGS.items():
            set_paths(on)
            with invflow.backend(be):
                lps[name] = base(x).log_prob
        print(
            "log p max rel diff vs eager:",
            {n: float((lps[n] - lps["eager"]).abs().max() / lps["eager"].abs().max()) for n in lps},
        )
    samples = harness.rounds(fns, repeats, warmup=2, clock=time.process_time)
    for s in samples.values():
        if isinstance(s, Exception):
            raise s
    e = harness.median_iqr(samples["eager"], method="exclusive")[0]
    for n, ts in samples.items():
        med, iqr = harness.median_iqr(ts, method="exclusive")
        print(
            f"{mode} K={k} hidden={hidden} B={batch}: {n:14s} median {1e3 * med:8.2f} ms  "
            f"IQR {1e3 * iqr:6.2f}  min {1e3 * min(ts):8.2f}  vs eager {e / med:.3f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
