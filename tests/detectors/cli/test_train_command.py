"""``detectors train``: checkpoints on SIGINT / SIGTERM then resumes, refuses a non-empty
run directory without --resume / --overwrite, reads the training split of named sets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _train(tmp_path, out, *extra, wait=True):
    data = tmp_path / "tiny.npz"
    if not data.exists():
        np.savez(data, images=np.random.default_rng(0).integers(0, 256, (16, 1, 4, 4), dtype=np.uint8))
    cmd = [
        sys.executable,
        "-m",
        "detectors",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch",
        "4",
        "--levels",
        "1",
        "--depth",
        "1",
        "--hidden",
        "4",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _train_in_process(tmp_path, out, *extra):
    from detectors.cli import main

    data = tmp_path / "tiny.npz"
    return main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--batch",
            "4",
            "--levels",
            "1",
            "--depth",
            "1",
            "--hidden",
            "4",
            *extra,
        ]
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_cli_checkpoints_on_signal_then_resumes(tmp_path, sig, capsys):
    out = tmp_path / "run"
    proc = _train(tmp_path, out, "--steps", "1000000", "--checkpoint-every", "1000000", wait=False)
    deadline = time.time() + 180
    while not (out / "log.csv").exists() and time.time() < deadline:  # opened after the init
        time.sleep(0.2)
    proc.send_signal(sig)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    latest = (out / "latest").read_text().strip()
    step = int(latest.split("-")[1])
    assert 1 <= step < 1000000 and (out / latest / "model.safetensors").exists(), text
    assert f"{signal.Signals(sig).name} at step {step}: checkpoint written" in text
    if sig == signal.SIGTERM:
        return
    capsys.readouterr()
    # a fresh run in the same directory is refused (exit 2) ...
    assert _train_in_process(tmp_path, out, "--steps", str(step + 2)) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--resume" in err and "--overwrite" in err, err
    # ... --resume continues from the interruption's checkpoint ...
    assert _train_in_process(tmp_path, out, "--steps", str(step + 2), "--resume") == 0
    assert f"resumed from step {step}" in capsys.readouterr().out
    assert (out / "latest").read_text().strip() == f"step-{step + 2:07d}"
    # ... and --overwrite starts again: the old checkpoints are gone
    assert _train_in_process(tmp_path, out, "--steps", "2", "--overwrite") == 0
    assert sorted(d for d in os.listdir(out) if d.startswith("step-")) == ["step-0000002"]


def test_train_cli_resume_with_nothing_says_so(tmp_path, capsys):
    np.savez(
        tmp_path / "tiny.npz", images=np.random.default_rng(0).integers(0, 256, (16, 1, 4, 4), dtype=np.uint8)
    )
    assert _train_in_process(tmp_path, tmp_path / "empty", "--steps", "1", "--resume") == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_train_help_shows_checkpoint_every_default(capsys):
    from detectors.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 200)" in text and "SIGINT" in text and "--overwrite" in text


def test_prepare_run_dir_keeps_foreign_files(tmp_path):
    from invflow.train import prepare_run_dir

    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "log.csv").write_text("step\n")
    (tmp_path / "step-0000003").mkdir()
    with pytest.raises(ValueError, match="not empty"):
        prepare_run_dir(str(tmp_path))
    prepare_run_dir(str(tmp_path), resume=True)  # nothing touched
    assert (tmp_path / "log.csv").exists()
    with pytest.raises(ValueError, match="exclude"):
        prepare_run_dir(str(tmp_path), resume=True, overwrite=True)
    prepare_run_dir(str(tmp_path), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_train_reads_the_training_split(monkeypatch):
    from detectors.cli import train as cli_train

    calls = []

    class Stop(Exception):
        pass

    def fake_load(spec, **kw):
        calls.append((spec, kw))
        raise Stop

    monkeypatch.setattr("detectors.data.load_named", fake_load)  # run_train imports it when it runs

    class Args:
        data, out, resume, overwrite, seed = "fashion-mnist", "/nonexistent-run-dir", False, False, 0

    with pytest.raises(Stop):
        cli_train.run_train(Args())
    assert calls == [("fashion-mnist", {"split": "train"})]
