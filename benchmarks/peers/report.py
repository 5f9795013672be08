"""docs/peers.json, docs/peers.md and the charts, from the measured passes, one part per mode.

peers.json keeps `"modes": {"quiet": {...}, "contended": {...}}`, each with the mode's load, its
systems' figures, its ceiling and what was not measured in it (`build_mode`); issue 26's goals
and what could flatter us are judged per mode (goals.py).

Per system the figures are medians over passes (cold start: over every cold run; peak RSS: the
largest of the passes). `targets()` evaluates the issue's goals for our int8 function against
the best peer of the same run; an A/A line shows how far two identical servers differ.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.peers import goals
from benchmarks.peers.contention import Mode
from benchmarks.peers.goals import OURS, TWIN
from benchmarks.peers.systems import System

COLUMNS = (
    ("cold_start_s", "cold start s", "{:.2f}"),
    ("p50_ms_c1", "p50 ms c1", "{:.2f}"),
    ("p99_ms_c1", "p99 ms c1", "{:.2f}"),
    ("rps_c8", "req/s c8", "{:,.0f}"),
    ("rps_c32", "req/s c32", "{:,.0f}"),
    ("rps_c128", "req/s c128", "{:,.0f}"),
    ("p99_ms_c32", "p99 ms c32", "{:.1f}"),
    ("rss_mib", "peak RSS MiB", "{:,.0f}"),
    ("cpu_s_per_1k", "CPU s / 1k", "{:.2f}"),
)


def one_line(result: Mapping[str, Any]) -> str:
    """A console summary of one pass."""
    levels = ", ".join(
        f"c{r['concurrency']} {r['rps']:.0f}/s p99 {r['p99_ms']:.1f} ms"
        + (f" CPU {r['cpu_s_per_1k']:.2f} s/1k" if r.get("cpu_s_per_1k") else "")
        + (f" errors {r['errors']}" if r["errors"] else "")
        for r in result["levels"]
    )
    cold = ", ".join(f"{s:.2f}" for s in result["cold_start_s"])
    c1 = result["c1"]
    return (
        f"cold {cold} s; c1 p50 {c1['p50_ms']:.2f} p99 {c1['p99_ms']:.2f} ms; {levels}; "
        f"RSS {result['rss_mib']:.0f} MiB; CPU {result['cpu_s_per_1k'] or 0:.2f} s/1k; "
        f"parity {result.get('parity', '-')}"
    )


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(system: System, runs: Sequence[Mapping[str, Any]], batch: int) -> dict[str, Any]:
    """One system's figures over its passes."""
    config = system.config.format(batch=batch)
    out: dict[str, Any] = {"title": system.title, "config": config, "passes": len(runs)}
    out["cold_start_s"] = _median([s for r in runs for s in r["cold_start_s"]])
    out["p50_ms_c1"] = _median([r["c1"]["p50_ms"] for r in runs])
    out["p99_ms_c1"] = _median([r["c1"]["p99_ms"] for r in runs])
    out["rps_c1"] = _median([r["c1"]["rps"] for r in runs])
    levels = sorted({lv["concurrency"] for r in runs for lv in r["levels"]})
    for c in levels:
        at = [lv for r in runs for lv in r["levels"] if lv["concurrency"] == c]
        out[f"rps_c{c}"] = _median([lv["rps"] for lv in at])
        out[f"p50_ms_c{c}"] = _median([lv["p50_ms"] for lv in at])
        out[f"p99_ms_c{c}"] = _median([lv["p99_ms"] for lv in at])
        errors: dict[str, int] = {}
        for lv in at:
            for kind, n in lv["errors"].items():
                errors[kind] = errors.get(kind, 0) + n
        if errors:
            out.setdefault("errors", {})[f"c{c}"] = errors
        cpu = _median([lv.get("cpu_s_per_1k") for lv in at])
        if cpu is not None:
            out[f"cpu_s_per_1k_c{c}"] = cpu
        if c == 32:
            out["cdf_ms_c32"] = [round(q, 3) for q in at[-1]["quantiles_ms"]]
    out["rss_mib"] = max(r["rss_mib"] for r in runs)
    out["cpu_s_per_1k"] = _median([r["cpu_s_per_1k"] for r in runs])
    out["client_cpu_ms_per_request"] = _median(
        [lv["client_cpu_ms_per_request"] for r in runs for lv in r["levels"]]
    )
    if any("parity" in r for r in runs):
        out["parity"] = next(r["parity"] for r in runs if "parity" in r)
    return {k: _round(k, v) for k, v in out.items()}


