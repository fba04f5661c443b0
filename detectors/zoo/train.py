"""Trains a zoo model for real and exports it with its model card.

    python -m detectors zoo NAME [--steps 20000] [--eval-every 250] [--root runs/zoo]
    python -m detectors zoo NAME --export        # weights + card into detectors/zoo/
    python -m detectors zoo NAME --seed 1        # a replicate in ROOT/NAME-seed1 (not shipped)
    python -m detectors zoo NAME --from-shipped  # train the shipped model on, from its card's step

(``python -m detectors.zoo.train ...`` runs the same command.)

Training runs through ``invflow.train.Trainer`` in ``ROOT/NAME`` and always resumes there;
every ``--eval-every`` steps it writes the held-out bits/dim and the cumulative training wall
time to ``ROOT/NAME/heldout.csv``, and it stops early once the held-out bits/dim has not
improved for ``--patience`` evaluations.  Finetuned models (outlier loss, Diff-dagger) start
from the latest checkpoint of their ``init`` run in ROOT, and use the latest checkpoint of
their ``reference`` run as the frozen second model; without such a run, the shipped weights.
``--seed K`` (K >= 1) trains a replicate in ``ROOT/NAME-seedK``: its initial weights, data
order and noise come from K, and a finetune replicate always starts from the *shipped* init
and reference models.  Replicates are never exported (the zoo ships seed 0).
``--from-shipped`` starts a run that ROOT does not hold yet from the shipped weights, at the step
of the card (the optimizer state is not shipped: Adamax restarts with the recipe's warm-up); its
export's card joins the shipped held-out curve and records the continuation.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import torch

import invflow
from invflow.io import atomic_write
from invflow.train import Trainer

from .. import objectives
from . import ZOO_DIR
from .recipes import CHECK_N, HELDOUT_N, RECIPES, build, heldout_bpd, heldout_data, training_data


def _run_or_shipped(root: str, name: str, shipped: bool = False):
    """The latest checkpoint of the run ``root/name``, or the shipped zoo weights of ``name``
    when there is no such run here (always, with ``shipped``)."""
    run = os.path.join(root, name)
    if os.path.isdir(run) and not shipped:
        return invflow.checkpoint.load_run(run)
    from . import load as load_shipped

    return load_shipped(name)


def _run_or_shipped_path(root: str, name: str, shipped: bool = False) -> str:
    run = os.path.join(root, name)
    if os.path.isdir(run) and not shipped:
        return invflow.checkpoint.resolve(run)
    return f"shipped detectors/zoo/weights/{name}.safetensors"


def _objective(recipe, root: str, shipped: bool = False):
    if recipe.objective == "nll":
        from invflow.train import nll

        return nll
    if recipe.objective == "approx_mass":
        return objectives.approx_mass_objective(recipe.alpha)
    ref = _run_or_shipped(root, recipe.reference, shipped)
    if recipe.objective == "outlier":  # outliers: the general distribution's training photos
        return objectives.outlier_objective(ref, training_data(RECIPES[recipe.reference]))
    if recipe.objective == "dagger":  # outliers: Fashion-MNIST training images, p_in the reference
        return objectives.diff_dagger_objective(ref, training_data(RECIPES[recipe.reference]))
    raise ValueError(f"unknown objective {recipe.objective!r}")


def _log_rows(path: str) -> list[dict]:
    """The rows of a run's ``heldout.csv`` (step, heldout_bpd, wall_s), [] when there is none;
    ValueError naming the file when a row lacks a field or holds a non-number."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        try:
            int(r["step"]), float(r["heldout_bpd"]), float(r["wall_s"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{path}: row {i + 1} is not 'step,heldout_bpd,wall_s' numbers ({r}); "
                "delete the broken rows or the run"
            ) from None
    return rows


def _init_note(out: str) -> dict:
    """The run's init.json (how it started: init model, continuation), {} when there is none."""
    path = os.path.join(out, "init.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_rows(path: str, rows: list[dict]) -> None:
    """Replaces a run's ``heldout.csv`` with ``rows`` atomically."""
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "heldout_bpd", "wall_s"])
        w.writeheader()
        w.writerows(rows)
    os.replace(path + ".tmp", path)


def run_dir(root: str, name: str, seed: int = 0) -> str:
    """Where ``train`` keeps the run of ``name``: ``root/name`` for seed 0 (the shipped
    training), ``root/name-seedK`` for a seed replicate K >= 1."""
    return os.path.join(root, name if seed == 0 else f"{name}-seed{seed}")


