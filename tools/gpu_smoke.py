"""Training smoke tests of the fused backend on a device (the smoke stage of `make gpu-check`).

    python tools/gpu_smoke.py --device cuda     # the 4 checks below
    python tools/gpu_smoke.py --device cpu      # the CPU-runnable part (DRY_RUN=1, make test)

1. bf16-autocast Glow training: 40 Adam steps (16 on CPU, a smaller Glow) on structured
   images, fused backend; the loss must be finite at every step and fall by at least 10%.
2. CUDA graph capture of a whole training step (forward, backward, optimizer step): replaying
   it must give an eager twin's loss and parameters, within a tight tolerance or a small
   multiple of the difference between two eager twins (the noise floor); deterministic
   cuDNN, no TF32, warm-up on another batch than ActNorm's init batch.  Prints the largest
   loss and parameter differences (with the parameter's name).
3. Per-op capture: every fused op (forward and backward) captured in a CUDA graph and replayed
   on new inputs must equal an eager call bitwise.  On CPU: two eager calls, bitwise.
4. No host synchronisation in a training step once ActNorm is initialised
   (torch.cuda.set_sync_debug_mode("error") raises on any sync).
Prints one line per check, then "gpu_smoke: N/N checks passed on DEVICE"; exits non-zero
when one fails.
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

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))
sys.path.insert(0, TOOLS)

import invflow  # noqa: E402

SCALES = ("sigmoid", "exp", "tanh")


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
        x = data[(step * batch) % 256 : (step * batch) % 256 + batch]
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


def deterministic_cuda() -> None:
    """Same kernels, same results: deterministic cuDNN, no autotuning, no TF32 (else two
    eager runs of one step already differ, and the graph check can't tell noise from a bug)."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> tuple[float, str]:
    """The largest |p_a - p_b| over all parameters, and that parameter's name."""
    worst, where = 0.0, "(none)"
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        diff = (p.detach().double() - q.detach().double()).abs().max().item() if p.numel() else 0.0
        if diff > worst or where == "(none)":
            worst, where = diff, name
    return worst, where


# graph vs eager must agree within max(tolerance, FLOOR_FACTOR x the eager-vs-eager difference)
GRAPH_LOSS_TOL, GRAPH_PARAM_TOL, FLOOR_FACTOR = 1e-5, 1e-4, 4.0


def check_cuda_graph() -> str:
    """A captured training step (forward, backward, Adam) replays like the same step run
    eagerly on a twin model.  A second eager twin measures the noise floor (two eager runs
    of the same steps); with the deterministic settings it is normally 0."""
    deterministic_cuda()
    device = "cuda"
    model = make_model(device).train()
    model(structured_images(32, 16, device, seed=0))  # ActNorm's data-dependent init, eagerly
    twin, control = copy.deepcopy(model), copy.deepcopy(model)
    models = (model, twin, control)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, capturable=True) for m in models]
    # warm up on another batch: on the init batch several gradients are zero by construction
    # (ActNorm's output is exactly standardised there), and Adam turns their rounding noise
    # into lr-sized updates
    static_x = structured_images(32, 16, device, seed=100)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as the CUDA graphs docs require
        for _ in range(3):
            for m, opt in zip(models, opts):
                opt.zero_grad(set_to_none=True)
                _train_step(m, opt, static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opts[0].zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = _train_step(model, opts[0], static_x)
    loss_diff = loss_floor = 0.0
    for step in range(3):
        static_x.copy_(structured_images(32, 16, device, seed=step + 1))
        graph.replay()
        eager = []
        for m, opt in zip(models[1:], opts[1:]):
            opt.zero_grad(set_to_none=True)
            eager.append(_train_step(m, opt, static_x).item())
        loss_diff = max(loss_diff, abs(static_loss.item() - eager[0]))
        loss_floor = max(loss_floor, abs(eager[0] - eager[1]))
    param_diff, param_name = max_param_diff(model, twin)
    param_floor, floor_name = max_param_diff(twin, control)
    report = (
        f"max |loss diff| graph vs eager {loss_diff:.3g} (eager vs eager {loss_floor:.3g}), "
        f"max |param diff| {param_diff:.3g} in {param_name} "
        f"(eager vs eager {param_floor:.3g} in {floor_name})"
    )
    loss_ok = loss_diff <= max(GRAPH_LOSS_TOL * (1 + abs(eager[0])), FLOOR_FACTOR * loss_floor)
    param_ok = param_diff <= max(GRAPH_PARAM_TOL, FLOOR_FACTOR * param_floor)
    if not (loss_ok and param_ok):
        raise AssertionError(f"replay differs from the eager twin beyond the noise floor: {report}")
    return f"CUDA graph: a captured training step replays like eager (3 replays): {report}"


# ------------------------------------------------------------- per-op capture, bitwise
def _op_args(device: str, seed: int) -> list[tuple[str, str, tuple]]:
    """(label, op name, arguments) for every fused op on fixed float32 inputs: one image
    shape for the per-thread kernels, C = 40 for the GEMM path of the 1x1 convolution."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    calls = []
    for c in (12, 40):
        x, gy = rand(2, c, 8, 8), rand(2, c, 8, 8)
        w = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))[0].float().to(device)
        calls += [
            (f"channel_mix C={c}", "channel_mix", (x, w)),
            (f"channel_mix_backward C={c}", "channel_mix_backward", (gy, x, w)),
        ]
    x, gy, gl = rand(2, 12, 8, 8), rand(2, 12, 8, 8), rand(2)
    b, ls, h = rand(12), 0.1 * rand(12), rand(2, 24, 8, 8)
    mask = (torch.rand(12, 8, 8, generator=g) > 0.5).float().to(device)
    calls += [
        ("actnorm_forward", "actnorm_forward", (x, b, ls)),
        ("actnorm_inverse", "actnorm_inverse", (x, b, ls)),
        ("actnorm_backward", "actnorm_backward", (gy, gl, x, b, ls)),
        ("actnorm_backward no grad_logdet", "actnorm_backward", (gy, None, x, b, ls)),
    ]
    x_cl, h_cl, gy_cl = (t.movedim(1, -1).contiguous() for t in (x, h, gy))
    u_x, u_h = rand(*x_cl.shape), rand(*h_cl.shape)
    for scale in SCALES:
        for m, tag in ((None, ""), (mask, " masked")):
            calls += [
                (f"coupling_forward {scale}{tag}", "coupling_forward", (x, h, m, scale, 2.0)),
                (f"coupling_inverse {scale}{tag}", "coupling_inverse", (x, h, m, scale, 2.0)),
                (f"coupling_backward {scale}{tag}", "coupling_backward", (gy, gl, x, h, m, scale, 2.0)),
            ]
        calls += [
            (f"coupling_cl_forward {scale}", "coupling_cl_forward", (x_cl, h_cl, scale, 2.0)),
            (f"coupling_cl_backward {scale}", "coupling_cl_backward", (gy_cl, gl, x_cl, h_cl, scale, 2.0)),
            (
                f"coupling_cl_double_backward {scale}",
                "coupling_cl_double_backward",
                (u_x, u_h, gy_cl, gl, x_cl, h_cl, scale, 2.0),
            ),
        ]
    # the rational-quadratic spline, K = 5 bins as column blocks of one parameter tensor
    theta, gls = rand(2, 12, 8, 8, 14), rand(2, 12, 8, 8)
    spline = (2 * x, theta[..., :5], theta[..., 5:10], theta[..., 10:], 3.0)
    for inverse, name in ((False, "spline_forward"), (True, "spline_inverse")):
        calls += [
            (name, name, spline),
            (f"spline_backward inverse={inverse}", "spline_backward", (gy, gls, *spline, inverse)),
        ]
    return calls


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def bitwise_equal(a, b) -> bool:
    """Same shape, dtype and bytes (NaN included): what a replayed kernel must give."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(
        a.detach().contiguous().reshape(-1).view(torch.uint8),
        b.detach().contiguous().reshape(-1).view(torch.uint8),
    )


