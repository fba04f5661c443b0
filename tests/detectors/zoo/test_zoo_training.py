"""``detectors zoo NAME`` training a shipped model on: ``--from-shipped`` starts at the card's
step from the shipped weights, ``--anneal`` ends with the learning rate falling to 0 (resumable),
the export joins the shipped curve, and the time of a chunk cut short by Ctrl-C is kept."""

from __future__ import annotations

import csv
import json

import pytest

import detectors.zoo.train as zoo_train
from detectors import zoo
from detectors.cli import main

NAME = "fmnist-realnvp"  # the quickest shipped model to step


def _rows(run):
    with open(run / "heldout.csv", newline="") as f:
        return list(csv.DictReader(f))


def _zoo(root, *flags):
    return main(["zoo", NAME, "--root", str(root), *flags])


def test_from_shipped_continues_at_the_card_step_anneals_and_exports_the_joined_curve(
    tmp_path, capsys, monkeypatch
):
    card = zoo.card(NAME)
    start = card["training"]["steps"]
    assert (
        _zoo(tmp_path, "--from-shipped", "--steps", str(start + 2), "--eval-every", "2", "--anneal", "2") == 0
    )
    run = tmp_path / NAME
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == [start, start + 2, start + 4]
    assert float(rows[0]["heldout_bpd"]) == pytest.approx(card["heldout_bpd"], abs=1e-5)
    assert json.loads((run / "anneal.json").read_text()) == {"start": start + 2, "steps": 2}
    with open(run / "log.csv", newline="") as f:
        assert float(list(csv.DictReader(f))[-1]["lr"]) == 0.0  # the anneal reached 0

    capsys.readouterr()
    for again in (["--from-shipped"], []):  # the same command resumes, as does the bare one
        assert _zoo(tmp_path, *again, "--steps", str(start + 2), "--eval-every", "2") == 0
        assert "finished its 2-step anneal" in capsys.readouterr().out
    assert _zoo(tmp_path / "other", "--steps", "1", "--eval-every", "1") == 0  # from scratch
    assert _zoo(tmp_path / "other", "--from-shipped") == 2
    assert "did not start from the shipped weights" in capsys.readouterr().err
    assert _zoo(tmp_path, "--anneal", "5") == 0  # finished: says so rather than refusing
    assert "finished its 2-step anneal" in capsys.readouterr().out

    monkeypatch.setattr(zoo_train, "ZOO_DIR", str(tmp_path / "zoo"))
    exported = zoo_train.export(NAME, str(tmp_path), "test")
    shipped_curve = [c for c in card["heldout_curve"] if c[0] < start]
    assert exported["heldout_curve"][: len(shipped_curve)] == shipped_curve
    assert [c[0] for c in exported["heldout_curve"][len(shipped_curve) :]] == [start, start + 2, start + 4]
    assert exported["continued_from"]["steps"] == start and exported["init"] is None
    assert exported["training"]["anneal"]["start"] == start + 2
    assert f"--from-shipped --steps {start + 2} --eval-every 2 --anneal 2" in exported["command"]


def test_from_shipped_is_refused_for_replicates_and_exports(tmp_path, capsys):
    assert _zoo(tmp_path, "--from-shipped", "--seed", "1") == 2
    assert "a --seed replicate trains from scratch" in capsys.readouterr().err
    for flag in (["--from-shipped"], ["--anneal", "3"]):
        assert _zoo(tmp_path, *flag, "--export") == 2
        assert "export the run afterwards with --export alone" in capsys.readouterr().err
    assert not (tmp_path / NAME).exists()


def test_time_of_an_interrupted_chunk_reaches_the_next_logged_row(tmp_path, monkeypatch):
    import time

    real_fit = zoo_train.Trainer.fit

    def cut_short(self, resume=False):
        time.sleep(0.3)
        raise KeyboardInterrupt

    start = zoo.card(NAME)["training"]["steps"]
    monkeypatch.setattr(zoo_train.Trainer, "fit", cut_short)
    assert _zoo(tmp_path, "--from-shipped", "--steps", str(start + 1), "--eval-every", "1") == 130
    run = tmp_path / NAME
    assert float((run / "unlogged_wall_s").read_text()) >= 0.3
    monkeypatch.setattr(zoo_train.Trainer, "fit", real_fit)
    assert _zoo(tmp_path, "--steps", str(start + 1), "--eval-every", "1") == 0
    first, second = _rows(run)
    assert float(second["wall_s"]) - float(first["wall_s"]) >= 0.3
    assert not (run / "unlogged_wall_s").exists()


def test_a_continuation_cut_short_before_its_first_checkpoint_restarts_from_the_shipped_weights(
    tmp_path, monkeypatch
):
    start = zoo.card(NAME)["training"]["steps"]
    run = tmp_path / NAME
    run.mkdir()
    (run / "init.json").write_text(json.dumps(zoo_train._continuation(NAME)))  # nothing else written yet
    seen = []
    real = zoo_train._objective
    monkeypatch.setattr(
        zoo_train, "_objective", lambda r, root, shipped: seen.append(shipped) or real(r, root, shipped)
    )
    assert _zoo(tmp_path, "--steps", str(start + 1), "--eval-every", "1") == 0  # without the flag
    assert [int(r["step"]) for r in _rows(run)] == [start, start + 1]
    assert seen == [True]  # a shipped model trained on scores against shipped references


def test_interruptions_between_evaluations_never_delete_the_exportable_checkpoint(tmp_path, monkeypatch):
    start = zoo.card(NAME)["training"]["steps"]

    def one_step_then_ctrl_c(self, resume=False):
        self.load_latest()
        self.step += 1
        self.save_checkpoint()  # as Trainer.fit does on SIGINT
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo_train.Trainer, "fit", one_step_then_ctrl_c)
    for _ in range(3):
        assert _zoo(tmp_path, "--from-shipped", "--steps", str(start + 10), "--eval-every", "10") == 130
    run = tmp_path / NAME
    assert (run / f"step-{start:07d}").is_dir() and (run / f"step-{start + 3:07d}").is_dir()
    monkeypatch.setattr(zoo_train, "ZOO_DIR", str(tmp_path / "zoo"))
    assert zoo_train.export(NAME, str(tmp_path), "test")["training"]["steps"] == start


def test_time_of_an_interrupted_evaluation_is_kept(tmp_path, monkeypatch):
    import time

    def slow_then_ctrl_c(model, images):
        time.sleep(0.3)
        raise KeyboardInterrupt

    start = zoo.card(NAME)["training"]["steps"]
    monkeypatch.setattr(zoo_train, "heldout_bpd", slow_then_ctrl_c)
    assert _zoo(tmp_path, "--from-shipped", "--steps", str(start + 1), "--eval-every", "1") == 130
    assert float((tmp_path / NAME / "unlogged_wall_s").read_text()) >= 0.3
