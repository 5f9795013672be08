"""The Makefile's targets: every phony name has a rule, every rule a user runs is documented under a
heading of `make help`, and `make help` prints them there."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = ROOT / "Makefile"
RULE = re.compile(r"^([a-z0-9][a-z0-9-]*):(?!=)(.*)$")


def lines() -> list[str]:
    return MAKEFILE.read_text(encoding="utf-8").splitlines()


def phony() -> set[str]:
    return {name for line in lines() if line.startswith(".PHONY:") for name in line[7:].split()}


def rules() -> dict[str, str | None]:
    """Named rules -> the heading they sit under (None before the first heading)."""
    found: dict[str, str | None] = {}
    heading = None
    for line in lines():
        if line.startswith("##@ "):
            heading = line[4:].strip()
        elif m := RULE.match(line):
            found[m.group(1)] = heading
    return found


def documented() -> set[str]:
    return {m.group(1) for line in lines() if (m := RULE.match(line)) and "## " in m.group(2)}


def test_every_phony_target_has_a_rule() -> None:
    assert phony() - set(rules()) == set(), "phony names without a rule"


def test_every_named_rule_is_phony_documented_and_under_a_heading() -> None:
    named = rules()
    assert set(named) - phony() == set(), "named rules missing from .PHONY"
    assert set(named) - documented() == set(), "rules without a `## ` help text"
    assert {n for n, heading in named.items() if heading is None} == set()


def test_each_heading_declares_its_own_targets_phony() -> None:
    """The `.PHONY` line right under a heading names exactly the rules of that section."""
    text = lines()
    named = rules()
    for i, line in enumerate(text):
        if line.startswith("##@ "):
            heading = line[4:].strip()
            assert text[i + 1].startswith(".PHONY:"), heading
            declared = set(text[i + 1][7:].split())
            assert declared == {n for n, h in named.items() if h == heading}, heading


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_help_lists_every_target_under_its_heading() -> None:
    out = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    shown: dict[str, str] = {}
    heading = ""
    for line in out.splitlines():
        if line and not line.startswith(" "):
            heading = line.strip()
        elif line.strip():
            shown[line.split()[0]] = heading
    assert shown == rules()
