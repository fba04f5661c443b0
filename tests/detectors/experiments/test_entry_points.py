"""Every ``python -m detectors.experiments.X`` script reports a user error in one line, exit 2,
before it writes anything."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module, args, says",
    [
        ("fit_defaults", ["{tmp}/no-bundle"], "no such detector bundle"),
        ("rgb_example", ["--n", "0", "--out", "{tmp}/out"], "--n: expected an integer in [1, 100000], got 0"),
        (
            "photometric",
            ["--n-train", "0", "--out", "{tmp}/out"],
            "--n-train: expected an integer in [1, 30000], got 0",
        ),
        (
            "findings",
            ["--seeds", "5", "--root", "{tmp}", "--out", "{tmp}/out"],
            "python -m detectors zoo fmnist-glow-from-general --seed 5",
        ),
    ],
)
def test_user_errors_are_one_line(module, args, says, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in args]
    r = subprocess.run(
        [sys.executable, "-m", f"detectors.experiments.{module}", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"python -m detectors.experiments.{module}: error: ")
    assert says in err and not (tmp_path / "out").exists()
