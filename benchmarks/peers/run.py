"""`make bench-peers`: every system on the same int8 ONNX model, measured the same way.

    python -m benchmarks.peers.run            # full run (~30 min): docs/peers.json, docs/peers.md
    python -m benchmarks.peers.run --quick    # one pass, short phases: build/peers/quick/

Two modes (benchmarks/peers/contention.py): quiet, and contended under a fixed background load
that models a neighbour pod. One server at a time on 127.0.0.1, in rounds: every pass measures
every system in every mode, and odd passes go in reverse order (modes and systems), so drift on
the machine does not favour whoever runs first. Cold starts and the parity check are measured in
the first mode only. Per system and pass:
cold start (spawn to first correct prediction, `--cold-runs` fresh processes); the last of them
stays up for the load phases: warm-up, then a fixed duration at concurrency 1 and each of
`--levels`, driven by benchmarks.peers.loadgen in its own process. Peak RSS is the largest summed
RSS of the server's processes over its life; CPU seconds per 1,000 predictions is their CPU time
across the loaded phases over their successful answers. In the first pass each server also
answers `--check` texts one by one, compared with the in-process reference. Before any server,
the in-process ceiling is measured and gives the peers' batch size (see ceiling.py); the peers'
virtualenvs are created on first use (several minutes, reported apart from the run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.peers import ceiling, contention, procs, report, texts, venvs
from benchmarks.peers.engine import Engine
from benchmarks.peers.systems import INT8, System, by_key
from loadtests.local import ROOT, LocalFunction
from shared.progress import Progress


def start(system: System, log_dir: Path, batch: int = 32) -> LocalFunction:
    """Spawn the system's server on a free port (peers batch at most `batch` texts)."""
    env = {"MODEL_DIR": str(system.model), **system.env}
    if not system.ours:
        env["PEER_MAX_BATCH"] = str(batch)
    if system.venv is None:
        return procs.spawn((), env, log_dir, system.key, module=system.module)
    python = venvs.python(system.venv)
    if system.argv:
        argv = [str(python.parent / system.argv[0]), *system.argv[1:]]
    else:
        argv = [str(python), "-m", system.module]
    return procs.spawn(argv, env, log_dir, system.key)


def first_prediction(function: LocalFunction, system: System, text: str, timeout_s: float) -> float:
    """Poll until the server answers `text` correctly; seconds since the spawn."""
    deadline = time.monotonic() + timeout_s
    url = function.base_url + system.path
    with httpx.Client(timeout=10.0) as client:
        while time.monotonic() < deadline:
            if function.process.poll() is not None:
                raise RuntimeError(
                    f"exited with {function.process.returncode}:\n{function.log_tail()}"
                )
            try:
                response = client.post(url, json=system.body(text))
                if response.status_code == 200:
                    system.parse(response.json())
                    return time.time() - function.spawned_at
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    raise RuntimeError(f"no prediction within {timeout_s:.0f} s:\n{function.log_tail()}")


def parity(url: str, system: System, sample: list[str]) -> dict[str, Any]:
    """The server's answers for `sample`, one request each, against the in-process reference."""
    engine = Engine(system.model)
    agree, worst = 0, 0.0
    positive = engine.labels.index("positive")
    with httpx.Client(timeout=30.0) as client:
        for text in sample:
            label, p = system.parse(client.post(url + system.path, json=system.body(text)).json())
            ref = engine.probabilities([text])[0]
            agree += label == engine.labels[int(ref.argmax())]
            worst = max(worst, abs(p - float(ref[positive])))
    return {"n": len(sample), "labels_equal": agree, "max_abs_dp_positive": round(worst, 6)}


def load(
    url: str, system: System, bodies: list[str], phases: list[dict[str, float]], tmp: Path
) -> list[dict[str, Any]]:
    """Run benchmarks.peers.loadgen in its own process; one result per phase."""
    spec = tmp / f"spec-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps({"url": url + system.path, "bodies": bodies, "phases": phases}))
    budget = sum(p["warmup_s"] + p["duration_s"] for p in phases) + 120
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers.loadgen", str(spec)],
        cwd=ROOT, capture_output=True, text=True, timeout=budget, check=True,
    )  # fmt: skip
    return list(json.loads(done.stdout))


def measure(
    system: System, args: argparse.Namespace, sample: list[str], tmp: Path, *, check: bool,
    cold_runs: int,
) -> dict[str, Any]:  # fmt: skip
    """One pass over one system: cold starts, then the last of those servers takes the load.

    Each concurrency level is its own load-generator run, so the server's CPU time is read
    around each level (`cpu_s_per_1k_c{n}`) as well as across all of them (`cpu_s_per_1k`)."""
    out: dict[str, Any] = {"cold_start_s": []}
    for _ in range(cold_runs - 1):
        function = start(system, tmp, args.peer_batch)
        try:
            out["cold_start_s"].append(first_prediction(function, system, sample[0], 300))
        finally:
            procs.stop(function)
    function = start(system, tmp, args.peer_batch)
    rss = procs.PeakRss(function.process.pid)
    try:
        out["cold_start_s"].append(first_prediction(function, system, sample[0], 300))
        if check:
            out["parity"] = parity(function.base_url, system, sample[: args.check])
        bodies = [json.dumps(system.body(t)) for t in sample]
        c1 = {"concurrency": 1, "warmup_s": args.warmup, "duration_s": args.duration}
        out["c1"] = load(function.base_url, system, bodies, [c1], tmp)[0]
        out["levels"], cpu, answered = [], 0.0, 0
        for c in args.levels:
            cpu0 = procs.cpu_seconds(function.process.pid)
            (level,) = load(function.base_url, system, bodies, [{**c1, "concurrency": c}], tmp)
            spent = procs.cpu_seconds(function.process.pid) - cpu0
            level["cpu_s_per_1k"] = spent / level["ok_total"] * 1000 if level["ok_total"] else None
            out["levels"].append(level)
            cpu, answered = cpu + spent, answered + level["ok_total"]
        if function.process.poll() is not None:
            raise RuntimeError(
                f"exited with {function.process.returncode} under load:\n{function.log_tail()}"
            )
        out["cpu_s_per_1k"] = cpu / answered * 1000 if answered else None
    finally:
        out["rss_mib"] = rss.stop()
        procs.stop(function)
    return out