def load_replicate(name: str, seed: int, root: str = "runs/zoo"):
    """The model of ``name`` trained with ``seed``: the shipped zoo model for seed 0, else the
    latest checkpoint of the replicate run ``root/name-seedK``; FileNotFoundError with the
    command that trains it when that run is missing."""
    if seed == 0:
        from . import load as load_shipped

        return load_shipped(name)
    out = run_dir(root, name, seed)
    if not os.path.exists(os.path.join(out, "latest")):
        raise FileNotFoundError(
            f"{out}: no trained replicate of {name} with seed {seed}; train it with "
            f"python -m detectors zoo {name} --seed {seed} --root {root}"
        )
    return invflow.checkpoint.load_run(out)


def replicate_step(name: str, seed: int, root: str = "runs/zoo") -> int | None:
    """The training step of the latest checkpoint of the replicate ``root/name-seedK`` (of the
    shipped model's card for seed 0); None when there is no such run."""
    if seed == 0:
        from . import card

        return int(card(name)["training"]["steps"])
    try:
        path = invflow.checkpoint.resolve(run_dir(root, name, seed))
    except FileNotFoundError:
        return None
    return int(os.path.basename(os.path.dirname(path)).removeprefix("step-"))


def _continuation(name: str) -> dict:
    """What a run continued from the shipped ``name`` records in its init.json: the card's
    init record (finetunes) and, under "continued_from", the card's steps, held-out bits/dim,
    wall time, commit and held-out curve."""
    from . import card

    c = card(name)
    t = c["training"]
    return {
        **(c["init"] or {}),
        "continued_from": {
            "steps": int(t["steps"]),
            "heldout_bpd": c["heldout_bpd"],
            "wall_s": float(t["wall_s"]),
            "commit": c["commit"],
            "heldout_curve": c["heldout_curve"],
            "optimizer": "not shipped: Adamax restarts, with the recipe's warm-up",
            **({"anneal": t["anneal"]} if "anneal" in t else {}),
            **({"continued_from": c["continued_from"]} if "continued_from" in c else {}),
        },
    }


