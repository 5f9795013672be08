"""Benchmark the int8 and fp32 ONNX variants against the FastAPI + transformers baseline.

    python -m benchmarks.bench            # ~5 minutes on 2 cores; writes docs/benchmarks.md + PNGs

One run on one machine, the three servers one after another (never side by side, so they never
share the CPU), each on 127.0.0.1 with the same fine-tuned weights and the same texts:

- cold start: process spawn to the first 200 from POST /predict (median of COLD_RUNS spawns);
- latency at concurrency 1: p50/p95/p99 of sequential single-text requests (keep-alive client);
- throughput at concurrency 1, 8 and 32: k6 closed-loop virtual users for a fixed duration,
  counting only 200 answers;
- peak RSS: the largest summed resident set of the server and its children (/proc, sampled every
  50 ms) or the server's VmHWM, whichever is larger, over its start and all the load.

Every figure is also given as a ratio to the baseline. The load generator (k6) runs on the same two
cores as the server, the same for every server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.local import (
    LOOPBACK,
    ROOT,
    LocalFunction,
    free_port,
    launch,
    status_kib,
    stop,
    tree_rss_kib,
)
from loadtests.run import k6_binary

HERE = Path(__file__).resolve().parent
TEXTS: list[str] = json.loads((HERE / "texts.json").read_text())
CONCURRENCY = (1, 8, 32)


@dataclass(frozen=True)
class Server:
    """How to start one contender."""

    key: str
    title: str
    module: str  # run as `python -m module`
    env: Mapping[str, str]


def servers(
    int8_dir: Path = ROOT / "models/minilm-sentiment-int8",
    fp32_dir: Path = ROOT / "models/minilm-sentiment-fp32",
    checkpoint_dir: Path = ROOT / "models/minilm-sentiment-checkpoint",
) -> list[Server]:
    """The baseline first, then our two variants."""
    function = "functions.sentiment"
    ours = {"HOST": LOOPBACK, "LOG_LEVEL": "warning", "SHUTDOWN_TIMEOUT_SECONDS": "2"}
    return [
        Server(
            "baseline",
            "FastAPI + transformers pipeline (PyTorch fp32)",
            "benchmarks.baseline_server",
            {"CHECKPOINT_DIR": str(checkpoint_dir)},
        ),
        Server(
            "cpu-fp32",
            "KubeSentiment cpu-fp32 (ONNX Runtime)",
            function,
            {**ours, "VARIANT": "cpu-fp32", "MODEL_DIR": str(fp32_dir)},
        ),
        Server(
            "cpu-int8",
            "KubeSentiment cpu-int8 (ONNX Runtime, default)",
            function,
            {**ours, "VARIANT": "cpu-int8", "MODEL_DIR": str(int8_dir)},
        ),
    ]


@dataclass
class Figures:
    """What was measured for one server."""

    cold_start_s: list[float] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    throughput_rps: dict[int, float] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    # (label, P(positive)) for every benchmark text: the same weights must give the same answers.
    predictions: list[tuple[str, float]] = field(default_factory=list)

    @property
    def cold_start(self) -> float:
        return statistics.median(self.cold_start_s)


# --- process and memory -----------------------------------------------------------------------


class RssSampler:
    """Samples the summed RSS of a process tree in a thread; `peak_mib` after `stop()`."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid, self.interval_s, self.peak_kib = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))

    def stop(self) -> float:
        self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmHWM"))
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def start(server: Server, log_dir: Path) -> tuple[LocalFunction, float]:
    """Spawn a server on a free port; (the function, perf_counter() just before the spawn)."""
    port = free_port()
    log_path = log_dir / f"{server.key}-{port}.log"
    spawned = time.perf_counter()
    return launch(server.env, log_path=log_path, port=port, module=server.module), spawned


