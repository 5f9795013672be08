"""The lock files install as written: a hashed install needs every extra that one locked package
asks of another pinned with that extra (pytest-cov asks for `coverage[toml]`; a pin without
`[toml]` made a fresh venv's pip refuse the whole dev install)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.lock import without_extras

REQ = Path(__file__).resolve().parent.parent / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([^\]]*)\])?==(\S+)", re.MULTILINE)


def pins(path: Path) -> dict[str, tuple[set[str], str]]:
    """{canonical name: (extras, version)} of a lock file."""
    return {
        canonicalize_name(name): ({e.strip() for e in extras.split(",")} if extras else set(), v)
        for name, extras, v in PIN.findall(path.read_text())
    }


def test_without_extras_strips_only_the_extras() -> None:
    text = (
        "coverage[toml]==7.17.5 \\\n    --hash=sha256:00ff\n    # via pytest-cov\n"
        "pyjwt[crypto,x]==2.15.1 \\\n"
        "numpy==2.3.0\n"
    )
    assert without_extras(text) == (
        "coverage==7.17.5 \\\n    --hash=sha256:00ff\n    # via pytest-cov\n"
        "pyjwt==2.15.1 \\\n"
        "numpy==2.3.0\n"
    )


@pytest.mark.parametrize("lock", ["serving.txt", "dev.txt"])
def test_extras_asked_for_are_pinned(lock: str) -> None:
    """For each pinned package installed here at its pinned version, every unconditional
    `name[extra]` requirement on another package of the same lock is pinned with that extra."""
    locked = pins(REQ / lock)
    checked = 0
    missing = []
    for name, (_, version) in locked.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            target = canonicalize_name(req.name)
            if not req.extras or target not in locked:
                continue
            checked += 1
            if not req.extras <= locked[target][0]:
                missing.append(f"{name} asks for {req.name}[{','.join(sorted(req.extras))}]")
    assert not missing, f"{lock}: pins without the extras asked for: {missing}"
    if lock == "dev.txt":
        assert checked, "no package asked another for an extra: the check looked at nothing"
