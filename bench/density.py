#!/usr/bin/env python
"""Density estimation against the peers: invflow, zuko, nflows, normflows and FrEIA train the
same flows on the same data in one process, and the spline op is timed against zuko's.

    python bench/density.py [--quick | --smoke] [--cases density conditional kernels]
                            [--json PATH [--resume]] [--datasets ...] [--libraries ...]
                            [--archs nsf maf realnvp] [--seeds N] [--threads N]

Cases:
  density      test NLL (nats per sample, in the standardised units of density_data.py; mean
               +- std over seeds) and training seconds per epoch of every library x
               architecture (density_models.py: nsf, maf, realnvp) x dataset (moons, circles,
               checkerboard, digits, wine, breast_cancer)
  conditional  KL(p || q) (nats) of a conditional flow to the known p(x | c) of
               density_data.ConditionalGaussian, Monte Carlo over held-out contexts; invflow
               and zuko
  kernels      invflow.ops.rq_spline forward and forward+backward at [4096, 64] and
               [64, 12, 32, 32] (K = 8): fused vs reference vs zuko's MonotonicRQSTransform,
               as ratios and GB/s against a copy (spline_kernel.py)

Training (the same for every library): Adam (lr 1e-3), batch 128, a fixed number of epochs per
dataset (no early stop: every row trains as long), the weights of the epoch with the lowest
validation NLL are the ones tested (model selection on val). Each library's width is matched to
one parameter count (density_models.matched_width; the counts are printed). Seeds change the
initialisation and the batch order, never the data split. The libraries of a (dataset,
architecture, seed) train one after the other in an order that rotates with the seed, so machine
noise falls on all of them. ``s/epoch``: the median wall time of an epoch's optimiser steps
(validation excluded).

``--json PATH`` writes {"meta", "config", "records"} after every row; ``--resume`` keeps the
records of PATH made with the same config and runs only the missing rows, so a long run can be
stopped and restarted. ``--quick``: small widths and few epochs (minutes, indicative only);
``--smoke``: tiny everything (seconds: checks that everything runs; tests/bench). A row that
cannot run prints its reason (a package not installed, an invflow layer not yet there, an
architecture the library does not have) instead of a number.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import density_data
import density_models
import harness  # puts the repository root on sys.path
import spline_kernel
import torch
from density_models import ARCHS, LIBRARIES, Unavailable, build, matched_width, target_params

CASES = ("density", "conditional", "kernels")


# ------------------------------------------------------------------------------- configs
@dataclass
class Config:
    """What a run trains; every field goes into the JSON (``--resume`` needs the same)."""

    mode: str
    datasets: list = field(default_factory=lambda: list(density_data.DATASETS))
    archs: list = field(default_factory=lambda: list(ARCHS))
    libraries: list = field(default_factory=lambda: list(LIBRARIES))
    seeds: int = 3
    layers: int = 4
    hidden: int = 64  # the width of the shared parameter-count target
    batch: int = 128
    lr: float = 1e-3
    toy_points: int = 3000  # per 2-D toy, before the 60/20/20 split
    # epochs per dataset: about 300-600 optimiser steps each at batch 128
    epochs: dict = field(
        default_factory=lambda: {
            "moons": 30,
            "circles": 30,
            "checkerboard": 30,
            "digits": 40,
            "wine": 300,
            "breast_cancer": 150,
        }
    )
    cond_train: int = 3000
    cond_epochs: int = 30
    cond_contexts: int = 200  # held-out contexts of the KL estimate
    cond_samples: int = 100  # x ~ p(. | c) per held-out context
    kernel_shapes: list = field(default_factory=lambda: [[4096, 64], [64, 12, 32, 32]])
    kernel_bins: int = 8
    kernel_repeats: int = 15
    kernel_target_s: float = 0.05


def make_config(mode: str) -> Config:
    if mode == "full":
        return Config(mode)
    if mode == "quick":
        return Config(
            mode,
            seeds=2,
            hidden=32,
            toy_points=1500,
            epochs={k: max(2, v // 5) for k, v in Config("x").epochs.items()},
            cond_train=1500,
            cond_epochs=8,
            cond_contexts=100,
            cond_samples=50,
            kernel_repeats=5,
            kernel_target_s=0.02,
        )
    if mode == "smoke":
        return Config(
            mode,
            datasets=["moons", "wine"],
            seeds=1,
            layers=2,
            hidden=8,
            batch=64,
            toy_points=300,
            epochs={k: 2 for k in density_data.DATASETS},
            cond_train=200,
            cond_epochs=2,
            cond_contexts=8,
            cond_samples=8,
            kernel_shapes=[[64, 8], [2, 3, 4, 4]],
            kernel_repeats=1,
            kernel_target_s=0.0,
        )
    raise ValueError(f"unknown mode {mode!r}")


# ------------------------------------------------------------------------------ training
def mean_nll(model, x: torch.Tensor, c: torch.Tensor | None = None, chunk: int = 2048) -> float:
    """-mean log q(x) in nats, without gradients, in chunks."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            cc = None if c is None else c[i : i + chunk]
            total += -model.log_prob(x[i : i + chunk], cc).double().sum().item()
    return total / len(x)