def _round(key: str, value: Any) -> Any:
    if not isinstance(value, float):
        return value
    if key.startswith("rps") or key == "rss_mib":
        return round(value, 1)
    if key.endswith("_s") or key.startswith("cpu") or key.startswith("client"):
        return round(value, 3)
    return round(value, 2)


def targets(systems: Mapping[str, Mapping[str, Any]], ceiling: float) -> list[tuple[str, bool]]:
    """The issue's goals for our int8 function against the best peer of the run."""
    ours = systems.get(OURS)
    peers = {k: v for k, v in systems.items() if not k.startswith("kubesentiment")}
    if not ours or not peers:
        return []

    def best(key: str, high: bool) -> tuple[str, float] | None:
        values = [(k, float(v[key])) for k, v in peers.items() if v.get(key) is not None]
        return (max if high else min)(values, key=lambda kv: kv[1]) if values else None

    out = []
    for c in (32, 128):
        if (b := best(f"rps_c{c}", True)) and ours.get(f"rps_c{c}") and b[1] > 0:
            ratio = ours[f"rps_c{c}"] / b[1]
            out.append(
                (
                    f"throughput c{c}: {ratio:.2f}x the best peer ({b[0]}), goal >= 1.5x",
                    ratio >= 1.5,
                )
            )
    if b := best("p50_ms_c1", False):
        out.append(
            (
                f"p50 c1 {ours['p50_ms_c1']:.2f} ms vs best peer {b[1]:.2f} ms ({b[0]}), goal <=",
                ours["p50_ms_c1"] <= b[1],
            )
        )
    if b := best("cold_start_s", False):
        cold = ours["cold_start_s"]
        ok = cold <= 0.5 and cold <= b[1] / 3
        out.append(
            (
                f"cold start {cold:.2f} s vs best peer {b[1]:.2f} s ({b[0]}), "
                "goal <= 0.5 s and <= 1/3",
                ok,
            )
        )
    if b := best("rss_mib", False):
        out.append(
            (
                f"peak RSS {ours['rss_mib']:.0f} MiB vs smallest peer {b[1]:.0f} MiB "
                f"({b[0]}), goal <=",
                ours["rss_mib"] <= b[1],
            )
        )
    if ours.get("rps_c32") and ceiling:
        share = ours["rps_c32"] / ceiling
        out.append(
            (
                f"c32 throughput {share:.0%} of the in-process ceiling "
                f"({ceiling:,.0f} texts/s), goal >= 75 %",
                share >= 0.75,
            )
        )
    return out


def build_mode(
    mode: Mode, args: argparse.Namespace, systems: Sequence[System],
    passes: Mapping[str, Sequence[Mapping[str, Any]]], failures: Mapping[str, str],
    ceiling: Mapping[str, float],
) -> dict[str, Any]:  # fmt: skip
    """One mode's part of peers.json: the load, each system's figures and the ceiling.

    A system with no successful pass in the mode is `unavailable` there, with why; one that
    failed in one pass only keeps its other passes and is listed under `failed_passes`."""
    return {
        "load": mode.description,
        "load_command": " ".join(mode.argv) or None,
        "systems": {
            s.key: summarise(s, passes[s.key], args.peer_batch)
            for s in systems
            if passes.get(s.key)
        },
        "ceiling_texts_per_s": ceiling["best"],
        "ceiling": dict(ceiling),
        "unavailable": {k: why for k, why in failures.items() if not passes.get(k)},
        "failed_passes": {k: why for k, why in failures.items() if passes.get(k)},
    }