def train(
    name: str,
    steps: int,
    eval_every: int,
    root: str,
    patience: int,
    seed: int = 0,
    from_shipped: bool = False,
    anneal: int = 0,
) -> None:
    """Trains ``name`` in :func:`run_dir` (resuming there), ``eval_every`` steps at a time, up
    to ``steps`` or until the held-out bits/dim has not improved for ``patience``
    evaluations.  ``seed`` sets the initial weights, data order, augmentation and noise; a
    replicate (``seed`` >= 1) of a finetune starts from, and scores against, the *shipped*
    init and reference models, whatever runs ``root`` holds, so that every replicate pairs
    with the models the shipped seed-0 finetune started from.  ``from_shipped`` starts a run
    that does not exist yet from the shipped weights at the card's step (the optimizer state
    is not shipped, so Adamax restarts with the recipe's warm-up); ``steps`` then counts from
    step 0 of the original training.  ValueError with ``seed`` >= 1 (a replicate is its own
    training) or when ``root`` holds a run of ``name`` that started otherwise (a continuation
    resumes with or without the flag).  ``anneal`` > 0
    adds a final phase once the constant learning rate stops (``steps`` or patience): the rate
    falls linearly to 0 over ``anneal`` more steps (``invflow.train.TrainConfig.decay_start``),
    recorded in ``ROOT/NAME/anneal.json`` so that a re-run finishes it."""
    recipe = RECIPES[name]
    out = run_dir(root, name, seed)
    rows = _log_rows(os.path.join(out, "heldout.csv"))
    fresh = not rows and not os.path.exists(os.path.join(out, "latest"))
    # a continuation: asked for, or one whose set-up was cut short before its first checkpoint
    resumed_continuation = "continued_from" in _init_note(out)
    if from_shipped and seed:
        raise ValueError(
            "--from-shipped continues the shipped seed-0 training; a --seed replicate trains from scratch"
        )
    if from_shipped and not fresh and not resumed_continuation:
        raise ValueError(
            f"{out} holds a run of {name} that did not start from the shipped weights: "
            "resume it without --from-shipped, or choose another --root"
        )
    continued = _continuation(name) if fresh and (from_shipped or resumed_continuation) else None
    if rows:
        done, where = int(rows[-1]["step"]), f"{out} is"
    elif continued:
        done, where = continued["continued_from"]["steps"], f"the shipped {name} is"
    else:
        done, where = 0, f"{out} is"
    anneal_path = os.path.join(out, "anneal.json")
    phase = json.load(open(anneal_path)) if os.path.exists(anneal_path) else None
    if phase:
        end = phase["start"] + phase["steps"]
        if done >= end:
            print(
                f"[{name}] {out} has finished its {phase['steps']}-step anneal at step {end}: export it "
                "(--export), or train it on in another --root (after the export, with --from-shipped)"
            )
            return
        if anneal and anneal != phase["steps"]:
            raise ValueError(
                f"{out} is annealing over {phase['steps']} steps (from step {phase['start']}); "
                f"drop --anneal {anneal} to finish it"
            )
    elif done + eval_every > steps and not anneal:
        print(
            f"[{name}] {where} at step {done}; --steps {steps} leaves no --eval-every {eval_every} steps to train"
        )
        return
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)  # the initial weights of a model trained from scratch
    model = build(recipe)
    init_note = os.path.join(out, "init.json")
    shipped = seed != 0
    if continued or resumed_continuation:  # a shipped model trained on scores against the shipped reference
        shipped = True
    if continued:
        from . import load as load_shipped

        model.load_state_dict(load_shipped(name).state_dict())
        with open(init_note, "w") as f:
            json.dump(continued, f)
    elif recipe.init and not os.path.exists(os.path.join(out, "latest")):
        model.load_state_dict(_run_or_shipped(root, recipe.init, shipped).state_dict())
        init_checkpoint = _run_or_shipped_path(root, recipe.init, shipped)
        with open(init_note, "w") as f:
            json.dump(
                {
                    "init": recipe.init,
                    "checkpoint": init_checkpoint,
                    "reference": recipe.reference,
                    "reference_checkpoint": (
                        _run_or_shipped_path(root, recipe.reference, shipped) if recipe.reference else None
                    ),
                },
                f,
            )
    data = training_data(recipe)
    held = heldout_data(recipe.data, size=recipe.size, channels=recipe.channels)
    trainer = Trainer(
        model,
        data,
        out_dir=out,
        objective=_objective(recipe, root, shipped),
        steps=eval_every,
        batch_size=recipe.batch,
        lr=recipe.lr,
        warmup=recipe.warmup,
        translate=recipe.translate,
        checkpoint_every=eval_every,
        keep_checkpoints=10**9,  # pruned here, never the last evaluated one (:func:`_prune`)
        seed=seed,
        log_every=25,
        progress=False,
    )
    if recipe.init or continued:  # the weights are already trained: no data-dependent ActNorm init
        trainer.initialize = lambda: None
    log_path = os.path.join(out, "heldout.csv")
    if continued:  # the shipped weights become the run's first checkpoint, at the card's step
        start = continued["continued_from"]
        trainer.step = start["steps"]
        trainer.save_checkpoint()
        rows = [
            {
                "step": start["steps"],
                "heldout_bpd": f"{start['heldout_bpd']:.5f}",
                "wall_s": f"{start['wall_s']:.1f}",
            }
        ]
        _write_rows(log_path, rows)
    wall = float(rows[-1]["wall_s"]) if rows else 0.0
    pending = os.path.join(out, "unlogged_wall_s")  # training time of a chunk cut short
    if os.path.exists(pending):
        with open(pending) as f:
            wall += float(f.read())

    def evaluate_after(to: int) -> None:
        nonlocal wall
        trainer.config.steps = to
        t0 = time.perf_counter()
        try:
            trainer.fit(resume=True)
            bpd = heldout_bpd(model, held)
        except KeyboardInterrupt:  # keep the time trained so far for the next logged row
            unlogged = wall - float(rows[-1]["wall_s"] if rows else 0) + time.perf_counter() - t0
            atomic_write(pending, f"{unlogged:.1f}")
            raise
        wall += time.perf_counter() - t0
        rows.append({"step": trainer.step, "heldout_bpd": f"{bpd:.5f}", "wall_s": f"{wall:.1f}"})
        _write_rows(log_path, rows)
        if os.path.exists(pending):
            os.remove(pending)
        _prune(out, rows)
        print(f"[{name}] step {trainer.step}: held-out {bpd:.4f} bits/dim, {wall:.0f} s", flush=True)

    if not phase:  # the constant learning rate, until --steps or the patience rule
        while not _stalled(rows, patience) and int(rows[-1]["step"] if rows else 0) + eval_every <= steps:
            evaluate_after(int(rows[-1]["step"] if rows else 0) + eval_every)
        if _stalled(rows, patience):
            print(
                f"[{name}] held-out bits/dim has not improved for {patience} evaluations: stopping",
                flush=True,
            )
        if not anneal:
            return
        phase = {"start": int(rows[-1]["step"]), "steps": anneal}
        atomic_write(anneal_path, json.dumps(phase))
        print(f"[{name}] annealing: the learning rate falls linearly to 0 over {anneal} steps", flush=True)
    trainer.config.decay_start, trainer.config.decay_steps = phase["start"], phase["steps"]
    end = phase["start"] + phase["steps"]
    while int(rows[-1]["step"]) < end:
        evaluate_after(min(int(rows[-1]["step"]) + eval_every, end))


