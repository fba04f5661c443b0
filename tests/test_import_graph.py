"""The import graph of invflow and detectors, read from the source (every import statement,
module level and inside functions): no cycle between modules, imports go one way
(ops -> layers -> models -> detectors), and detectors uses only invflow's public modules.

``python tests/test_import_graph.py`` prints the module count, the edges and the layering."""

from __future__ import annotations

import ast
import graphlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("invflow", "detectors")
#: what detectors may import from invflow: the package and its public modules
INVFLOW_PUBLIC = {
    "invflow",
    *(
        f"invflow.{m}"
        for m in (
            "checkpoint",
            "data",
            "io",
            "layers",
            "masks",
            "models",
            "nets",
            "ops",
            "priors",
            "train",
            "validation",
        )
    ),
}


def modules() -> dict[str, Path | None]:
    """Every module of the two packages: dotted name -> file (packages by their __init__)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    out["invflow._C"] = None  # the compiled extension: a leaf
    return out


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` (a module or a name inside one) lies in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules that ``module`` imports anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from X import Y` imports the module X.Y when there is one, else names of X
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            r = resolve(t, known)
            if r is not None and r != module:
                found.add(r)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) if p is not None else set() for m, p in known.items()}


def test_no_import_cycles():
    g = graph()
    try:
        tuple(graphlib.TopologicalSorter(g).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_imports_go_one_way():
    bad = []
    for m, deps in graph().items():
        for d in deps:
            if m.startswith("invflow") and d.startswith("detectors"):
                bad.append(f"{m} imports {d} (invflow never imports detectors)")
            if m.startswith("invflow.layers") and d.startswith("invflow.models"):
                bad.append(f"{m} imports {d} (a layer imports no model)")
            if m.startswith("invflow.ops") and d.startswith(("invflow.layers", "invflow.models")):
                bad.append(f"{m} imports {d} (ops sit below layers and models)")
    assert not bad, "\n".join(sorted(bad))


def test_detectors_use_only_invflow_public_modules():
    bad = sorted(
        f"{m} imports {d}"
        for m, deps in graph().items()
        if m.startswith("detectors")
        for d in deps
        if d.startswith("invflow") and d not in INVFLOW_PUBLIC
    )
    assert not bad, "detectors must import only " + ", ".join(sorted(INVFLOW_PUBLIC)) + ":\n" + "\n".join(bad)


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """The reader is not blind to the lazy imports that hid a layer -> model edge before."""
    known = {"pkg": tmp_path / "__init__.py", "pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py"}
    (tmp_path / "a.py").write_text("def f():\n    from .b import thing\n    from . import b\n")
    assert imports("pkg.a", tmp_path / "a.py", known) == {"pkg.b"}


if __name__ == "__main__":
    g = graph()
    for pkg in PACKAGES:
        mods = [m for m in g if m.split(".")[0] == pkg]
        edges = sum(len([d for d in g[m] if d.split(".")[0] in PACKAGES]) for m in mods)
        print(f"{pkg}: {len(mods)} modules, {edges} import edges")
    for m in sorted(g):
        print(
            f"  {m} -> {', '.join(sorted(g[m])) or '-'}", file=sys.stderr if "-q" in sys.argv else sys.stdout
        )
