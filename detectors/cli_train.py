"""``python -m detectors train``: trains a flow with invflow.train.Trainer from the command line.

Named datasets are read from their training split (``--data fashion-mnist`` is the 60000
training images; ``fashion-mnist-test`` asks for the test split explicitly).  A fresh run
refuses a non-empty ``--out`` unless ``--resume`` (continue it) or ``--overwrite`` (delete its
checkpoints and log); SIGINT / SIGTERM write a checkpoint before exiting."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

import invflow
from invflow.train import Trainer, prepare_run_dir

from .data import load_named


def run_train(args) -> dict:
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
    # every process checks (so all refuse together); rank 0 alone deletes with --overwrite
    rank = dist.get_rank() if distributed else 0
    overwrite = getattr(args, "overwrite", False)
    if rank == 0 or not overwrite:
        prepare_run_dir(args.out, resume=args.resume, overwrite=overwrite)
    if distributed:
        dist.barrier()
    images = load_named(args.data, split="train")
    c, h, w = images.shape[1:]
    if args.model == "glow":
        pad = (-h) % 2**args.levels
        model = invflow.Glow(
            c,
            (h + pad, w + (-w) % 2**args.levels),
            levels=args.levels,
            steps=args.depth,
            hidden=args.hidden,
            memory_free=args.memory_free,
        )
    else:
        pad = (-h) % 2 ** (args.levels - 1)
        model = invflow.RealNVP(
            c,
            (h + pad, w + (-w) % 2 ** (args.levels - 1)),
            levels=args.levels,
            blocks=args.depth,
            hidden=args.hidden,
            memory_free=args.memory_free,
        )
    _, mh, mw = model.input_shape
    if (mh, mw) != (h, w):  # pad with the background value so the size fits the scales
        images = torch.nn.functional.pad(images, (0, mw - w, 0, mh - h))
        print(f"padded images from {h}x{w} to {mh}x{mw} to fit {args.levels} scales")
    trainer = Trainer(
        model.to(device),
        images,
        out_dir=args.out,
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
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