def machine() -> dict[str, Any]:
    """Where and with what the run happened."""
    import onnxruntime

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "unknown",
    )  # fmt: skip
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_at_start": os.getloadavg()[0],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.run", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="1 pass, 1 cold start, 2 s phases, c=1/32/128"
    )
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--cold-runs", type=int, default=3)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each measured phase")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per phase")
    p.add_argument("--levels", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--texts", type=int, default=1000, help="texts drawn from the data packages")
    p.add_argument("--check", type=int, default=60, help="texts checked against the reference")
    p.add_argument("--only", nargs="+", help="system keys (default: all)")
    p.add_argument(
        "--quick-ceiling", action="store_true", help="the ceiling on 256 texts, not 1,024"
    )
    p.add_argument(
        "--modes", nargs="+", choices=sorted(contention.MODES), default=["quiet", "contended"],
        help="measuring conditions, in this order (benchmarks/peers/contention.py)",
    )  # fmt: skip
    p.add_argument(
        "--peer-batch", type=int, default=0, help="peers' max batch (0: the ceiling's best padded)"
    )
    p.add_argument(
        "--out", type=Path, help="results folder (default docs/, quick: build/peers/quick)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.passes, args.cold_runs, args.warmup, args.duration = 1, 1, 1.0, 3.0
        args.levels = [32, 128]
    args.out = args.out or (ROOT / "build" / "peers" / "quick" if args.quick else ROOT / "docs")
    return args


ERRORS = (RuntimeError, subprocess.SubprocessError, httpx.HTTPError, KeyError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    info = machine()
    pairs = texts.load(INT8, args.texts)
    dist = texts.distribution(pairs, INT8)
    print("texts (tokens per text, special tokens included):\n" + texts.describe(dist), flush=True)
    sample = [t for _, t in pairs]
    modes = [contention.MODES[m] for m in args.modes]
    skipped = {m.name: why for m in modes if (why := m.available()) is not None}
    modes = [m for m in modes if m.name not in skipped]
    ceilings: dict[str, dict[str, Any]] = {}
    for mode in modes:
        with contention.background(mode):
            ceilings[mode.name] = ceiling.measure(
                INT8, sample, quick=args.quick or args.quick_ceiling
            )
        print(f"{mode.name}: in-process ceiling, texts/s: {ceilings[mode.name]}", flush=True)
    # The peers' batch size comes from the quiet ceiling, the same in every mode.
    first = ceilings[modes[0].name] if modes else {"best_padded_batch": 32}
    args.peer_batch = args.peer_batch or first["best_padded_batch"]
    systems = by_key(args.only)
    unavailable: dict[str, str] = {}
    for peer in sorted({s.venv for s in systems if s.venv}):
        if (why := venvs.ensure(peer)) is not None:
            unavailable.update({s.key: why for s in systems if s.venv == peer})
    info["setup_seconds"] = round(time.monotonic() - started)
    print(f"venvs ready after {info['setup_seconds']} s", flush=True)
    failures: dict[str, dict[str, str]] = {m.name: {} for m in modes}
    passes: dict[str, dict[str, list[dict[str, Any]]]] = {
        m.name: {s.key: [] for s in systems if s.key not in unavailable} for m in modes
    }
    order = [s for s in systems if s.key not in unavailable]
    measured = Progress(args.passes * len(modes) * len(order), "peers", unit="run")
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp, measured as shown:
        for n in range(args.passes):
            # Modes and systems alternate: odd passes run both lists in reverse.
            for mode in modes if n % 2 == 0 else modes[::-1]:
                for system in order if n % 2 == 0 else order[::-1]:
                    print(f"pass {n + 1}, {mode.name}: {system.key} ...", flush=True)
                    # Cold starts and parity are measured once, in the first mode's passes.
                    quiet = mode is modes[0]
                    try:
                        with contention.background(mode):
                            result = measure(
                                system, args, sample, Path(tmp), check=n == 0 and quiet,
                                cold_runs=args.cold_runs if quiet else 1,
                            )  # fmt: skip
                    except ERRORS as e:
                        why = f"pass {n + 1}: {type(e).__name__}: {str(e)[-600:]}"
                        failures[mode.name][system.key] = why
                        print(f"  {system.key} failed: {why}", flush=True)
                        shown.update(1, f"pass {n + 1}, {mode.name}: {system.key} failed")
                        continue
                    passes[mode.name][system.key].append(result)
                    print("  " + report.one_line(result), flush=True)
                    shown.update(1, f"pass {n + 1}, {mode.name}: {system.key}")
    info["seconds"] = round(time.monotonic() - started)
    command = "python -m benchmarks.peers.run" + (" " + " ".join(argv) if argv else "")
    per_mode = {
        m.name: report.build_mode(
            m, args, systems, passes[m.name], failures[m.name], ceilings[m.name]
        )
        for m in modes
    }
    results = report.build(info, dist, args, per_mode, unavailable, skipped, command)
    report.write(results, args.out)
    print((args.out / "peers.md").read_text())
    print(f"total {info['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
