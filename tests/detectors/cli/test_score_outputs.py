"""What ``detectors score`` writes: scores.csv with file names as the file system gives them,
kept when the report after it fails; an --out that is a file is a one-line error."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from detectors import bundle as bundle_mod
from detectors.cli import main

TINY = dict(detectors=("likelihood",), steps=2, depth=1, hidden=8, levels=1, max_size=8, progress=False)


def _folder(root, names, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for name in names:
        path = os.path.join(os.fsencode(root), name if isinstance(name, bytes) else name.encode())
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(os.fsdecode(path), format="PNG")
    return root


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    base = tmp_path_factory.mktemp("score")
    train = _folder(str(base / "train"), [f"{i}.png" for i in range(10)])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bundle_mod.fit_bundle(train, base / "det", bundle_mod.FitConfig(**TINY), say=lambda *_: None)
    return base


def test_non_utf8_file_names_are_written_as_the_file_system_gives_them(det, tmp_path, capsys):
    data = _folder(str(tmp_path / "data"), [b"caf\xe9.png", b"plain.png"])
    code = main(["score", str(det / "det"), "--data", data, "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 0
    raw = (tmp_path / "r" / "scores.csv").read_bytes().splitlines()
    assert raw[0].startswith(b"path,source,likelihood_score")
    assert [line.split(b",")[0] for line in raw[1:]] == [
        os.fsencode(data) + b"/caf\xe9.png",
        os.fsencode(data) + b"/plain.png",
    ]
    assert not os.path.exists(tmp_path / "r" / "scores.csv.partial")


def test_a_failing_report_keeps_scores_csv_and_says_so(det, tmp_path, capsys, monkeypatch):
    import detectors.report

    def broken(*args, **kwargs):
        raise UnicodeEncodeError("utf-8", "caf\udce9", 3, 4, "surrogates not allowed")

    monkeypatch.setattr(detectors.report, "write_report", broken)
    data = _folder(str(tmp_path / "in"), ["a.png", "b.png"])
    ood = _folder(str(tmp_path / "ood"), ["c.png", "d.png"], seed=1)
    argv = [
        "score",
        str(det / "det"),
        "--data",
        data,
        "--ood",
        ood,
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the report was not written" in err[0] and "scores.csv" in err[0]
    rows = (tmp_path / "r" / "scores.csv").read_text().splitlines()
    assert len(rows) == 5 and [r.split(",")[1] for r in rows[1:]] == ["data", "data", "ood", "ood"]


def test_out_naming_an_existing_file_is_one_line_exit_2(det, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    data = _folder(str(tmp_path / "d"), ["a.png"])
    with pytest.raises(SystemExit) as exit_:  # refused by the parser, before the bundle is read
        main(["score", str(det / "det"), "--data", data, "--out", str(tmp_path / "taken"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "exists and is not a directory" in err
    assert "Traceback" not in err


def test_run_score_without_the_parser_checks_out_and_n(det, tmp_path):
    import argparse

    from detectors.cli.score import run_score

    (tmp_path / "taken").write_text("x")
    base = dict(bundle=str(det / "det"), data="x", ood=None, no_progress=True)
    with pytest.raises(ValueError, match=r"argument --out: .*taken exists and is not a directory"):
        run_score(argparse.Namespace(**base, out=str(tmp_path / "taken"), n=None))
    with pytest.raises(ValueError, match=r"argument --n: expected an integer in \[1, 100000000\]"):
        run_score(argparse.Namespace(**base, out=str(tmp_path / "r"), n=0))
    assert not os.path.exists(tmp_path / "r")


def test_a_text_file_named_npz_is_one_line_exit_2_without_pickle_advice(det, tmp_path, capsys):
    (tmp_path / "x.npz").write_text("not arrays")
    code = main(["score", str(det / "det"), "--data", str(tmp_path / "x.npz"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a .npz file" in err and "pickle" not in err.lower()
    assert not os.path.exists(tmp_path / "r" / "scores.csv")


def test_a_named_pipe_among_the_images_is_skipped_not_waited_on(det, tmp_path, capsys):
    data = _folder(str(tmp_path / "d"), ["a.png", "b.png"])
    os.mkfifo(os.path.join(data, "x.png"))
    code = main(["score", str(det / "det"), "--data", data, "--out", str(tmp_path / "r"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "x.png (a named pipe (FIFO), not a regular file)" in out
    assert len((tmp_path / "r" / "scores.csv").read_text().splitlines()) == 3


def test_fit_prints_the_calibration_on_training_data_warning_as_one_line(tmp_path, capsys):
    rng = np.random.default_rng(3)
    distinct = rng.integers(0, 256, (10, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "twice.npz", images=np.concatenate([distinct, distinct]))  # copies in both parts
    argv = ["fit", "--data", str(tmp_path / "twice.npz"), "--out", str(tmp_path / "det"), "--no-progress"]
    argv += ["--detectors", "likelihood", "--steps", "2", "--depth", "1", "--hidden", "8", "--levels", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", bundle_mod.CalibrationOnTrainingDataWarning)  # the CLI shows it
        assert main(argv) == 0
    out, err = capsys.readouterr()
    said = [line for line in out.splitlines() if "calibration images equal images" in line]
    assert len(said) == 1 and said[0].startswith("warning: ") and "flow model was trained on" in said[0]
    assert "CalibrationOnTrainingDataWarning" not in out + err and "warnings.warn" not in out + err