def first_prediction(process: subprocess.Popen[bytes], url: str, timeout_s: float = 180.0) -> None:
    """Poll POST /predict every 10 ms until a 200 (refused connections and 503 mean not yet)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=10.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                if client.post(f"{url}/predict", json={"text": TEXTS[0]}).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    raise RuntimeError(f"no prediction within {timeout_s} s")


# --- measurements -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_c1(url: str, requests: int) -> dict[str, float]:
    """p50/p95/p99 in ms of sequential single-text requests after a warm-up."""
    samples: list[float] = []
    with httpx.Client(timeout=30.0) as client:
        for i in range(20 + requests):
            t0 = time.perf_counter()
            response = client.post(f"{url}/predict", json={"text": TEXTS[i % len(TEXTS)]})
            elapsed = (time.perf_counter() - t0) * 1000
            response.raise_for_status()
            if i >= 20:
                samples.append(elapsed)
    return {f"p{q}": percentile(samples, q) for q in (50, 95, 99)}


def throughput(url: str, vus: int, duration_s: int, out_dir: Path) -> tuple[float, int]:
    """(successful requests per second, failed requests) of a k6 closed loop with `vus` users."""
    summary = out_dir / f"k6-{vus}-{free_port()}.json"
    subprocess.run(
        [
            k6_binary(), "run", "--no-usage-report", "--quiet", "--no-color",
            f"--address=127.0.0.1:{free_port()}", f"--summary-export={summary}",
            "-e", f"BASE_URL={url}", "-e", f"VUS={vus}", "-e", f"DURATION={duration_s}s",
            str(HERE / "throughput.js"),
        ],
        cwd=HERE, check=False, timeout=duration_s + 60, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    metrics = json.loads(summary.read_text())["metrics"]
    passes = int(metrics["checks"]["passes"])
    fails = int(metrics["checks"]["fails"])
    # k6's own clock for the run: iterations' count over their rate gives the elapsed seconds.
    elapsed = metrics["iterations"]["count"] / metrics["iterations"]["rate"]
    return passes / elapsed, fails


def predictions(url: str) -> list[tuple[str, float]]:
    """Label and P(positive) of every benchmark text, in one batch request."""
    body = httpx.post(f"{url}/predict", json={"texts": TEXTS}, timeout=60.0).json()
    return [(r["label"], float(r["probabilities"]["positive"])) for r in body["results"]]


def parity(results: Mapping[str, Figures]) -> list[str]:
    """Markdown lines comparing each server's predictions with the baseline's."""
    base = results["baseline"].predictions
    if not base:
        return []
    lines = ["## Same weights, same answers", ""]
    for key, figures in results.items():
        if key == "baseline" or not figures.predictions:
            continue
        pairs = list(zip(base, figures.predictions, strict=True))
        agree = sum(a[0] == b[0] for a, b in pairs)
        diff = max(abs(a[1] - b[1]) for a, b in pairs)
        lines.append(
            f"- {key}: {agree}/{len(pairs)} labels equal to the baseline's, "
            f"largest |P(positive) difference| {diff:.4f}."
        )
    return [*lines, ""]


def measure(server: Server, args: argparse.Namespace, log_dir: Path) -> Figures:
    """Every figure for one server."""
    figures = Figures()
    for _ in range(args.cold_runs):
        function, spawned = start(server, log_dir)
        try:
            first_prediction(function.process, function.base_url)
            figures.cold_start_s.append(time.perf_counter() - spawned)
        finally:
            stop(function, timeout_s=20)
        print(f"  {server.key}: cold start {figures.cold_start_s[-1]:.2f} s", flush=True)

    function, _ = start(server, log_dir)
    url = function.base_url
    sampler = RssSampler(function.process.pid)
    try:
        first_prediction(function.process, url)
        figures.predictions = predictions(url)
        figures.latency_ms = latency_c1(url, args.requests)
        print(f"  {server.key}: latency c=1 {figures.latency_ms}", flush=True)
        for vus in CONCURRENCY:
            rps, failed = throughput(url, vus, args.duration, log_dir)
            figures.throughput_rps[vus], figures.failed[vus] = rps, failed
            print(f"  {server.key}: c={vus} {rps:.1f} req/s ({failed} failed)", flush=True)
    finally:
        figures.peak_rss_mib = sampler.stop()
        stop(function, timeout_s=20)
    print(f"  {server.key}: peak RSS {figures.peak_rss_mib:.0f} MiB", flush=True)
    return figures


# --- report -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def token_range(model_dir: Path) -> str:
    """Min-max tokens (special tokens included) of the benchmark texts under the served "
    "tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    counts = [len(tokenizer.encode(text).ids) for text in TEXTS]
    return f"{min(counts)}-{max(counts)}"


