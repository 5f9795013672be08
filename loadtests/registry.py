"""A local OCI registry for model artifacts: Debian's `docker-registry` (distribution 2.8) on
loopback, its storage in a directory of our own (`make tools` installs it).

Used by the model URI tests and `make coldstart-uri`: `LocalRegistry.start()` writes a config
with a loopback `http.addr`, starts `docker-registry serve CONFIG`, and polls `GET /v2/` with a
deadline; `stop()` sends SIGTERM. A stopped registry can be started again on the same port and
storage (a registry that comes back).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from loadtests.local import LOOPBACK, free_port

BINARY = "docker-registry"
CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {host}
"""


class RegistryMissing(RuntimeError):
    """`docker-registry` is not installed (`make tools`)."""


class LocalRegistry:
    """A `docker-registry serve` process on a loopback port (`host` is `127.0.0.1:PORT`)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.host = f"{LOOPBACK}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, root: Path | None = None, port: int | None = None) -> LocalRegistry:
        """A registry (not started) keeping its storage, config and log under `root`."""
        if shutil.which(BINARY) is None:
            raise RegistryMissing(f"{BINARY} not installed: run `make tools` (Debian package)")
        root = root or Path(tempfile.mkdtemp(prefix="registry-"))
        root.mkdir(parents=True, exist_ok=True)
        return cls(root, port or free_port())

    def start(self, deadline_s: float = 20.0) -> LocalRegistry:
        """Start serving and wait until `GET /v2/` answers 200."""
        config = self.root / "config.yml"
        config.write_text(CONFIG.format(storage=self.root / "storage", host=self.host))
        with (self.root / "registry.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{BINARY} exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.02)  # poll interval inside the deadline loop
        self.stop()
        raise RuntimeError(f"{BINARY} not ready within {deadline_s} s: {self.log()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; the storage stays for a later `start`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def log(self) -> str:
        """The registry's log."""
        path = self.root / "registry.log"
        return path.read_text(errors="replace") if path.exists() else ""