def _run_captured(op, args):
    """Captures ``op(*args)`` in a CUDA graph (after a warm-up call on a side stream) and
    returns (graph, its static outputs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        op(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _as_tuple(op(*args))
    return graph, out


def _own(args: tuple) -> tuple:
    """The call's own copies of its tensors (the cases share inputs)."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _refill(static: tuple, fresh: tuple, outputs: tuple) -> None:
    """New values into the graph's static inputs, NaN into its outputs: the replay must read
    the former and write all of the latter."""
    for s, f in zip(static, fresh):
        if isinstance(s, torch.Tensor):
            s.copy_(f)
    for o in outputs:
        if isinstance(o, torch.Tensor) and o.is_floating_point():
            o.fill_(float("nan"))


def _compare_one(op, static: tuple, fresh: tuple, device: str) -> str:
    """'' when the captured (CUDA) or repeated (CPU) call equals the eager call on ``fresh``
    bitwise, else the largest difference per output."""
    if device == "cuda":
        static = _own(static)
        graph, replayed = _run_captured(op, static)
        _refill(static, fresh, replayed)
        graph.replay()
    else:
        replayed = _as_tuple(op(*fresh))
    eager = _as_tuple(op(*fresh))
    if device == "cuda":
        torch.cuda.synchronize()
    if len(replayed) == len(eager) and all(bitwise_equal(r, e) for r, e in zip(replayed, eager)):
        return ""
    diffs = [
        (r.double() - e.double()).abs().max().item()
        if r is not None and e is not None and r.shape == e.shape and r.numel()
        else float("nan")
        for r, e in zip(replayed, eager)
    ]
    return f"not bitwise equal, max |diff| per output {[f'{d:.3g}' for d in diffs]}"