def rows(results: Mapping[str, Figures]) -> list[tuple[str, str, list[float], bool]]:
    """(metric, unit, values in server order, higher is better) for the table and charts."""
    order = list(results.values())
    out: list[tuple[str, str, list[float], bool]] = [
        (
            "cold start (spawn to first prediction, median)",
            "s",
            [f.cold_start for f in order],
            False,
        ),
    ]
    for q in ("p50", "p95", "p99"):
        out.append((f"latency {q}, concurrency 1", "ms", [f.latency_ms[q] for f in order], False))
    for c in CONCURRENCY:
        out.append(
            (f"throughput, concurrency {c}", "req/s", [f.throughput_rps[c] for f in order], True)
        )
    out.append(("peak RSS (process tree)", "MiB", [f.peak_rss_mib for f in order], False))
    return out


def markdown(results: Mapping[str, Figures], info: Mapping[str, str], command: str) -> str:
    keys = list(results)
    titles = {s.key: s.title for s in servers()}
    lines = [
        "# Benchmarks",
        "",
        f"Measured with `{command}` on {info['cores']} cores ({info['cpu']}), {info['date']};",
        f"Python {info['python']}, ONNX Runtime {info['onnxruntime']}, PyTorch {info['torch']}, "
        f"transformers {info['transformers']}. Same fine-tuned MiniLM-L6 weights everywhere; "
        f"single-text requests of {info['tokens']} tokens. The k6 load generator shares the two "
        "cores.",
        "",
        "Contenders: " + "; ".join(f"**{k}** = {titles[k]}" for k in keys) + ".",
        "",
        "Ratios are ours / baseline: above 1 is better for throughput, below 1 is better for "
        "time and memory. Cold starts are repeated spawns on a warm page cache, so they measure "
        "imports, model load and warm-up, not an image pull or a cold disk; in a cluster add "
        "pod scheduling and the image pull to every column.",
        "",
        "| metric | "
        + " | ".join(keys)
        + " | "
        + " | ".join(f"{k} / baseline" for k in keys[1:])
        + " |",
        "|---|" + "---:|" * (2 * len(keys) - 1),
    ]
    for metric, unit, values, _ in rows(results):
        base = values[0]
        cells = [f"{v:,.1f} {unit}" if unit != "ms" else f"{v:.2f} {unit}" for v in values]
        ratios = [f"{v / base:.2f}x" if base else "n/a" for v in values[1:]]
        lines.append(f"| {metric} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    failed = {k: f.failed for k, f in results.items() if any(f.failed.values())}
    lines += ["", f"Failed requests during the throughput runs: {failed or 'none'}.", ""]
    lines += parity(results)
    if info.get("parity"):
        lines += [f"(Parity: {info['parity']}.)", ""]
    baseline, int8 = results.get("baseline"), results.get("cpu-int8")
    if baseline and int8:
        cold = baseline.cold_start / int8.cold_start
        tput = int8.throughput_rps[32] / baseline.throughput_rps[32]
        lines += [
            "## Targets",
            "",
            f"- int8 cold start {cold:.1f}x faster than the baseline (target >= 5x): "
            f"{'met' if cold >= 5 else 'missed'}.",
            f"- int8 throughput at concurrency 32 {tput:.1f}x the baseline (target >= 4x): "
            f"{'met' if tput >= 4 else 'missed'}.",
            "",
        ]
    lines += [
        "![cold start](benchmarks/cold_start.png)",
        "![throughput](benchmarks/throughput.png)",
        "![latency](benchmarks/latency.png)",
        "![memory](benchmarks/memory.png)",
        "",
    ]
    return "\n".join(lines)


def charts(results: Mapping[str, Figures], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(results)
    colours = ["#9e9e9e", "#4e79a7", "#f28e2b"]

    def bars(name: str, title: str, unit: str, values: list[float]) -> None:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        drawn = ax.bar(keys, values, color=colours[: len(keys)])
        ax.bar_label(drawn, labels=[f"{v:.1f}" for v in values])
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.margins(y=0.15)  # room for the value labels above the bars
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png")
        plt.close(fig)

    def grouped(
        name: str, title: str, unit: str, groups: list[str], data: list[list[float]]
    ) -> None:
        fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            xs = [g + (i - (len(keys) - 1) / 2) * width for g in range(len(groups))]
            drawn = ax.bar(xs, data[i], width, label=key, color=colours[i])
            ax.bar_label(drawn, labels=[f"{v:.0f}" for v in data[i]], fontsize=7)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png")
        plt.close(fig)

    bars("cold_start", "Cold start: spawn to first prediction (lower is better)", "s",
         [results[k].cold_start for k in keys])  # fmt: skip
    bars("memory", "Peak RSS (lower is better)", "MiB", [results[k].peak_rss_mib for k in keys])
    grouped(
        "throughput", "Throughput, single-text requests (higher is better)", "req/s",
        [f"concurrency {c}" for c in CONCURRENCY],
        [[results[k].throughput_rps[c] for c in CONCURRENCY] for k in keys],
    )  # fmt: skip
    grouped(
        "latency", "Latency at concurrency 1 (lower is better)", "ms",
        ["p50", "p95", "p99"],
        [[results[k].latency_ms[q] for q in ("p50", "p95", "p99")] for k in keys],
    )  # fmt: skip


def load_results(raw: Mapping[str, Any]) -> dict[str, Figures]:
    """Figures back from benchmarks.json (JSON turns int keys and tuples into str and lists)."""
    results: dict[str, Figures] = {}
    for key, data in raw["results"].items():
        figures = Figures(**data)
        figures.throughput_rps = {int(c): v for c, v in data["throughput_rps"].items()}
        figures.failed = {int(c): v for c, v in data["failed"].items()}
        figures.predictions = [(label, p) for label, p in data.get("predictions", [])]
        results[key] = figures
    return results


def write_report(
    results: Mapping[str, Figures], info: Mapping[str, str], command: str, docs: Path
) -> None:
    """docs/benchmarks.md, docs/benchmarks.json and the charts in docs/benchmarks/."""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "benchmarks.md").write_text(markdown(results, info, command))
    raw: dict[str, Any] = {"machine": dict(info), "command": command}
    raw["results"] = {k: asdict(v) for k, v in results.items()}
    (docs / "benchmarks.json").write_text(json.dumps(raw, indent=2) + "\n")
    charts(results, docs / "benchmarks")


def replot(docs: Path) -> int:
    """Rebuild the Markdown and charts from the recorded figures, without measuring."""
    raw = json.loads((docs / "benchmarks.json").read_text())
    write_report(load_results(raw), raw["machine"], raw["command"], docs)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every server, write docs/benchmarks.md, docs/benchmarks.json and the charts."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="latency samples at c=1")
    parser.add_argument("--duration", type=int, default=10, help="seconds per throughput level")
    parser.add_argument("--only", action="append", help="server keys to run (default: all)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--int8-dir", type=Path, default=ROOT / "models/minilm-sentiment-int8")
    parser.add_argument("--fp32-dir", type=Path, default=ROOT / "models/minilm-sentiment-fp32")
    parser.add_argument(
        "--checkpoint", type=Path, default=ROOT / "models/minilm-sentiment-checkpoint"
    )
    parser.add_argument(
        "--replot", action="store_true", help="rewrite the report from docs/benchmarks.json only"
    )
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.docs)

    command = "python -m benchmarks.bench" + (" " + " ".join(argv) if argv else "")
    every = servers(args.int8_dir, args.fp32_dir, args.checkpoint)
    chosen = [s for s in every if not args.only or s.key in args.only]
    results: dict[str, Figures] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for server in chosen:
            print(f"{server.title}", flush=True)
            results[server.key] = measure(server, args, Path(tmp))
    print(f"measured in {time.monotonic() - started:.0f} s")
    if "baseline" not in results:
        print(json.dumps({k: asdict(v) for k, v in results.items()}, indent=2))
        return 0
    info = {**machine(), "tokens": token_range(args.int8_dir)}
    write_report(results, info, command, args.docs)
    print((args.docs / "benchmarks.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
