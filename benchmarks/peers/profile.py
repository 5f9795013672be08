"""Where our int8 function spends a request, per mode: py-spy on the server under load, plus its
own metrics (runs, texts per run, padded vs real tokens, queue wait).

    python -m benchmarks.peers.profile --label after      # docs/profile_after.txt

For each mode (benchmarks/peers/contention.py) one fresh server takes the peer benchmark's texts
at concurrency 1 and then 32 (warm-up, then `--duration` seconds), driven by the same load
generator; py-spy (`pip install py-spy`; run as root) samples the server's Python threads during
each measured phase, and /metrics is read before and after it. Printed per phase: requests/s,
ONNX runs per request, texts per run, padded / real tokens, mean queue wait and run time, the
share of samples per thread (MainThread is the event loop; `onnx` the inference thread;
AnyIO workers tokenize long inputs), where `session.run` was sampled (on the event loop: a run
made inline, with no hand-off), and the functions with most samples of their own.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.peers import contention, procs, texts
from benchmarks.peers.run import first_prediction, load, start
from benchmarks.peers.systems import INT8, by_key
from loadtests.local import ROOT

METRICS = {
    "runs": "kubesentiment_batch_size_count",
    "texts": "kubesentiment_batch_size_sum",
    "wait_s": "kubesentiment_batch_queue_wait_seconds_sum",
    "waits": "kubesentiment_batch_queue_wait_seconds_count",
    "run_s": "kubesentiment_inference_duration_seconds_sum",
    "real": 'kubesentiment_batch_tokens_total{kind="real"',
    "padded": 'kubesentiment_batch_tokens_total{kind="padded"',
}


def scrape(base_url: str) -> dict[str, float]:
    """The counters above from /metrics (summed over label sets; absent ones are missing)."""
    out: dict[str, float] = {}
    for line in httpx.get(base_url + "/metrics", timeout=10).text.splitlines():
        for key, prefix in METRICS.items():
            rest = line[len(prefix) : len(prefix) + 1]
            if line.startswith(prefix) and ("{" in prefix or rest in ("{", " ")):
                out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


FRAME = re.compile(r"^(?P<name>[^ ]+) \((?P<file>[^:]+)")


def stacks(raw: str) -> tuple[collections.Counter[str], collections.Counter[str], int, int]:
    """py-spy raw (collapsed) stacks -> samples per thread, per leaf function, session.run
    samples on the event loop and elsewhere."""
    threads: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    run_loop = run_other = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0]
        threads[thread.split(": ", 1)[-1]] += n  # "thread (TID): NAME"
        leaf = FRAME.match(frames[-1])
        file = leaf["file"].rsplit("/", 2) if leaf else [""]
        leaves[f"{leaf['name']} ({'/'.join(file[-2:])})" if leaf else frames[-1]] += n
        if any(f.startswith("Session.run (") and "onnxruntime" in f for f in frames):
            if "MainThread" in thread:
                run_loop += n
            else:
                run_other += n
    return threads, leaves, run_loop, run_other


def phase(
    base_url: str, pid: int, bodies: list[str], c: int, args: argparse.Namespace, tmp: Path
) -> list[str]:
    """One measured phase at concurrency `c` under py-spy; its summary lines."""
    system = by_key(["kubesentiment-int8"])[0]
    warm = {"concurrency": c, "warmup_s": 0.0, "duration_s": args.warmup}
    load(base_url, system, bodies, [warm], tmp)
    before = scrape(base_url)
    raw = tmp / f"spy-{c}-{time.monotonic_ns()}.txt"
    spy = subprocess.Popen(
        [args.py_spy, "record", "--pid", str(pid), "--duration", str(int(args.duration)),
         "--rate", "200", "--format", "raw", "--threads", "--nonblocking", "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)  # py-spy attached before the measured window opens
    measured = {"concurrency": c, "warmup_s": 0.0, "duration_s": args.duration - 1.0}
    (result,) = load(base_url, system, bodies, [measured], tmp)
    spy.wait(timeout=args.duration + 30)
    delta = {k: v - before.get(k, 0.0) for k, v in scrape(base_url).items()}
    requests = max(1, result["ok_total"])
    runs = max(1.0, delta.get("runs", 0.0))
    threads, leaves, run_loop, run_other = stacks(raw.read_text() if raw.exists() else "")
    total = max(1, sum(threads.values()))
    padded = delta.get("padded")
    lines = [
        f"c={c}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms; "
        f"ONNX runs per request {delta.get('runs', 0) / requests:.2f}, texts per run "
        f"{delta.get('texts', 0) / runs:.2f}, padded / real tokens "
        + (f"{padded / delta['real']:.2f}" if padded and delta.get("real") else "not measured")
        + f", mean queue wait {1000 * delta.get('wait_s', 0) / max(1, delta.get('waits', 1)):.2f}"
        f" ms, mean run {1000 * delta.get('run_s', 0) / runs:.2f} ms",
        f"  py-spy: {total} samples of Python threads; per thread: "
        + ", ".join(f"{k} {v / total:.0%}" for k, v in threads.most_common(5)),
        f"  session.run sampled on the event loop {run_loop}, on other threads {run_other} "
        "(event loop = inline runs, no hand-off)",
        "  top functions (own samples): "
        + "; ".join(f"{k} {v / total:.0%}" for k, v in leaves.most_common(8)),
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers.profile")
    p.add_argument("--label", required=True, help="docs/profile_<label>.txt")
    p.add_argument("--modes", nargs="+", default=["quiet", "contended"])
    p.add_argument("--duration", type=float, default=12.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--note", default="", help="a line for the header (what code was profiled)")
    args = p.parse_args(argv)
    sample = [t for _, t in texts.load(INT8, 1000)]
    system = by_key(["kubesentiment-int8"])[0]
    bodies = [json.dumps(system.body(t)) for t in sample]
    out = [
        f"# py-spy and metrics of kubesentiment-int8 under load ({args.label})",
        f"# python -m benchmarks.peers.profile --label {args.label} --duration {args.duration:g} "
        f"--modes {' '.join(args.modes)}",
        *(f"# {args.note}" for _ in [0] if args.note),
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
        f"{os.getloadavg()[0]:.2f} at start",
    ]
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        for name in args.modes:
            mode = contention.MODES[name]
            out += ["", f"## {name}: {mode.description}"]
            function = start(system, Path(tmp))
            try:
                first_prediction(function, system, sample[0], 120)
                with contention.background(mode):
                    for c in (1, 32):
                        out += phase(
                            function.base_url, function.process.pid, bodies, c, args, Path(tmp)
                        )
                        print("\n".join(out[-4:]), flush=True)
            finally:
                procs.stop(function)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile_{args.label}.txt").write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
