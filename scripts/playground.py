"""Headless Chromium for the playground page: its DOM after the page's JS ran, and a screenshot.

    python -m scripts.playground [--out docs/playground.png]     (make playground-screenshot)

Starts the function on loopback (the int8 model), opens `/playground` in test mode (`?text=...`
for each text, `&auto=1` to submit on load) in Debian's `chromium` (`make tools` installs it) and
writes the README's screenshot. The playground test uses `dump_dom` the same way.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

from loadtests.local import ROOT, running

SCREENSHOT = ROOT / "docs" / "playground.png"
TEXTS = (
    "The acting was wonderful but the plot made no sense.",
    "Terrible service, we waited an hour and the soup was cold :(",
    "Not bad at all!",
)
# Virtual time the page may use; it does not pass while a fetch is in flight, so the budget only
# bounds the page's own timers.
BUDGET_MS = 15000


def chromium() -> str | None:
    """Path of Chromium (Debian's package), or of Chrome (preinstalled on CI runners), or None."""
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((path for name in names if (path := shutil.which(name))), None)


def page_url(base_url: str, texts: Sequence[str], auto: bool = True) -> str:
    """The playground URL in test mode for `texts`."""
    query = [("text", t) for t in texts] + ([("auto", "1")] if auto else [])
    return f"{base_url}/playground?{urlencode(query)}"


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("chromium is not installed (make tools)")
    with tempfile.TemporaryDirectory(prefix="kubesentiment-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",  # containers and CI runners often run as root
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={BUDGET_MS}",
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=True)


def dump_dom(url: str, timeout_s: float = 90.0) -> str:
    """The page's DOM, serialized after its scripts ran."""
    return _run(["--dump-dom", url], timeout_s).stdout


def screenshot(url: str, out: Path, size: tuple[int, int] = (1000, 1000)) -> None:
    """A PNG of the page after its scripts ran."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", url], 90.0)
    if not out.exists():
        raise RuntimeError(f"chromium wrote no screenshot to {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SCREENSHOT)
    args = parser.parse_args(argv)
    with running(env={"LOG_LEVEL": "warning"}) as function:
        url = page_url(function.base_url, TEXTS)
        if 'data-state="done"' not in dump_dom(url):
            raise SystemExit("the playground did not render its results")
        screenshot(url, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
