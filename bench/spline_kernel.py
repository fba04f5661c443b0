"""The rational-quadratic spline op timed three ways, against a copy (bench/density.py
--cases kernels; also ``python bench/spline_kernel.py``):

  invflow-fused      ``invflow.ops.rq_spline`` under ``invflow.backend("fused")`` (the op
                     ``torch.ops.invflow.spline_forward``; its row says so when the
                     extension lacks it)
  invflow-reference  the same call under ``invflow.backend("reference")`` (eager PyTorch)
  zuko               ``zuko.transforms.MonotonicRQSTransform(w, h, d, bound).call_and_ladj(x)``
                     (zuko's own normalisation: a soft clamp instead of the 1e-3 minimums)
  copy               ``dst.copy_(x)`` on x's size: the bandwidth a kernel is measured against

Passes: "forward" (y and the elementwise log|dy/dx|) and "forward+backward" (also the
gradients of <y, gy> + <log|dy/dx|, gl> with respect to x, widths, heights and derivatives).
x ~ 2 N(0, 1) (about 13% of the entries in the linear tails at bound 3), float32, unnormalised
parameters 0.5 N(0, 1). Bytes moved (every input read once, every output written once, 4 bytes
each, per entry of x): forward 1 + (3K - 1) read + 2 written = 3K + 2; forward+backward adds
gy, gl, x and the 3K - 1 parameters read and 3K gradients written: 9K + 4 in all; a copy 2.
Timing: ``harness.rounds`` (round-robin, rotating start, median and IQR).
"""

from __future__ import annotations

import sys

import harness  # puts the repository root on sys.path
import torch
from ratios import fmt_ratio

import invflow

BOUND = 3.0
IMPLS = ("invflow-fused", "invflow-reference", "zuko")


def inputs(shape, bins: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = tuple(shape)
    return dict(
        x=2 * torch.randn(s, generator=g),
        w=0.5 * torch.randn(s + (bins,), generator=g),
        h=0.5 * torch.randn(s + (bins,), generator=g),
        d=0.5 * torch.randn(s + (bins - 1,), generator=g),
        gy=torch.randn(s, generator=g),
        gl=torch.randn(s, generator=g),
    )


def bytes_moved(pass_: str, numel: int, bins: int) -> int:
    per = 3 * bins + 2 if pass_ == "forward" else 9 * bins + 4
    return 4 * per * numel


def fused_missing() -> str | None:
    if not invflow.fused_available():
        return "the extension invflow._C is not built"
    if not hasattr(torch.ops.invflow, "spline_forward"):
        return "the extension has no rq_spline op yet"
    return None


def _invflow(backend: str):
    def f(x, w, h, d):
        with invflow.backend(backend):
            return invflow.ops.rq_spline(x, w, h, d, BOUND)

    return f


def _zuko():
    from zuko.transforms import MonotonicRQSTransform

    def f(x, w, h, d):
        return MonotonicRQSTransform(w, h, d, bound=BOUND).call_and_ladj(x)

    return f


def calls(t: dict, pass_: str) -> dict:
    """Implementation -> a no-argument call (or the reason it cannot run)."""
    fns: dict = {}
    why = fused_missing()
    fns["invflow-fused"] = why or _invflow("fused")
    fns["invflow-reference"] = _invflow("reference")
    try:
        fns["zuko"] = _zuko()
    except ImportError:
        fns["zuko"] = "not installed (pip install -e .[bench])"
    x, w, h, d, gy, gl = (t[k] for k in ("x", "w", "h", "d", "gy", "gl"))
    leaves = [v.clone().requires_grad_(True) for v in (x, w, h, d)]
    out: dict = {}
    for name, f in fns.items():
        if isinstance(f, str):
            out[name] = f
        elif pass_ == "forward":
            out[name] = lambda f=f: f(x, w, h, d)
        else:

            def step(f=f):
                y, lad = f(*leaves)
                return torch.autograd.grad((y, lad), leaves, (gy, gl))

            out[name] = step
    dst = torch.empty_like(x)
    out["copy"] = lambda: dst.copy_(x)
    return out


def measure(shape, bins: int = 8, repeats: int = 15, target_s: float = 0.05, warmup: int = 2) -> list[dict]:
    """One record per (pass, implementation): median and IQR seconds, GB/s, the ratio to the
    reference and the share of the copy's GB/s; rows that cannot run carry their reason."""
    t = inputs(shape, bins)
    numel = t["x"].numel()
    recs = []
    for pass_ in ("forward", "forward+backward"):
        fns = calls(t, pass_)
        runnable = {k: v for k, v in fns.items() if callable(v)}
        res = harness.summarise(harness.rounds(runnable, repeats, warmup=warmup, target_s=target_s))
        copy_gbps = 2 * 4 * numel / res["copy"][0] / 1e9 if isinstance(res.get("copy"), tuple) else None
        ref = res.get("invflow-reference")
        for name in IMPLS:
            rec = dict(shape=list(shape), bins=bins, **{"pass": pass_}, library=name, arch="rq_spline")
            r = res.get(name, fns[name])
            if isinstance(r, str):
                rec["note"] = r
            elif isinstance(r, Exception):
                rec["note"] = f"{type(r).__name__}: {r}".splitlines()[0]
            else:
                gbps = bytes_moved(pass_, numel, bins) / r[0] / 1e9
                rec.update(
                    median_s=r[0],
                    iqr_s=r[1],
                    gbps=gbps,
                    copy_gbps=copy_gbps,
                    share_of_copy=gbps / copy_gbps if copy_gbps else None,
                    vs_reference=ref[0] / r[0] if isinstance(ref, tuple) else None,
                    note="",
                )
            recs.append(rec)
    return recs


def table(recs: list[dict]) -> str:
    lines = [
        "### Spline op (K = {}): median ms (IQR), vs reference, GB/s and share of a copy".format(
            recs[0]["bins"]
        ),
        "",
        "| shape | pass | implementation | ms | vs reference | GB/s | of copy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        head = f"| {r['shape']} | {r['pass']} | {r['library']} |"
        if r.get("median_s") is None:
            lines.append(f"{head} {r.get('note', '-')} | | | |")
            continue
        share = r.get("share_of_copy")
        lines.append(
            f"{head} {r['median_s'] * 1e3:.3f} ({r['iqr_s'] * 1e3:.3f}) | {fmt_ratio(r.get('vs_reference'), 0).strip()} "
            f"| {r['gbps']:.3g} | {'-' if share is None else f'{100 * share:.0f}%'} |"
        )
    copies = {str(r["shape"]): r.get("copy_gbps") for r in recs if r.get("copy_gbps")}
    lines.append("")
    lines.append("copy: " + ", ".join(f"{s} {g:.3g} GB/s" for s, g in copies.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    out = []
    for shape in ([4096, 64], [64, 12, 32, 32]):
        out += measure(shape)
    print(table(out))
