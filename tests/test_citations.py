"""Papers are cited by author and year, never by the three-digit prefix of their text file
(a prefix before "Tab." or "Sec.", or after "seed"): it means nothing to a reader. Checks the
docs, README and the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE_PREFIX = re.compile(r"\b(?:seed )?00[0-4] (?:Sec|Tab|App|Eq|Fig|Alg|S\d)|\bseed 00[0-4]\b")


def test_papers_are_cited_by_author_and_year():
    paths = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    for folder in ("docs", "invflow", "detectors", "bench", "examples", "tools"):
        paths += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".md", ".py", ".cpp", ".cu", ".h")]
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {m.group(0)}"
        for p in paths
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        for m in [FILE_PREFIX.search(line)]
        if m
    ]
    assert not hits, "cite the paper by author and year instead:\n" + "\n".join(hits[:20])