def build(
    info: Mapping[str, Any], dist: Mapping[str, Any], args: argparse.Namespace,
    modes: Mapping[str, Mapping[str, Any]], unavailable: Mapping[str, str],
    skipped: Mapping[str, str], command: str,
) -> dict[str, Any]:  # fmt: skip
    """The peers.json document: the run, then one part per mode (build_mode)."""
    return {
        "machine": dict(info),
        "command": command,
        "mode": "quick" if args.quick else "full",
        "settings": {
            "passes": args.passes,
            "cold_runs": args.cold_runs,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "levels": [1, *args.levels],
            "peer_max_batch": args.peer_batch,
            "modes": list(modes),
        },
        "texts": dict(dist),
        "modes": {name: dict(m) for name, m in modes.items()},
        "unavailable": dict(unavailable),
        "modes_not_run": dict(skipped),
    }


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table(systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The results table as Markdown lines (docs/peers.md and the README)."""
    lines = ["| system | " + " | ".join(c[1] for c in COLUMNS) + " |"]
    lines.append("|---|" + "---:|" * len(COLUMNS))
    for key, v in systems.items():
        lines.append(f"| {key} | " + " | ".join(_cell(v.get(c[0]), c[2]) for c in COLUMNS) + " |")
    return lines


def _mode_lines(name: str, mode: Mapping[str, Any], batch: int) -> list[str]:
    systems, ceiling = mode["systems"], mode["ceiling"]
    lines = [f"## {name.capitalize()} mode", "", f"Background load: {mode['load']}.", ""]
    lines += [*table(systems), ""]
    lines += [
        "In-process ceiling in this mode (tokenize + `session.run`, no HTTP, texts/s): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in ceiling.items() if not k.startswith("best"))
        + f"; best {ceiling['best']:,.0f}. The peers batch at most {batch} texts (the fastest "
        "padded size of the quiet ceiling; they pad whatever arrives together).",
        "",
    ]
    if OURS in systems and TWIN in systems:
        a, b = systems[OURS], systems[TWIN]
        ratios = [f"{c[1]} {a[c[0]] / b[c[0]]:.2f}" for c in COLUMNS if a.get(c[0]) and b.get(c[0])]
        lines += ["A/A (two identical int8 servers, first / second): " + ", ".join(ratios) + "."]
        lines.append("")
    cpu = {
        k: "/".join(_cell(v.get(f"cpu_s_per_1k_c{c}"), "{:.2f}") for c in (8, 32, 128))
        for k, v in systems.items()
    }
    lines += [f"CPU s / 1k per level (c8/c32/c128): {cpu}.", ""]
    if goals_met := goals.targets(systems):
        lines += [f"### Targets in the {name} mode (issue 26)", ""]
        lines += [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in goals_met]
        lines.append("")
    lines += [f"### What could flatter us in the {name} mode", ""]
    lines += [f"- {text}" for text in goals.flattery(name, mode)]
    lines.append("")
    errors = {k: v["errors"] for k, v in systems.items() if v.get("errors")}
    lines += [f"Failed requests (status or error: count): {errors or 'none'}.", ""]
    client = {k: v.get("client_cpu_ms_per_request") for k, v in systems.items()}
    lines += [f"Load generator CPU per request, ms: {client}.", ""]
    for title, key in (("Not measured", "unavailable"), ("Failed passes", "failed_passes")):
        if mode.get(key):
            lines += [f"{title} in this mode:", ""]
            lines += [f"- {k}: {why}" for k, why in mode[key].items()]
            lines.append("")
    lines += [f"![throughput, {name}](peers/throughput_{name}.png)",
              f"![latency CDF, {name}](peers/latency_cdf_{name}.png)", ""]  # fmt: skip
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    """docs/peers.md."""
    m, s, modes = results["machine"], results["settings"], results["modes"]
    lines = [
        "# KubeSentiment against peer serving frameworks",
        "",
        f"Generated by `{results['command']}` ({results['mode']} run: {s['passes']} pass(es) "
        f"over the modes {', '.join(modes)}, {s['cold_runs']} cold start(s) per pass in the "
        f"first mode, {s['warmup_s']} s warm-up and {s['duration_s']} s per level) on "
        f"{m['cores']} cores ({m['cpu']}), {m['date']}, load average "
        f"{m['loadavg_at_start']:.2f} at start; ONNX Runtime {m['onnxruntime']}. Every server "
        "serves the same int8 ONNX file and tokenizer with the same session options, except the "
        "FastAPI baselines (PyTorch fp32, same fine-tuned weights). One text per request; the "
        "load generator shares the cores. Modes and systems alternate: every pass measures every "
        "system in every mode, odd passes in reverse order.",
        "",
    ]
    for name, mode in modes.items():
        lines += _mode_lines(name, mode, s["peer_max_batch"])
    t = results["texts"]
    lines += ["## Texts", "", "Token counts per text (special tokens included):", ""]
    lines += [
        "| kind | source | n | min | p50 | p90 | max | mean |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("short", "medium", "long", "all"):
        if kind in t:
            k = t[kind]
            src = t["sources"].get(kind, "")
            cells = [src, *(str(k[f]) for f in ("n", "min", "p50", "p90", "max", "mean"))]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    every = {k: v for mode in modes.values() for k, v in mode["systems"].items()}
    lines += ["", "## Configuration of each system", ""]
    lines += [f"- **{k}** ({v['title']}): {v['config']}." for k, v in every.items()]
    lines += ["", "## Same model, same answers", ""]
    for mode in modes.values():
        for key, v in mode["systems"].items():
            if p := v.get("parity"):
                lines.append(
                    f"- {key}: {p['labels_equal']}/{p['n']} labels equal to the in-process "
                    f"reference, largest |P(positive) difference| {p['max_abs_dp_positive']:.6f}."
                )
    lines.append("")
    if results["unavailable"] or results.get("modes_not_run"):
        lines += ["## Not measured", ""]
        lines += [f"- {k}: {why}" for k, why in results["unavailable"].items()]
        lines += [f"- the {k} mode: {why}" for k, why in results.get("modes_not_run", {}).items()]
        lines.append("")
    lines += [
        f"The run took {m.get('seconds', 0)} s, {m.get('setup_seconds', 0)} s of it for the "
        "texts, the ceilings and the peers' virtualenvs.",
        "",
    ]
    return "\n".join(lines)


def charts(results: Mapping[str, Any], mode: str, out: Path) -> None:
    """Throughput against concurrency and the latency CDF at concurrency 32, for one mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    levels = results["settings"]["levels"]
    # 12+ systems: tab20 keeps every line's colour distinct (the default cycle has 10).
    plt.rcParams["axes.prop_cycle"] = plt.cycler(color=plt.get_cmap("tab20").colors)
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    for key, v in results["modes"][mode]["systems"].items():
        xs = [c for c in levels if v.get(f"rps_c{c}") is not None]
        ax.plot(
            xs, [v[f"rps_c{c}"] for c in xs], marker="o", label=key, lw=2.5 if key == OURS else 1.2
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set(
        title=f"Throughput, one text per request, {mode} (higher is better)",
        xlabel="concurrency",
        ylabel="req/s",
    )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out / f"throughput_{mode}.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    for key, v in results["modes"][mode]["systems"].items():
        q = v.get("cdf_ms_c32") or []
        if q:
            ax.plot(
                q,
                [i / (len(q) - 1) for i in range(len(q))],
                label=key,
                lw=2.5 if key == OURS else 1.2,
            )
    ax.set_xscale("log")
    ax.set(
        title=f"Latency CDF at concurrency 32, {mode}", xlabel="ms (log)",
        ylabel="fraction of requests",
    )  # fmt: skip
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out / f"latency_cdf_{mode}.png")
    plt.close(fig)


def write(results: Mapping[str, Any], out: Path) -> None:
    """peers.json, peers.md and peers/*.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "peers.md").write_text(markdown(results))
    for mode in results["modes"]:
        charts(results, mode, out / "peers")