def _prune(out: str, rows: list[dict], keep: int = 2) -> None:
    """Deletes the checkpoints of ``out`` older than its last ``keep`` evaluated ones (those
    written on interruption between evaluations included), so that the latest evaluated
    checkpoint, the one ``export`` ships, always survives."""
    kept = sorted(int(r["step"]) for r in rows)[-keep:]
    if not kept:
        return
    for d in os.listdir(out):
        if d.startswith("step-") and d[5:].isdigit() and int(d[5:]) < kept[0]:
            shutil.rmtree(os.path.join(out, d), ignore_errors=True)


def _stalled(rows: list[dict], patience: int) -> bool:
    """Whether the held-out bits/dim of ``rows`` has not improved for ``patience`` evaluations."""
    if not rows:
        return False
    best = min(range(len(rows)), key=lambda i: float(rows[i]["heldout_bpd"]))
    return len(rows) - 1 - best >= patience


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _command(name: str, root: str, continued: bool, phase: dict | None, rows: list[dict]) -> str:
    """The command line that trains the exported run again: with an anneal, ``--steps`` is the
    step it started at and ``--eval-every`` the run's evaluation interval."""
    cmd = f"python -m detectors zoo {name} --root {root}" + (" --from-shipped" if continued else "")
    if phase:
        steps = [int(r["step"]) for r in rows]
        every = steps[-1] - steps[-2] if len(steps) > 1 else phase["steps"]
        cmd += f" --steps {phase['start']} --eval-every {every} --anneal {phase['steps']}"
    return cmd + "  (resumable; then --export)"


def _data_card(recipe, n_train: int) -> dict:
    data = recipe.data
    if data == "fashion-mnist":
        return {
            "train": "Fashion-MNIST training split (60000)",
            "heldout": f"first {HELDOUT_N} Fashion-MNIST test images",
        }
    broad = data == "photos-broad"
    how = ", photometrically broadened (detectors.data.broaden, seed {})" if broad else ""
    mode = "grey" if recipe.channels == 1 else "RGB"
    return {
        "train": f"{n_train} {mode} {recipe.size}x{recipe.size} patches of the 32 training photos "
        "(detectors.data.photos, seed 0)" + how.format(0),
        "heldout": f"{HELDOUT_N} patches of the 8 test photos (detectors.data.photos.TEST_PHOTOS, seed 1)"
        + how.format(1),
    }