def train(model, x, c, val_x, val_c, epochs: int, batch: int, lr: float, seed: int) -> dict:
    """Adam on -mean log q; returns the best-val state, per-epoch train seconds and notes."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best = (math.inf, -1, copy.deepcopy(model.state_dict()))
    epoch_s, note = [], ""
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        t0 = time.perf_counter()
        finite = True
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            loss = -model.log_prob(x[idx], None if c is None else c[idx]).mean()
            if not torch.isfinite(loss):
                finite = False
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epoch_s.append(time.perf_counter() - t0)
        if not finite:
            note = f"non-finite training loss at epoch {epoch}: stopped"
            break
        model.eval()
        v = mean_nll(model, val_x, val_c)
        if math.isfinite(v) and v < best[0]:
            best = (v, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return {"val_nll": best[0], "best_epoch": best[1], "epoch_s": epoch_s, "note": note}


def record_key(r: dict) -> tuple:
    return tuple(str(r.get(k)) for k in ("case", "dataset", "arch", "library", "seed", "shape", "pass"))


# --------------------------------------------------------------------------------- cases
def density_rows(cfg: Config, done: set, emit) -> None:
    for name in cfg.datasets:
        data = density_data.load(name, n=cfg.toy_points)
        print(f"# {name}: D={data.dim}, train/val/test {data.sizes()}, {cfg.epochs[name]} epochs", flush=True)
        for arch in cfg.archs:
            for seed in range(cfg.seeds):
                for lib in harness.rotated(cfg.libraries, seed):
                    base = dict(case="density", dataset=name, arch=arch, library=lib, seed=seed)
                    if record_key(base) in done:
                        continue
                    emit(run_density(cfg, data, arch, lib, seed, base))


def run_density(cfg: Config, data, arch: str, lib: str, seed: int, base: dict) -> dict:
    rec = dict(base, dim=data.dim, epochs=cfg.epochs[data.name])
    try:
        width = matched_width(lib, arch, data.dim, cfg.hidden, cfg.layers)
        torch.manual_seed(seed)
        model = build(lib, arch, data.dim, width, cfg.layers)
    except Unavailable as e:
        return dict(rec, note=str(e))
    except Exception as e:  # noqa: BLE001 - a broken row says why and the run goes on
        return dict(rec, note=f"build failed: {type(e).__name__}: {e}".splitlines()[0])
    rec.update(
        hidden=width,
        params=model.params(),
        target_params=target_params(arch, data.dim, cfg.hidden, cfg.layers),
    )
    try:
        out = train(
            model,
            data.train,
            None,
            data.val,
            None,
            cfg.epochs[data.name],
            cfg.batch,
            cfg.lr,
            seed,
        )
        test = mean_nll(model, data.test)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        return dict(rec, note=f"training failed: {type(e).__name__}: {e}".splitlines()[0])
    rec.update(
        test_nll=test if math.isfinite(test) else None,
        val_nll=out["val_nll"] if math.isfinite(out["val_nll"]) else None,
        best_epoch=out["best_epoch"],
        s_per_epoch=statistics.median(out["epoch_s"]),
        note=out["note"] or ("" if math.isfinite(test) else "non-finite test NLL"),
    )
    return rec


def conditional_rows(cfg: Config, done: set, emit) -> None:
    toy = density_data.ConditionalGaussian()
    x, c = toy.dataset(cfg.cond_train, seed=0)
    vx, vc = toy.dataset(cfg.cond_train // 4, seed=1)
    g = torch.Generator().manual_seed(2)
    tc = toy.sample_context(cfg.cond_contexts, g).repeat_interleave(cfg.cond_samples, 0)
    tx = toy.sample(tc, g)
    truth = toy.log_prob(tx, tc).double()
    libs = [lib for lib in cfg.libraries if lib in density_models.CONTEXT_LIBRARIES]
    print(f"# conditional: train {len(x)}, KL over {cfg.cond_contexts} x {cfg.cond_samples} held-out (c, x)")
    for arch in cfg.archs:
        for seed in range(cfg.seeds):
            for lib in harness.rotated(libs, seed):
                base = dict(
                    case="conditional", dataset="conditional_gaussian", arch=arch, library=lib, seed=seed
                )
                if record_key(base) in done:
                    continue
                rec = dict(base, dim=toy.dim, epochs=cfg.cond_epochs)
                try:
                    width = matched_width(lib, arch, toy.dim, cfg.hidden, cfg.layers, toy.context_dim)
                    torch.manual_seed(seed)
                    model = build(lib, arch, toy.dim, width, cfg.layers, toy.context_dim)
                    rec.update(hidden=width, params=model.params())
                    out = train(model, x, c, vx, vc, cfg.cond_epochs, cfg.batch, cfg.lr, seed)
                    with torch.no_grad():
                        gap = (
                            truth
                            - torch.cat(
                                [
                                    model.log_prob(tx[i : i + 4096], tc[i : i + 4096])
                                    for i in range(0, len(tx), 4096)
                                ]
                            ).double()
                        )
                    kl = gap.mean().item()
                    rec.update(
                        kl=kl if math.isfinite(kl) else None,
                        kl_se=(gap.std() / math.sqrt(len(gap))).item(),
                        s_per_epoch=statistics.median(out["epoch_s"]),
                        note=out["note"],
                    )
                except Unavailable as e:
                    rec["note"] = str(e)
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    rec["note"] = f"failed: {type(e).__name__}: {e}".splitlines()[0]
                emit(rec)


def kernel_rows(cfg: Config, done: set, emit) -> None:
    for shape in cfg.kernel_shapes:
        recs = spline_kernel.measure(
            shape, cfg.kernel_bins, repeats=cfg.kernel_repeats, target_s=cfg.kernel_target_s
        )
        for r in recs:
            r = dict(r, case="kernels")
            if record_key(r) not in done:
                emit(r)


# ------------------------------------------------------------------------------- reports
def pm(values: list) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def cell(rows: list, key: str, fmt=pm) -> str:
    if key == "params":
        return size(rows)
    if not rows:
        return "not run"
    vals = [r.get(key) for r in rows]
    if all(v is None for v in vals):
        return rows[0].get("note") or "-"
    out = fmt(vals)
    missing = sum(v is None for v in vals)
    return out + (f" ({missing} failed)" if missing else "")


def grouped(records: list, case: str) -> dict:
    g: dict = {}
    for r in records:
        if r["case"] == case:
            g.setdefault((r["dataset"], r["arch"], r["library"]), []).append(r)
    return g


def table(records: list, case: str, key: str, libs: list, fmt=pm, title: str = "") -> str:
    g = grouped(records, case)
    pairs = list(dict.fromkeys((d, a) for d, a, _ in g))
    libs = [lib for lib in libs if any(k[2] == lib for k in g)]
    lines = [title, "", "| dataset | arch | " + " | ".join(libs) + " |", "|---|---|" + "---|" * len(libs)]
    for d, a in pairs:
        lines.append(
            f"| {d} | {a} | " + " | ".join(cell(g.get((d, a, lib), []), key, fmt) for lib in libs) + " |"
        )
    return "\n".join(lines)


def seconds(values: list) -> str:
    vals = [v for v in values if v is not None]
    return f"{statistics.mean(vals) * 1e3:.1f} ms" if vals else "-"


def size(rows: list) -> str:
    """The parameter count and width of a cell's rows (the same for every seed)."""
    r = next((r for r in rows if r.get("params") is not None), None)
    if r is None:
        return (rows[0].get("note") or "-") if rows else "not run"
    target = f" of {r['target_params']:,}" if r.get("target_params") else ""
    return f"{r['params']:,}{target} (width {r['hidden']})"


