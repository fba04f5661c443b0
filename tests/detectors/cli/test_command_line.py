"""The ``detectors`` command line: one command with the eight subcommands (console script and
``python -m detectors``), errors in the input as one line with exit code 2, and ``evaluate``
reading the run directory ``train`` wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.cli import SUBCOMMANDS, main

skimage_data = pytest.importorskip("skimage.data")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
EIGHT = ["demo", "fit", "score", "train", "evaluate", "reproduce", "ood-suite", "zoo"]


def _patches(root, photos, sizes, seed, exts=(".png", ".jpg")):
    """Writes one random square crop per entry of ``sizes`` (cycling photos and extensions)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    paths = []
    for i, s in enumerate(sizes):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - s), rng.integers(0, p.shape[1] - s)
        path = os.path.join(root, f"img{i:03d}{exts[i % len(exts)]}")
        Image.fromarray(p[y : y + s, x : x + s]).save(path)
        paths.append(path)
    return paths


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "detectors", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def _listed(help_text: str) -> list[str]:
    """The subcommands in the ``{a,b,...}`` choice list of a --help text."""
    start = help_text.index("{")
    return help_text[start + 1 : help_text.index("}", start)].split(",")


def test_one_parser_lists_the_eight_subcommands(capsys):
    assert list(SUBCOMMANDS) == EIGHT
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and _listed(capsys.readouterr().out) == EIGHT


def test_each_subcommand_module_has_add_parser_and_run():
    import importlib

    for module in SUBCOMMANDS.values():
        mod = importlib.import_module(f"detectors.cli.{module}")
        assert callable(mod.add_parser) and callable(mod.run), module


def test_console_script_and_python_m_list_the_subcommands():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "detectors"]
    assert script.value == "detectors.cli:main" and script.load() is main
    exe = os.path.join(os.path.dirname(sys.executable), "detectors")
    assert os.path.isfile(exe), f"{exe}: missing; run make setup (pip install -e .)"
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: detectors ") and _listed(r.stdout) == EIGHT
    r = _cli("--help")
    assert (
        r.returncode == 0
        and r.stdout.startswith("usage: python -m detectors ")
        and _listed(r.stdout) == EIGHT
    )


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    r = _cli("score", str(tmp_path / "missing"), "--data", str(tmp_path), "--out", str(tmp_path / "r"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "missing" in r.stderr and "no such detector bundle" in r.stderr


def test_empty_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["fit", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "det")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no image files" in err


def test_user_errors_in_process(tmp_path, capsys):
    assert main(["fit", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "d")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["evaluate", "--in-model", str(tmp_path / "nope"), "--out", str(tmp_path / "e")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["evaluate", "--in-model", str(tmp_path / "run"), "--out", str(tmp_path / "e")]) == 2
    assert "without a 'latest' file" in capsys.readouterr().err
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(["fit", "--data", str(tmp_path / "corrupt"), "--out", str(tmp_path / "d")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # (progress bars aside)
    assert len(err) == 1 and "none of its 1 image files could be read" in err[0] and "a.jpg" in err[0]
    _patches(tmp_path / "ok", [skimage_data.astronaut()], [16] * 4, 0)
    assert main(["fit", "--data", str(tmp_path / "ok"), "--out", str(tmp_path / "d"), "--size", "30"]) == 2
    assert "multiple of 4" in capsys.readouterr().err


def test_evaluate_takes_the_run_directory_train_wrote(tmp_path, capsys):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                "mnist",
                "--out",
                str(run),
                "--steps",
                "2",
                "--levels",
                "3",
                "--depth",
                "1",
                "--hidden",
                "8",
                "--batch",
                "8",
            ]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"model: {run}/step-0000002/model.safetensors")
    # 28x28 digits were padded to 32x32 for 3 scales; evaluate pads them the same way
    assert (
        main(
            [
                "evaluate",
                "--in-model",
                str(run),
                "--in-data",
                "mnist",
                "--ood-data",
                "patches",
                "--n",
                "12",
                "--out",
                str(tmp_path / "rep"),
            ]
        )
        == 0
    )
    assert "padded images from 28x28 to 32x32" in capsys.readouterr().out
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert "likelihood" in results["detectors"] and results["counts"]["likelihood"] == {"in": 12, "ood": 12}


def test_train_anneal_lets_the_learning_rate_fall_to_zero_over_the_last_steps(tmp_path, capsys):
    import csv

    torch.set_num_threads(1)
    run = tmp_path / "run"
    args = ["train", "--data", "mnist", "--out", str(run), "--levels", "2", "--depth", "1", "--hidden", "8"]
    args += ["--batch", "8", "--lr", "1e-3"]
    assert main([*args, "--steps", "3", "--anneal", "4"]) == 2
    assert "--anneal 4 is longer than --steps 3" in capsys.readouterr().err
    assert not run.exists()  # refused before any work
    assert main([*args, "--steps", "40", "--anneal", "20"]) == 0
    with open(run / "log.csv", newline="") as f:
        lr = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f)}
    # the rate of the next update: warm-up ((step + 1) / 100, the Trainer's default) x anneal
    assert lr[20] == pytest.approx(1e-3 * 0.21) and lr[30] == pytest.approx(1e-3 * 0.31 * 0.5)
    assert lr[40] == 0.0
