"""The subcommands of the experiments: ``reproduce``, ``ood-suite`` and ``zoo`` each give
``add_parser(subparsers)`` and ``run(args)``, with the flags and defaults of the old entry
points; ``python -m detectors.ood_suite`` and ``python -m detectors.zoo.train`` still run."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from detectors.cli import ood_suite, reproduce, zoo


def _parse(module, argv):
    parser = argparse.ArgumentParser(prog="detectors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = module.add_parser(sub)
    assert isinstance(p, argparse.ArgumentParser) and callable(module.run)
    return parser.parse_args(argv)


def test_defaults_are_those_of_the_old_entry_points():
    a = _parse(reproduce, ["reproduce", "glow"])
    assert (a.names, a.seeds, a.out, a.smoke, a.threads, a.set) == (
        ["glow"],
        [0, 1, 2],
        "runs/reproduce",
        False,
        None,
        [],
    )
    a = _parse(ood_suite, ["ood-suite"])
    assert (a.out, a.n, a.seed, a.floor, a.features, a.feature_size, a.ensemble) == (
        "runs/ood-suite",
        500,
        0,
        0.9,
        False,
        64,
        [],
    )
    a = _parse(zoo, ["zoo", "fmnist-glow"])
    assert (a.name, a.steps, a.eval_every, a.patience, a.root, a.threads, a.export, a.status) == (
        "fmnist-glow",
        20000,
        250,
        4,
        "runs/zoo",
        1,
        False,
        "training continues",
    )


def test_reproduce_refuses_a_bad_override_before_any_work():
    args = _parse(reproduce, ["reproduce", "glow", "--set", "no_such_field=1"])
    with pytest.raises(ValueError, match="no_such_field"):
        reproduce.run(args)


def test_suite_refuses_bad_arguments_before_any_work(capsys):
    for argv, what in (
        (["--n", "0"], "argument --n: expected an integer in [1, "),
        (["--ensemble", "Diff-dagger"], "two or more different detector names"),
        (["--ensemble", "likelihood+likelihood"], "two or more different detector names"),
        (["--ensemble", "Diff-dagger+"], "two or more different detector names"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            _parse(ood_suite, ["ood-suite", *argv])
        assert exit_info.value.code == 2 and what in capsys.readouterr().err, argv


@pytest.mark.parametrize("module", ["detectors.ood_suite", "detectors.zoo.train"])
def test_old_module_entry_points_still_run(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("--feature-size" if module.endswith("ood_suite") else "--eval-every") in proc.stdout