def report(records: list, cfg: Config) -> str:
    libs = cfg.libraries
    parts = []
    if any(r["case"] == "density" for r in records):
        parts += [
            table(
                records,
                "density",
                "test_nll",
                libs,
                title="### Test NLL (nats, mean ± std over seeds; lower is better)",
            ),
            table(
                records,
                "density",
                "s_per_epoch",
                libs,
                seconds,
                "### Training time per epoch (median epoch, mean over seeds)",
            ),
            table(
                records, "density", "params", libs, title="### Parameters (width matched to one target count)"
            ),
        ]
    if any(r["case"] == "conditional" for r in records):
        libs_c = [lib for lib in libs if lib in density_models.CONTEXT_LIBRARIES]
        parts += [
            table(
                records,
                "conditional",
                "kl",
                libs_c,
                title="### Conditional: KL(p || q) to the true p(x | c) (nats)",
            ),
            table(records, "conditional", "s_per_epoch", libs_c, seconds, "### Conditional: time per epoch"),
        ]
    kern = [r for r in records if r["case"] == "kernels"]
    if kern:
        parts.append(spline_kernel.table(kern))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------- main
def meta(threads: int | None) -> dict:
    vers = {}
    for pkg in ("zuko", "nflows", "normflows", "FrEIA", "torch"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = None
    return {
        "machine": harness.machine("cpu"),
        "commit": harness.commit_hash(),
        "threads": torch.get_num_threads(),
        "allocator": harness.allocator_line(),
        "versions": vers,
        "fused": harness.invflow.fused_available(),
    }


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small widths, few epochs (indicative only)")
    mode.add_argument("--smoke", action="store_true", help="tiny: checks that everything runs")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--datasets", nargs="+", choices=density_data.DATASETS)
    p.add_argument("--archs", nargs="+", choices=ARCHS)
    p.add_argument("--libraries", nargs="+", choices=LIBRARIES)
    p.add_argument("--seeds", type=int, help="training seeds per row (default 3; quick 2; smoke 1)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--json", metavar="PATH", help="write {meta, config, records} after every row")
    p.add_argument(
        "--resume", action="store_true", help="keep PATH's records of the same config; run the rest"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    cfg = make_config("quick" if args.quick else "smoke" if args.smoke else "full")
    for name in ("datasets", "archs", "libraries", "seeds"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.seeds is not None and args.seeds < 1:
        sys.exit("density.py: --seeds must be >= 1")
    if args.resume and not args.json:
        sys.exit("density.py: --resume needs --json PATH")
    torch.set_num_threads(args.threads)
    info = meta(args.threads)
    config = asdict(cfg)
    records: list = []
    if args.resume and Path(args.json).exists():
        old = json.loads(Path(args.json).read_text())
        if old.get("config") != config:
            sys.exit(f"density.py: {args.json} was made with another config; use another --json path")
        records = old["records"]
        print(f"# resuming: {len(records)} records from {args.json}")
    done = {record_key(r) for r in records}
    print(
        f"# {info['machine']}; torch {torch.__version__}, threads {info['threads']}, commit {info['commit']}"
    )
    print("# " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["versions"].items()))
    print(
        f"# mode {cfg.mode}: {cfg.layers} layers, width target {cfg.hidden}, batch {cfg.batch}, Adam lr {cfg.lr}, {cfg.seeds} seeds"
    )

    def emit(rec: dict) -> None:
        records.append(rec)
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in rec.items() if k not in ("case",)}
        print("  " + ", ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
        if args.json:
            path = Path(args.json)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps({"meta": info, "config": config, "records": records}, indent=1))
            os.replace(tmp, path)

    runners = {"density": density_rows, "conditional": conditional_rows, "kernels": kernel_rows}
    for case in CASES:
        if case in args.cases:
            runners[case](cfg, done, emit)
    print()
    print(report(records, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
