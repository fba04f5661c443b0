"""Arguments of every subcommand: each size, width and count flag is bounded before any work
(the error names the limit), paths that must be directories are checked at parse time, every
error a user can cause is one line with exit code 2 while a bug keeps its traceback, and
``--help`` is quick: building the parser loads neither scikit-learn nor matplotlib, and the
``fit`` help lists the detectors in a few lines (``--list-detectors`` gives one line each)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from detectors.cli import build_parser, common, main
from detectors.cli.common import (
    MAX_BATCH,
    MAX_FEATURE_SIZE,
    MAX_HIDDEN,
    MAX_IMAGE_SIZE,
    MAX_LEVELS,
    MAX_SEED,
    MAX_STEPS,
    MAX_THREADS,
    run_guarded,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _parse_error(argv, capsys):
    """The one stderr line of a refused command line (exit code 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_:
        build_parser("detectors").parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


FIT = ["fit", "--data", "x", "--out", "y"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (FIT + ["--hidden", "1000000000"], ["--hidden", f"[1, {MAX_HIDDEN}]", "MAX_HIDDEN"]),
        (FIT + ["--hidden", "1e9"], ["--hidden", "expected an integer", "'1e9'"]),
        (FIT + ["--size", "100000"], ["--size", f"[2, {MAX_IMAGE_SIZE}]", "MAX_IMAGE_SIZE"]),
        (FIT + ["--levels", "10"], ["--levels", "MAX_LEVELS"]),
        (FIT + ["--levels", "0"], ["--levels", f"[1, {MAX_LEVELS}]", "got 0"]),
        (FIT + ["--depth", "100000"], ["--depth", "MAX_DEPTH"]),
        (FIT + ["--batch", "-1"], ["--batch", f"[1, {MAX_BATCH}]"]),
        (FIT + ["--steps", "0"], ["--steps", f"[1, {MAX_STEPS}]"]),
        (FIT + ["--feature-size", "100000"], ["--feature-size", "MAX_FEATURE_SIZE"]),
        (FIT + ["--feature-size", "8"], ["--feature-size", f"[32, {MAX_FEATURE_SIZE}]"]),
        (FIT + ["--n", "2"], ["--n", "got 2"]),
        (FIT + ["--seed", "-1"], ["--seed", f"[0, {MAX_SEED}]"]),
        (FIT + ["--seed", str(2**64)], ["--seed", "MAX_SEED"]),
        (FIT + ["--fpr", "nan"], ["--fpr", "finite number in (0, 1)"]),
        (FIT + ["--fpr", "1"], ["--fpr", "(0, 1)"]),
        (FIT + ["--holdout", "inf"], ["--holdout", "finite"]),
        (FIT + ["--lr", "0"], ["--lr", "(0, 1]"]),
        (FIT + ["--lr=-inf"], ["--lr", "finite"]),
        (FIT + ["--detectors", "nope"], ["--detectors", "invalid choice: 'nope'", "--list-detectors"]),
        (["train", "--out", "o", "--levels", "10"], ["--levels", "MAX_LEVELS"]),
        (["train", "--out", "o", "--hidden", "200000"], ["--hidden", "MAX_HIDDEN"]),
        (["train", "--out", "o", "--batch", "0"], ["--batch"]),
        (["train", "--out", "o", "--checkpoint-every", "0"], ["--checkpoint-every"]),
        (["train", "--out", "o", "--lr", "nan"], ["--lr", "finite"]),
        (["evaluate", "--in-model", "m", "--out", "o", "--n", "0"], ["--n", "got 0"]),
        (["evaluate", "--in-model", "m", "--out", "o", "--seed", str(MAX_SEED)], ["--seed", "MAX_SEED"]),
        (["reproduce", "glow", "--threads", "0"], ["--threads", f"[1, {MAX_THREADS}]"]),
        (["reproduce", "glow", "--seeds", "0", "-3"], ["--seeds", "got -3"]),
        (["ood-suite", "--n", "0"], ["--n", "got 0"]),
        (["score", "d", "--data", "x", "--out", "o", "--n", "0"], ["--n", "got 0"]),
        (["score", "d", "--data", "x", "--out", "o", "--n", "1e9"], ["--n", "expected an integer"]),
        (["score", "d", "--data", "x", "--out", "o", "--n", str(10**12)], ["--n", "MAX_IMAGES"]),
        (["ood-suite", "--floor", "2"], ["--floor", "[0, 1]"]),
        (["ood-suite", "--feature-size", "100000"], ["--feature-size", "MAX_FEATURE_SIZE"]),
        (["zoo", "fmnist-glow", "--eval-every", "0"], ["--eval-every"]),
        (["zoo", "fmnist-glow", "--threads", "100000"], ["--threads", "MAX_THREADS"]),
        (["demo", "--seed", "x"], ["--seed", "expected an integer"]),
    ],
)
def test_bad_sizes_widths_and_counts_are_refused_by_the_parser(argv, words, capsys):
    line = _parse_error(argv, capsys)
    for w in words:
        assert w in line, (w, line)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--out", "{file}"],
        ["train", "--out", "{file}/sub"],
        ["evaluate", "--in-model", "m", "--out", "{file}"],
        ["demo", "--out", "{file}"],
        ["reproduce", "glow", "--out", "{file}"],
        ["ood-suite", "--out", "{file}"],
        ["score", "d", "--data", "x", "--out", "{file}"],
        ["zoo", "fmnist-glow", "--root", "{file}"],
    ],
)
def test_a_file_where_a_directory_is_expected_is_refused_by_the_parser(argv, tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    line = _parse_error([a.replace("{file}", str(f)) for a in argv], capsys)
    assert str(f) in line and "not a directory" in line, line


def test_train_out_naming_a_file_is_one_line_with_exit_code_2(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(f), "--steps", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a directory" in err
    assert f.read_text() == "x"


def test_fit_out_naming_a_file_is_refused_before_reading_the_data(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    line = _parse_error(["fit", "--data", str(tmp_path / "no-such-folder"), "--out", str(f)], capsys)
    assert str(f) in line and "not a directory" in line and "no-such-folder" not in line
    from detectors.bundle.store import check_out

    with pytest.raises(ValueError, match="not a directory"):  # the library refuses it too
        check_out(str(f), {})


def _npz(path, side, n=6):
    rng = np.random.default_rng(0)
    np.savez(path, images=(rng.random((n, 1, side, side)) * 255).astype(np.uint8))
    return str(path)


def test_train_refuses_more_levels_than_the_images_have_pixels_for(tmp_path, capsys):
    data = _npz(tmp_path / "x.npz", 8)
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("step\n")
    argv = ["train", "--data", data, "--out", str(run), "--levels", "5", "--depth", "1", "--hidden", "4"]
    assert main(argv + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "--levels 5 pads 8x8 images to 32x32" in err and "fewer --levels" in err, err
    assert (run / "log.csv").exists()  # refused before --overwrite deleted anything
    from detectors.cli.train import padded_size

    assert padded_size(8, 8, 16, 4) == (16, 16) and padded_size(28, 28, 32, 5) == (32, 32)
    with pytest.raises(ValueError, match="--levels 6 pads 28x28 images to 64x64"):
        padded_size(28, 28, 64, 6)


class _Bug(Exception):
    pass


@pytest.mark.parametrize(
    "err",
    [
        FileExistsError(errno.EEXIST, "File exists", "/tmp/out"),
        IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp/d"),
        NotADirectoryError(errno.ENOTDIR, "Not a directory", "/tmp/f/x"),
        PermissionError(errno.EACCES, "Permission denied", "/root/x"),
        OSError(errno.ELOOP, "Too many levels of symbolic links", "/tmp/loop"),
        OSError(errno.ENOSPC, "No space left on device", "/tmp/full"),
        OSError(errno.ENAMETOOLONG, "File name too long", "/tmp/" + "a" * 300),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        RecursionError("maximum recursion depth exceeded"),
        OverflowError("cannot convert float infinity to integer"),
        ValueError("a bad value\nover two lines"),
        TypeError("a bad type"),
    ],
)
def test_errors_a_user_can_cause_are_one_line_and_exit_code_2(err, capsys, monkeypatch):
    monkeypatch.delenv("DETECTORS_TRACEBACK", raising=False)

    def fail():
        raise err

    assert run_guarded("detectors x", fail) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detectors x: error: "), lines
    if isinstance(err, OSError):
        assert err.filename in lines[0] and err.strerror in lines[0]


@pytest.mark.parametrize(
    "err", [_Bug("bug"), KeyError("k"), AttributeError("a"), RuntimeError("r"), OSError(errno.EIO, "I/O")]
)
def test_bugs_keep_their_traceback(err, monkeypatch):
    monkeypatch.delenv("DETECTORS_TRACEBACK", raising=False)

    def fail():
        raise err

    with pytest.raises(type(err)):
        run_guarded("detectors x", fail)


def test_detectors_traceback_shows_a_user_errors_traceback(monkeypatch):
    monkeypatch.setenv("DETECTORS_TRACEBACK", "1")

    def fail():
        raise FileExistsError(errno.EEXIST, "File exists", "/tmp/out")

    with pytest.raises(FileExistsError):
        run_guarded("detectors x", fail)


def test_fit_defaults_are_those_of_fit_config():
    import dataclasses

    from detectors.bundle import FitConfig
    from detectors.cli.fit import DEFAULTS

    cfg = dataclasses.asdict(FitConfig())
    assert {k: cfg[k] for k in DEFAULTS} == DEFAULTS


def _help(argv) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "detectors", *argv], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_fit_help_lists_the_detectors_in_a_few_lines_without_figures():
    text = _help(["fit", "--help"])
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("--detectors NAME"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  -"))
    paragraph = "\n".join(lines[start:end])
    assert end - start <= 8, paragraph
    assert "AUROC" not in paragraph and "%" not in paragraph and "--list-detectors" in paragraph
    assert len(lines) <= 70, len(lines)


def test_list_detectors_gives_one_line_per_catalogue_detector(capsys):
    from detectors.bundle import CATALOGUE

    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--list-detectors"])  # no --data / --out needed
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(CATALOGUE)
    assert "[uses labels]" in next(line for line in lines if line.startswith("mahalanobis "))


def test_building_the_parser_loads_neither_scikit_learn_nor_matplotlib():
    code = (
        "import sys, detectors.cli as c; c.build_parser('detectors'); "
        "print(sorted(m for m in ('sklearn', 'matplotlib', 'scipy', 'pandas') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_subcommand_descriptions_are_read_without_importing_the_module():
    assert "suite" in common.module_doc("experiments/ood_suite.py")
    assert common.module_doc("zoo/train.py").startswith("Trains a zoo model")


def test_the_cli_modules_add_no_heavy_import_to_the_package():
    """What detectors.cli adds to ``import detectors`` when the parser is built: nothing of
    torch, invflow, scikit-learn, matplotlib, scipy or Pillow (each subcommand loads them in run)."""
    heavy = (
        "torch",
        "invflow",
        "sklearn",
        "matplotlib",
        "scipy",
        "PIL",
        "detectors.bundle",
        "detectors.zoo.recipes",
    )
    code = (
        "import sys, detectors; before = set(sys.modules); import detectors.cli as c; "
        "c.build_parser('detectors'); added = set(sys.modules) - before; "
        f"print(sorted(m for m in added if m.split('.')[0] in {heavy!r} or m in {heavy!r}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_zoo_names_are_checked_when_parsed(capsys):
    line = _parse_error(["zoo", "nope"], capsys)
    assert "unknown zoo model 'nope'" in line and "fmnist-glow" in line


def test_zoo_export_without_a_run_or_with_a_broken_log_says_what_to_do(tmp_path, capsys):
    assert main(["zoo", "fmnist-glow", "--export", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no training run of fmnist-glow" in err and "python -m detectors zoo fmnist-glow" in err
    run = tmp_path / "fmnist-glow"
    run.mkdir()
    (run / "heldout.csv").write_text("step,heldout_bpd,wall_s\n250,abc,1.0\n")
    (run / "step-0000250").mkdir()
    (run / "step-junk").mkdir()
    assert main(["zoo", "fmnist-glow", "--export", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "heldout.csv: row 1 is not 'step,heldout_bpd,wall_s' numbers" in err and len(err.splitlines()) == 1


def test_zoo_export_of_a_seed_replicate_is_refused(tmp_path, capsys):
    assert main(["zoo", "fmnist-glow", "--export", "--seed", "1", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ships the seed-0 training only" in err and len(err.splitlines()) == 1
    line = _parse_error(["zoo", "fmnist-glow", "--seed", "-1"], capsys)
    assert "--seed" in line


def test_zoo_seed_replicate_trains_in_its_own_run_and_loads_back(tmp_path):
    from detectors.zoo.train import load_replicate

    assert (
        main(
            [
                "zoo",
                "fmnist-realnvp",
                "--steps",
                "2",
                "--eval-every",
                "1",
                "--seed",
                "3",
                "--root",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fmnist-realnvp-seed3"]
    rows = (tmp_path / "fmnist-realnvp-seed3" / "heldout.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2"]
    model, shipped = load_replicate("fmnist-realnvp", 3, str(tmp_path)), load_replicate("fmnist-realnvp", 0)
    a, b = model.state_dict(), shipped.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # 2 steps, not the zoo's
    with pytest.raises(FileNotFoundError, match="--seed 4"):
        load_replicate("fmnist-realnvp", 4, str(tmp_path))


def test_zoo_replicates_start_from_the_shipped_models_and_features_need_export(tmp_path, capsys):
    import json

    root = str(tmp_path)
    # a 2-step run of the base model in ROOT must not become the replicate's starting point
    assert main(["zoo", "fmnist-realnvp", "--steps", "2", "--eval-every", "2", "--root", root]) == 0
    args = [
        "zoo",
        "fmnist-realnvp-mass-ft-a0.1",
        "--seed",
        "1",
        "--steps",
        "1",
        "--eval-every",
        "1",
        "--root",
        root,
    ]
    assert main(args) == 0
    init = json.loads((tmp_path / "fmnist-realnvp-mass-ft-a0.1-seed1" / "init.json").read_text())
    assert init["checkpoint"].startswith("shipped ")
    capsys.readouterr()
    assert main(args) == 0  # already at step 1: says so, trains nothing
    assert "leaves no --eval-every 1 steps to train" in capsys.readouterr().out
    assert main(["zoo", "features"]) == 2
    assert "run python -m detectors zoo features --export" in capsys.readouterr().err
