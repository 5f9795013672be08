"""Drive headless Chromium over the DevTools protocol on a pipe: open a page, pick a file, press
keys, read the DOM, catch a download, take a screenshot.

`--remote-debugging-pipe` makes Chromium read protocol commands from file descriptor 3 and write
answers and events to descriptor 4, each message JSON followed by a NUL byte: no WebSocket
client, no driver binary, no port. Used by the labelling page's test and its screenshot script
(`scripts.labelling`); the playground's simpler pages only need `--dump-dom`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from scripts.playground import chromium

Event = dict[str, Any]
# Key name -> (code, Windows virtual key code, text typed); what Input.dispatchKeyEvent needs to
# make the page see a real KeyboardEvent.
KEYS = {
    **{d: (f"Digit{d}", ord(d), d) for d in "0123456789"},
    **{c: (f"Key{c.upper()}", ord(c.upper()), c) for c in "abcdefghijklmnopqrstuvwxyz"},
    "ArrowRight": ("ArrowRight", 39, ""),
    "ArrowLeft": ("ArrowLeft", 37, ""),
    "Backspace": ("Backspace", 8, ""),
    "Enter": ("Enter", 13, "\r"),
    "Tab": ("Tab", 9, ""),
}


def _above_9(fd: int) -> int:
    """The same open file on a descriptor above 9 (the original is closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class BrowserError(RuntimeError):
    """Chromium answered a command with an error, or did not answer in time."""


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, size: tuple[int, int] = (1000, 800), timeout_s: float = 30.0) -> None:
        binary = chromium()
        if binary is None:
            raise FileNotFoundError("chromium is not installed (make tools)")
        self.timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="kubesentiment-cdp-")
        self.downloads = Path(self._profile.name) / "downloads"
        self.downloads.mkdir()
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # A fresh Python moves the two pipe ends to descriptors 3 and 4 and execs Chromium: no
        # preexec_fn, which is unsafe in a process with threads (a test session has some), and
        # no shell (dash cannot redirect descriptors above 9). The ends are first moved above 9,
        # so that neither is 3 or 4 itself.
        r, w = _above_9(to_browser_r), _above_9(from_browser_w)
        move = (
            "import os, sys\n"
            f"os.dup2({r}, 3); os.dup2({w}, 4); os.close({r}); os.close({w})\n"
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                move,
                binary,
                "--headless",
                "--disable-gpu",
                "--no-sandbox",  # containers and CI runners often run as root
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={size[0]},{size[1]}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(r, w),
        )
        os.close(r)
        os.close(w)
        self._next_id = 0
        self._buffer = b""
        self.events: list[Event] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "DOM"):
            self.call(f"{domain}.enable", session=True)
        self.call(
            "Browser.setDownloadBehavior",
            behavior="allow",
            downloadPath=str(self.downloads),
            eventsEnabled=True,
        )

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the browser and remove its profile."""
        with contextlib.suppress(BrowserError, OSError):
            self.call("Browser.close")
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._profile.cleanup()

    def _read(self, deadline: float) -> Event:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise BrowserError("chromium closed the protocol pipe")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        decoded: Event = json.loads(message)
        return decoded

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer; events read meanwhile are kept."""
        self._next_id += 1
        message: Event = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode("utf-8") + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error'].get('message')}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self.events.append(answer)

    def wait_event(self, method: str, match: Callable[[Event], bool] = lambda e: True) -> Event:
        """The first event `method` whose params satisfy `match` (seen already or to come)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            for event in self.events:
                if event.get("method") == method and match(event.get("params", {})):
                    self.events.remove(event)
                    return event
            self.events.append(self._read(deadline))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.call(
            "Runtime.evaluate",
            session=True,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} stayed false")
            time.sleep(0.05)

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def set_file(self, selector: str, path: Path) -> None:
        """Choose `path` in the file input `selector`, as the file picker would."""
        root = self.call("DOM.getDocument", session=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", session=True, nodeId=root, selector=selector)
        if not node.get("nodeId"):
            raise BrowserError(f"no element {selector!r}")
        self.call("DOM.setFileInputFiles", session=True, nodeId=node["nodeId"], files=[str(path)])

    def drop_file(self, path: Path, at: tuple[int, int] = (400, 150)) -> None:
        """Drag `path` from outside the browser and drop it at the point `at` of the page."""
        data = {"items": [], "files": [str(path)], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            self.call(
                "Input.dispatchDragEvent", session=True, type=kind, x=at[0], y=at[1], data=data
            )

    def press(self, key: str) -> None:
        """Press and release one key (a name from KEYS)."""
        code, vk, text = KEYS[key]
        common = {"key": key, "code": code, "windowsVirtualKeyCode": vk}
        down = {"type": "keyDown", **common, **({"text": text} if text else {})}
        self.call("Input.dispatchKeyEvent", session=True, **down)
        self.call("Input.dispatchKeyEvent", session=True, type="keyUp", **common)

    def type_text(self, text: str) -> None:
        """Type `text` into the focused element, as a keyboard (or an IME) would."""
        self.call("Input.insertText", session=True, text=text)

    def download(self, action: Callable[[], None]) -> Path:
        """Run `action` (which starts a download) and return the downloaded file."""
        action()
        begin = self.wait_event("Browser.downloadWillBegin")["params"]
        guid = begin["guid"]
        self.wait_event(
            "Browser.downloadProgress",
            lambda p: p.get("guid") == guid and p.get("state") in ("completed", "canceled"),
        )
        path = self.downloads / begin["suggestedFilename"]
        if not path.exists():
            raise BrowserError(f"the download {begin['suggestedFilename']!r} was not saved")
        return path

    def screenshot(self, out: Path) -> None:
        """A PNG of the page as it is now."""
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
