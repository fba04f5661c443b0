"""Reads `nvcc -Xptxas -v` logs and reports registers and spills per kernel.

    python tools/ptxas_report.py LOG [LOG ...] [--out TABLE]

Prints one line per compiled entry function (registers, spill stores, spill loads, stack
frame; names demangled with c++filt when it is present) and exits 1 when any function
spills: a spill moves registers to local memory, which a bandwidth-bound kernel pays for in
every loop iteration.  Used by tools/cuda_compile_check.sh (part of `make test`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


@dataclass
class Kernel:
    name: str
    arch: str
    registers: int = -1
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


def parse(text: str) -> list[Kernel]:
    """The entry functions of one ptxas log, in order.  Device functions that are not
    entries (their own 'Function properties' blocks) are ignored: their spills show in the
    entry that inlines or calls them."""
    kernels: list[Kernel] = []
    current: Kernel | None = None
    props_for: str | None = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = Kernel(m.group(1), m.group(2))
            kernels.append(current)
            props_for = None
        elif m := _PROPS.search(line):
            props_for = m.group(1)
        elif (m := _SPILL.search(line)) and current is not None and props_for == current.name:
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif (m := _REGS.search(line)) and current is not None:
            current.registers = int(m.group(1))
    return kernels


def demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=False).stdout
    lines = out.splitlines()
    return lines if len(lines) == len(names) else names


def short(name: str, width: int = 150) -> str:
    name = name.replace("invflow::cuda::", "").replace("(anonymous namespace)::", "")
    return name if len(name) <= width else name[: width - 3] + "..."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args(argv)
    kernels: list[Kernel] = []
    for path in args.logs:
        with open(path) as f:
            kernels += parse(f.read())
    if not kernels:
        print("ptxas_report: no entry functions found (was -Xptxas -v passed?)", file=sys.stderr)
        return 1
    names = demangle([k.name for k in kernels])
    rows = [f"{'regs':>4} {'spill_st':>8} {'spill_ld':>8} {'stack':>5}  kernel"]
    for k, name in sorted(zip(kernels, names), key=lambda kn: kn[1]):
        rows.append(f"{k.registers:4d} {k.spill_stores:8d} {k.spill_loads:8d} {k.stack:5d}  {short(name)}")
    table = "\n".join(rows) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    spilling = [(k, n) for k, n in zip(kernels, names) if k.spills]
    worst = max(k.registers for k in kernels)
    print(f"ptxas_report: {len(kernels)} kernels, at most {worst} registers, {len(spilling)} spilling")
    for k, name in spilling:
        print(
            f"ptxas_report: SPILL {k.spill_stores} B stores / {k.spill_loads} B loads, {k.registers} registers: "
            f"{short(name)}",
            file=sys.stderr,
        )
    return 1 if spilling else 0


if __name__ == "__main__":
    sys.exit(main())