def check_op_capture(device: str) -> str:
    """Every fused op (forward and backward, every scale, masked and not) captured in a CUDA
    graph and replayed on new inputs gives bitwise the eager result on those inputs.  On CPU
    (the dry run) two eager calls must agree bitwise, which keeps the cases from rotting."""
    from gpu_driver import registered_ops

    static_calls, fresh_calls = _op_args(device, seed=0), _op_args(device, seed=1)
    covered = {name for _, name, _ in static_calls}
    missing = registered_ops() - covered
    if missing:
        raise AssertionError(f"ops with no capture case in gpu_smoke._op_args: {sorted(missing)}")
    bad = []
    for (label, name, static), (_, _, fresh) in zip(static_calls, fresh_calls):
        try:
            problem = _compare_one(getattr(torch.ops.invflow, name), static, fresh, device)
        except Exception as err:  # noqa: BLE001  (a capture error is this case's verdict)
            problem = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
        if problem:
            bad.append(f"{label}: {problem}")
    what = "CUDA-graph replay" if device == "cuda" else "a second eager call"
    if bad:
        raise AssertionError(
            f"{len(bad)} of {len(static_calls)} op calls, {what} vs eager: " + "; ".join(bad)
        )
    return f"per-op capture: {len(static_calls)} calls of {len(covered)} ops, {what} bitwise equal to eager"


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
    checks = [
        ("autocast", lambda: check_autocast_training(args.device)),
        ("ops", lambda: check_op_capture(args.device)),
    ]
    if args.device == "cuda":
        deterministic_cuda()
        checks.insert(1, ("graph", check_cuda_graph))
        checks.append(("sync", check_no_host_sync))
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
        print("gpu_smoke: the training-step CUDA graph and host-sync checks need a GPU (not run on cpu)")
    print(f"gpu_smoke: {len(checks) - failed}/{len(checks)} checks passed on {args.device}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
