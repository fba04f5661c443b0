"""The trainer: exact resume after kill -9, multi-process (torchrun, gloo) equals one
process, non-finite steps skipped and counted, checkpoints and logs."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import invflow
from invflow.train import Batch, Trainer, finite_mean, nll

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A training script run in subprocesses: tiny Glow, 8-bit random images, deterministic.
SCRIPT = textwrap.dedent(
    """
    import os, sys, time, torch, torch.distributed as dist
    import invflow
    from invflow.train import Trainer, nll
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out, steps, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    delay = float(os.environ.get("STEP_DELAY", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = invflow.Glow(1, 4, levels=2, steps=2, hidden=4).double()
    images = torch.randint(0, 256, (40, 1, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)

    def slow_nll(model, batch):
        print("objective", flush=True)  # one line per step started
        time.sleep(delay)
        return nll(model, batch)

    trainer = Trainer(model, images, out_dir=out, objective=slow_nll, steps=steps, batch_size=8,
                      checkpoint_every=3, lr=1e-2, warmup=2, flip=True, translate=1, progress=False)
    trainer.fit(resume=resume)
    if trainer.rank == 0:
        invflow.save(model, os.path.join(out, "final.safetensors"))
    if dist.is_initialized():
        dist.destroy_process_group()
    """
)


def run_script(tmp_path, out, steps, resume=False, env=None, nproc=1, wait=True):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    args = [str(script), str(out), str(steps), "resume" if resume else "fresh"]
    if nproc > 1:
        # --standalone: a local rendezvous on a free port (no fixed port to collide on)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            *args,
        ]
    else:
        cmd = [sys.executable, *args]
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def final_state(out):
    return invflow.load(os.path.join(out, "final.safetensors")).state_dict()


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path):
    steps = 12
    reference = tmp_path / "reference"
    run_script(tmp_path, reference, steps)

    interrupted = tmp_path / "interrupted"
    proc = run_script(tmp_path, interrupted, steps, env={"STEP_DELAY": "0.5"}, wait=False)
    deadline = time.time() + 120
    latest = interrupted / "latest"
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() >= "step-0000006"):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    started = proc.stdout.read().decode().count("objective")
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    checkpointed = int(latest.read_text().strip().split("-")[1])
    assert 6 <= checkpointed < steps, "the run must be killed mid-way, after a checkpoint"
    assert not (interrupted / "final.safetensors").exists()

    output = run_script(tmp_path, interrupted, steps, resume=True)
    assert f"resumed from step {checkpointed}" in output
    # steps started but lost with the process: at most one checkpoint interval (3 steps)
    assert 0 <= started - checkpointed <= 3
    assert output.count("objective") == steps - checkpointed
    want, got = final_state(reference), final_state(interrupted)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_script(tmp_path, one, 6)
    run_script(tmp_path, two, 6, nproc=2)
    want, got = final_state(one), final_state(two)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-10, msg=lambda m: f"{k}: {m}")
    # only rank 0 wrote the log: a header and the single row of step 6 (log_every 10), not twice
    assert sum(1 for _ in csv.reader(open(two / "log.csv"))) == 2


def tiny(tmp_path, objective=nll, **kw):
    torch.manual_seed(0)
    model = invflow.Glow(1, 4, levels=1, steps=1, hidden=4).double()
    # structured 8-bit images (a ramp plus small noise): far below 8 bits/dim of entropy
    ramp = (torch.arange(16).view(1, 1, 4, 4) * 12).expand(16, 1, 4, 4)
    images = (ramp + torch.randint(0, 4, (16, 1, 4, 4), generator=torch.Generator().manual_seed(2))).to(
        torch.uint8
    )
    opts = dict(steps=6, batch_size=4, checkpoint_every=3, log_every=1, progress=False)
    opts.update(kw)
    return Trainer(model, images, out_dir=str(tmp_path / "run"), objective=objective, **opts)


def test_non_finite_loss_is_skipped_counted_and_leaves_weights_untouched(tmp_path):
    calls = []

    def poisoned(model, batch):
        calls.append(1)
        loss, logs = nll(model, batch)
        return (loss * float("nan") if len(calls) in (2, 4) else loss), logs

    trainer = tiny(tmp_path, poisoned)
    real_step, outcomes = trainer.train_step, []

    def spy(batch):
        before = [p.detach().clone() for p in trainer.model.parameters()]
        taken, logs = real_step(batch)
        changed = any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
        outcomes.append((taken, changed))
        return taken, logs

    trainer.train_step = spy
    summary = trainer.fit()
    # steps 2 and 4 skipped without touching the weights (step 1 also initialises actnorm)
    assert [t for t, _ in outcomes] == [True, False, True, False, True, True]
    assert all(changed == taken for taken, changed in outcomes[1:])
    assert summary["skipped"] == 2 and summary["steps"] == 6
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["skipped"]) for r in rows] == [0, 1, 1, 2, 2, 2]


def test_non_finite_gradients_are_skipped(tmp_path):
    def nan_grad(model, batch):
        loss, logs = nll(model, batch)
        w = next(model.parameters())
        return loss + torch.sqrt((w * 0).sum()), logs  # finite value, d sqrt(0) = inf -> NaN grads

    trainer = tiny(tmp_path, nan_grad, steps=2)
    summary = trainer.fit()
    assert summary["skipped"] == 2
    assert all(p.grad is None for p in trainer.model.parameters())


def test_finite_mean_drops_non_finite_and_gives_up_past_75_percent():
    v = torch.tensor([1.0, float("inf"), 3.0, float("nan")])
    assert finite_mean(v).item() == 2.0
    assert torch.isnan(
        finite_mean(torch.tensor([1.0, float("nan"), float("nan"), float("-inf"), float("inf")]))
    )


def test_nll_training_reduces_bits_per_dim_and_checkpoints_load(tmp_path):
    trainer = tiny(tmp_path, steps=30, lr=5e-3, warmup=1)
    batch = trainer._batch(0)
    trainer.initialize()
    before = nll(trainer.model.eval(), batch)[0].item()
    trainer.fit()
    after = nll(trainer.model.eval(), batch)[0].item()
    assert after < before - 0.2, (before, after)
    latest = trainer.latest_dir()
    assert latest.endswith("step-0000030")
    loaded = invflow.load(os.path.join(latest, "model.safetensors"))
    assert isinstance(loaded, invflow.Glow)
    assert len([d for d in os.listdir(tmp_path / "run") if d.startswith("step-")]) == 2  # keep_checkpoints


def test_batches_are_a_function_of_seed_and_step(tmp_path):
    a, b = tiny(tmp_path), tiny(tmp_path)
    torch.testing.assert_close(a._batch(5).x, b._batch(5).x)
    assert not torch.equal(a._batch(5).x, a._batch(6).x)
    assert isinstance(a._batch(0), Batch)


def test_augmentation_flips_and_translates_deterministically():
    from invflow.train import augment

    images = torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4).repeat(8, 1, 1, 1)
    flipped = augment(images, torch.Generator().manual_seed(0), flip=True, translate=0)
    is_flip = [torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images)]
    is_same = [torch.equal(f, i) for f, i in zip(flipped, images)]
    assert all(a or b for a, b in zip(is_flip, is_same)) and any(is_flip) and any(is_same)
    moved = augment(images, torch.Generator().manual_seed(0), flip=False, translate=1)
    assert moved.shape == images.shape and moved.dtype == torch.uint8
    assert not torch.equal(moved, images)
    torch.testing.assert_close(
        moved, augment(images, torch.Generator().manual_seed(0), flip=False, translate=1)
    )


def test_gradient_clipping_is_applied_and_logged(tmp_path):
    trainer = tiny(tmp_path, steps=2, grad_clip=1e-3)
    trainer.initialize()
    taken, logs = trainer.train_step(trainer._batch(0))
    assert taken and "grad_norm" in logs
    total = torch.sqrt(sum((p.grad**2).sum() for p in trainer.model.parameters() if p.grad is not None))
    assert total.item() <= 1e-3 * (1 + 1e-6)


def test_finetuning_starts_from_another_models_weights(tmp_path):
    """Schirrmeister et al. 2020: in-distribution models start from the general-distribution model's weights."""
    general = tiny(tmp_path / "general", steps=3)
    general.fit()
    path = os.path.join(general.latest_dir(), "model.safetensors")
    torch.manual_seed(123)  # a differently initialised model of the same architecture
    model = invflow.Glow(1, 4, levels=1, steps=1, hidden=4).double()
    Trainer(
        model,
        torch.zeros(4, 1, 4, 4, dtype=torch.uint8),
        out_dir=str(tmp_path / "ft"),
        finetune_from=path,
        steps=1,
        progress=False,
    )
    for k, v in general.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        tiny(tmp_path, learning_rate=1)
    with pytest.raises(ValueError):
        tiny(tmp_path, steps=0)


def test_multi_tensor_adamax_equals_the_per_parameter_update_and_stays_on_after_resume(tmp_path):
    """The trainer's Adamax runs foreach (multi-tensor); its updates must equal the
    per-parameter loop's to the bit, and a resumed trainer must keep it on."""
    trainer = tiny(tmp_path, steps=3)
    twin = [p.detach().clone().requires_grad_() for p in trainer.model.parameters()]
    group = trainer.optimizer.param_groups[0]  # lr: the scheduler's warm-up value
    loop = torch.optim.Adamax(twin, lr=group["lr"], weight_decay=group["weight_decay"], foreach=False)
    assert trainer.optimizer.param_groups[0]["foreach"] is True
    trainer.initialize()
    for p, q in zip(trainer.model.parameters(), twin):
        q.data.copy_(p.data)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in twin]
        for p, q, g in zip(trainer.model.parameters(), twin, grads):
            p.grad, q.grad = g.clone(), g.clone()
        trainer.optimizer.step()
        loop.step()
    for p, q in zip(trainer.model.parameters(), twin):
        assert torch.equal(p.detach(), q.detach())
    trainer.fit()
    for group in trainer.optimizer.param_groups:  # an old checkpoint's groups say foreach=None
        group["foreach"] = None
    trainer.save_checkpoint()
    resumed = tiny(tmp_path, steps=6)
    assert resumed.load_latest()
    assert all(g["foreach"] is True for g in resumed.optimizer.param_groups)


def test_learning_rate_warms_up_then_decays_linearly_to_zero_and_resumes_exactly(tmp_path):
    seen = []

    def record(model, batch):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return nll(model, batch)

    opts = dict(steps=10, lr=1e-2, warmup=2, decay_start=4, decay_steps=4)
    trainer = tiny(tmp_path, objective=record, **opts)
    trainer.fit()
    expected = [0.5, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0]
    assert seen == pytest.approx([1e-2 * f for f in expected])
    straight = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # interrupted inside the decay (checkpoint at step 6), resumed by a new trainer
    seen.clear()
    trainer = tiny(tmp_path / "again", objective=record, **{**opts, "steps": 6})
    trainer.fit()
    trainer = tiny(tmp_path / "again", objective=record, **opts)
    trainer.fit(resume=True)
    assert seen == pytest.approx([1e-2 * f for f in expected])
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v, straight[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="decay_start and decay_steps go together"):
        tiny(tmp_path / "bad", decay_start=3)
    trainer = tiny(tmp_path / "changed")
    trainer.config.decay_steps = 4  # set after construction, without decay_start
    with pytest.raises(ValueError, match="decay_start and decay_steps go together"):
        trainer.fit()
