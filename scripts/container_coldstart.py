"""Cold start of the serving container: `docker run` to the first 200 from `/predict`.

    python3 scripts/container_coldstart.py IMAGE --runs 5 --out docs/coldstart.json

Called by scripts/build_image.sh (`make image`) with the image it built and DOCKER_HOST set.
Each run starts the image as a scale-from-zero pod would meet it (read-only root filesystem, a
tmpfs /tmp, no capabilities, its own non-root user), posts a prediction every 10 ms until one
answers 200 (connection refused and 503 count as "not yet"), reads the function's own figure
(process start to ready, its "ready" log line) and removes the container. The runs follow each
other, so the image's files are in the page cache after the first: a node that pulled the image
long ago meets the later runs, a node that just pulled it meets the first.

`--out` updates only the `container` object of the JSON file (the process figures beside it are
`make coldstart`'s). Standard library only: it runs with the system Python, outside the venv.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def app_cold_start(container: str) -> float | None:
    """The function's own cold-start figure from its JSON "ready" log line."""
    logs = subprocess.run(
        ["docker", "logs", container], capture_output=True, text=True, check=False
    )
    for line in (logs.stdout + logs.stderr).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "cold_start_seconds" in record:
            return float(record["cold_start_seconds"])
    return None


def one_run(image: str, deadline_s: float) -> tuple[float, float | None]:
    """(seconds from `docker run` to the first 200 from /predict, the function's own figure)."""
    port = free_port()
    body = json.dumps({"text": "A cold start worth measuring."}).encode()
    url = f"http://{LOOPBACK}:{port}/predict"
    started = time.perf_counter()
    container = subprocess.run(
        ["docker", "run", "-d", "--network", "host", "--read-only", "--tmpfs", "/tmp",  # noqa: S108
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         "-e", f"PORT={port}", "-e", f"HOST={LOOPBACK}", "-e", "LOG_LEVEL=info", image],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        while time.perf_counter() - started < deadline_s:
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            try:
                # The URL is built above from the loopback address.
                with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                    if response.status == 200:
                        return time.perf_counter() - started, app_cold_start(container)
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.01)
        raise SystemExit(f"no 200 from /predict within {deadline_s} s")
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/container_coldstart.py")
    parser.add_argument("image")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--size-bytes", type=int, help="the image's size (docker inspect)")
    parser.add_argument("--storage-driver", default="", help="dockerd's, recorded")
    parser.add_argument("--out", type=Path, help="JSON file whose `container` object to set")
    args = parser.parse_args(argv)
    runs = [one_run(args.image, args.deadline) for _ in range(args.runs)]
    seconds = [round(s, 3) for s, _ in runs]
    own = [a for _, a in runs if a is not None]
    result = {
        "command": "make image",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "image": args.image,
        "image_mib": round(args.size_bytes / 2**20, 1) if args.size_bytes else None,
        "runs_s": seconds,
        "median_s": round(statistics.median(seconds), 3),
        "process_ready_median_s": round(statistics.median(own), 3) if own else None,
        "storage_driver": args.storage_driver,
        "loadavg_at_end": round(os.getloadavg()[0], 2),
        "measured": "docker run -> first 200 from /predict (read-only root, tmpfs /tmp, "
        "no capabilities, non-root); process_ready: the function's own start -> ready",
    }
    print(
        f"container cold start: median {result['median_s']} s over {args.runs} runs "
        f"(docker run -> first 200 from /predict; runs {seconds}); the function's own "
        f"start -> ready: median {result['process_ready_median_s']} s"
    )
    if args.out is not None:
        data = json.loads(args.out.read_text()) if args.out.exists() else {}
        data["container"] = result
        args.out.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
