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

import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

import invflow
import invflow.models.glow as glow_mod
from invflow import nets
from invflow.data import preprocess

torch.set_num_threads(1)
K = int(os.environ.get("K", "4"))
H = int(os.environ.get("HID", "64"))
B = int(os.environ.get("B", "16"))
torch.manual_seed(0)
base = invflow.Glow(3, 32, levels=3, steps=K, hidden=H)
g = torch.Generator().manual_seed(0)
x = preprocess(
    torch.randint(0, 256, (B, 3, 32, 32), dtype=torch.uint8, generator=g), dequantize=True, generator=g
)
with torch.no_grad(), invflow.backend("reference"):
    base.train()
    base(x)
NEW_SCALE, NEW_FOLD = glow_mod.fused_glow_scale, nets.GlowNet._fold_structure


def set_paths(on):
    glow_mod.fused_glow_scale = NEW_SCALE if on else (lambda *a: None)
    nets.GlowNet._fold_structure = NEW_FOLD if on else (lambda self: None)


cfgs = {"eager": ("reference", True), "fused-before": ("fused", False), "fused-now": ("fused", True)}
from detectors.objectives import approx_mass_penalty  # noqa: E402


class LP:
    def __init__(s, m):
        s.m = m

    def log_prob(s, x):
        return s.m(x).log_prob


fns = {}
mode = os.environ.get("MODE", "train")
for name, (be, on) in cfgs.items():
    m = copy.deepcopy(base).train()
    opt = torch.optim.Adamax(m.parameters(), lr=5e-4, weight_decay=5e-5, foreach=True)

    def f(m=m, opt=opt, be=be, on=on):
        set_paths(on)
        opt.zero_grad(set_to_none=True)
        with invflow.backend(be):
            loss = -m(x).log_prob.mean() if mode == "train" else approx_mass_penalty(LP(m), x)
        loss.backward()
        if mode == "train":
            opt.step()

    fns[name] = f
with torch.no_grad():
    lps = {}
    for name, (be, on) in cfgs.items():
        set_paths(on)
        with invflow.backend(be):
            lps[name] = base(x).log_prob
    print(
        "log p max rel diff vs eager:",
        {n: float((lps[n] - lps["eager"]).abs().max() / lps["eager"].abs().max()) for n in lps},
    )
for f in fns.values():
    f()
    f()
ts = {n: [] for n in fns}
names = list(fns)
R = int(os.environ.get("R", "20"))
for r in range(R):
    k = r % len(names)
    for n in names[k:] + names[:k]:
        t0 = time.process_time()
        fns[n]()
        ts[n].append(time.process_time() - t0)
e = statistics.median(ts["eager"])
for n in names:
    med = statistics.median(ts[n])
    q = statistics.quantiles(ts[n], n=4) if len(ts[n]) > 1 else [med, med, med]
    print(
        f"{mode} K={K} hidden={H} B={B}: {n:14s} median {1e3 * med:8.2f} ms  IQR {1e3 * (q[2] - q[0]):6.2f}  min {1e3 * min(ts[n]):8.2f}  vs eager {e / med:.3f}x"
    )