def export(name: str, root: str, status: str) -> dict:
    """Copies the latest checkpoint of ``root/name`` into the zoo (float32 weights) with its card."""
    recipe = RECIPES[name]
    out = os.path.join(root, name)
    if not os.path.isdir(out):
        raise FileNotFoundError(
            f"{out}: no training run of {name} to export; train it first with "
            f"python -m detectors zoo {name} --root {root}"
        )
    rows = _log_rows(os.path.join(out, "heldout.csv"))
    # the latest checkpoint with a held-out evaluation (not one written on interruption)
    evaluated = {int(r["step"]): r for r in rows}
    steps = sorted(int(d[5:]) for d in os.listdir(out) if d.startswith("step-") and d[5:].isdigit())
    step = max((s for s in steps if s in evaluated), default=None)
    if step is None:
        raise FileNotFoundError(f"{out}: no checkpoint with a held-out evaluation yet")
    model = invflow.checkpoint.load(os.path.join(out, f"step-{step:07d}", "model.safetensors")).float().eval()
    row = evaluated[step]
    rows = [r for r in rows if int(r["step"]) <= step]
    held = heldout_data(recipe.data, size=recipe.size, channels=recipe.channels)
    n_train = 60000
    init = _init_note(out)
    continued = init.pop("continued_from", None)
    if continued:  # the curve of the shipped training, then this run's from its last step on
        rows = [
            {"step": s, "heldout_bpd": b, "wall_s": None}
            for s, b in continued.pop("heldout_curve")
            if s < continued["steps"]
        ] + rows
    init = (init or None) if recipe.init else None
    anneal_path = os.path.join(out, "anneal.json")
    phase = None
    if os.path.exists(anneal_path):
        with open(anneal_path) as f:
            phase = json.load(f)
    card = {
        "name": name,
        "summary": recipe.summary,
        "model": {
            "class": type(model).__name__,
            "config": model.config(),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "data": _data_card(recipe, n_train),
        "objective": recipe.objective,
        "init": init,
        "reference": recipe.reference,
        "training": {
            "steps": step,
            "batch": recipe.batch,
            "epochs": round(step * recipe.batch / n_train, 2),
            "lr": recipe.lr,
            "warmup": recipe.warmup,
            "translate": recipe.translate,
            "optimizer": "Adamax, weight decay 5e-5 (invflow.train defaults)",
            "wall_s": float(row["wall_s"]),
            "machine": "2 shared CPU cores, 1 torch thread, nice 19 (other jobs running)",
        },
        "command": _command(name, root, bool(continued), phase, rows),
        "heldout_bpd": round(heldout_bpd(model, held), 5),
        "check": {"n": CHECK_N, "bpd": heldout_bpd(model, held[:CHECK_N])},
        "heldout_curve": [[int(r["step"]), float(r["heldout_bpd"])] for r in rows],
        "status": status,
        "commit": _commit(),
    }
    if recipe.objective == "approx_mass":
        card["alpha"] = recipe.alpha
    if continued:
        card["continued_from"] = continued
    if phase:
        card["training"]["anneal"] = {
            **phase,
            "schedule": "from step start the learning rate falls linearly to 0 over these steps "
            "(times the warm-up factor while a restarted warm-up lasts)",
        }
    os.makedirs(os.path.join(ZOO_DIR, "weights"), exist_ok=True)
    os.makedirs(os.path.join(ZOO_DIR, "cards"), exist_ok=True)
    invflow.save(model, os.path.join(ZOO_DIR, "weights", f"{name}.safetensors"))
    tmp = os.path.join(ZOO_DIR, "cards", f"{name}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(card, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(ZOO_DIR, "cards", f"{name}.json"))
    print(f"[{name}] exported step {step}: held-out {card['heldout_bpd']:.4f} bits/dim ({status})")
    return card


def export_features(size: int = 96) -> str:
    """Ships the EfficientNet-Lite0 features (unit sphere, float16) of the zoo demo's feature fit
    sets (``demo.feature_fit_images``), so the default demo extracts only the scored images."""
    from safetensors.torch import save_file

    from ..data import load_fashion_mnist
    from ..experiments.demo import DemoConfig, feature_fit_images, images_digest, zoo_general_images
    from ..features import EfficientNetLite0, extract_features, normalize_features

    cfg = DemoConfig(feature_size=size)
    images = feature_fit_images(cfg, load_fashion_mnist("train")[0], zoo_general_images(cfg))
    extractor = EfficientNetLite0(input_size=size)
    feats = {
        k: normalize_features(extract_features(extractor, x), noise=0.0).half().contiguous()
        for k, x in images.items()
    }
    path = os.path.join(ZOO_DIR, "weights", f"features-efficientnet-lite0-{size}.safetensors")
    save_file(
        feats,
        path,
        metadata={
            "digests": json.dumps({k: images_digest(x) for k, x in images.items()}),
            "size": str(size),
            "commit": _commit(),
        },
    )
    print(f"features of {', '.join(f'{k} ({len(x)})' for k, x in images.items())} at {size} px -> {path}")
    return path


if __name__ == "__main__":  # python -m detectors.zoo.train ARGS runs python -m detectors zoo ARGS
    import runpy

    sys.argv[:1] = ["python -m detectors", "zoo"]
    runpy.run_module("detectors", run_name="__main__", alter_sys=True)
