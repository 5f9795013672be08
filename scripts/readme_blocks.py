"""The README's generated blocks: find one between its markers, or replace it in place.

Every generator of a README block (scripts/readme_perf.py, scripts/readme_model.py and the
`--readme` of benchmarks/priorities.py, duplicates.py and explain.py) writes through here.
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def current(readme: str, begin: str, end: str) -> str | None:
    """The block between the markers, markers included (None when either is missing)."""
    start = readme.find(begin)
    stop = readme.find(end, start + len(begin)) if start >= 0 else -1
    if stop < 0:
        return None
    return readme[start : stop + len(end)]


def replace(block: str, begin: str, end: str, readme: Path = README) -> None:
    """Put `block` (markers included) where the old block is; SystemExit when there is none."""
    text = readme.read_text()
    old = current(text, begin, end)
    if old is None:
        raise SystemExit(f"{readme.name} has no {begin!r} ... {end!r} block")
    readme.write_text(text.replace(old, block, 1))
