"""Capacity planner: per CPU variant and core count, the most throughput within a latency SLO.

    python -m benchmarks.capacity            # full: docs/capacity.json + docs/capacity.md
    python -m benchmarks.capacity --quick    # short levels, same outputs (marked "quick")

For each CPU variant served by a Knative Service in knative/base (int8, fp32, and accurate-int8
once `make accurate` has built its model) and each core count (1 and 2), our function is
started with its CPU limited the way a pod's is: a CFS quota
(cgroup v1 `cpu.cfs_quota_us` or v2 `cpu.max`, as the kubelet sets from `limits.cpu`) when this
machine lets us create a cgroup, else CPU affinity; ORT_INTRA_OP_THREADS equals the cores, as in
the manifests. The benchmark's text mix is sent at increasing concurrency by the peer benchmark's
load generator (which runs outside the limit). From the levels whose p99 meets the SLO
(benchmarks/capacity-settings.json):

- X*, the highest throughput, and R*, the mean latency there: `containerConcurrency` =
  ceil(X* x R*) (Little's law: requests in flight = throughput x time in the system);
- the knee, the lowest level reaching 90 % of X*: `autoscaling.knative.dev/target` =
  ceil(X_knee x R_knee), the in-flight load where the pod is already nearly saturated (the KPA
  scales out at `target_utilization` of it);
- pods for the peak rate at that utilisation, and the cost per million predictions from the
  pod's CPU and memory limits and the price file (at full load and at the target utilisation).

tests/test_capacity_manifests.py checks that the manifests carry the committed plan's values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from benchmarks.peers import procs, texts
from benchmarks.peers.run import first_prediction, load
from benchmarks.peers.systems import System, all_systems
from loadtests.local import ROOT, LocalFunction
from shared.progress import Progress

SETTINGS = Path(__file__).with_name("capacity-settings.json")
KNATIVE = ROOT / "knative" / "base"
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")


def services(knative: Path = KNATIVE) -> dict[str, dict[str, Any]]:
    """CPU variants' Knative Services: variant -> {file, model_dir, cpu, memory_gib, ...}."""
    out = {}
    for path in sorted(knative.glob("service-cpu-*.yaml")):
        doc = yaml.safe_load(path.read_text())
        spec = doc["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        limits = container["resources"]["limits"]
        out[env["VARIANT"]] = {
            "file": str(path.relative_to(ROOT)),
            "model_dir": env["MODEL_DIR"],
            "cpu": float(limits["cpu"]),
            "memory_gib": gib(str(limits["memory"])),
            "container_concurrency": spec["containerConcurrency"],
            "target": int(doc["spec"]["template"]["metadata"]["annotations"][
                "autoscaling.knative.dev/target"]),
        }  # fmt: skip
    return out


def gib(quantity: str) -> float:
    """A Kubernetes memory quantity in Gi or Mi (what the manifests use) as GiB."""
    for suffix, per_gib in (("Gi", 1), ("Mi", 1024)):
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) / per_gib
    raise ValueError(f"memory {quantity!r}: expected a quantity in Gi or Mi")


def system_for(variant: str, model_dir: Path, ours: Mapping[str, System]) -> System | None:
    """Our function serving `model_dir`: a peer-benchmark system, or one made like it when the
    directory is built but no benchmark knows it (cpu-accurate-int8); None when not built."""
    if model_dir.name in ours:
        return ours[model_dir.name]
    if not (model_dir / "manifest.json").is_file():
        return None
    like = next(iter(ours.values()))
    env = {**like.env, "MODEL_DIR": str(model_dir), "VARIANT": variant}
    return replace(like, key=f"kubesentiment-{variant}", model=model_dir, env=env)


def plan(
    levels: Sequence[Mapping[str, Any]], slo_ms: float, utilization: float, knee: float = 0.9
) -> dict[str, Any] | None:
    """containerConcurrency and target from measured levels (None: no level meets the SLO)."""
    ok = [lv for lv in levels if lv["p99_ms"] <= slo_ms and not lv["errors"] and lv["rps"] > 0]
    if not ok:
        return None
    best = max(ok, key=lambda lv: lv["rps"])
    bend = min(
        (lv for lv in ok if lv["rps"] >= knee * best["rps"]), key=lambda lv: lv["concurrency"]
    )
    cc = math.ceil(best["rps"] * best["mean_ms"] / 1000)
    target = min(cc, math.ceil(bend["rps"] * bend["mean_ms"] / 1000))
    return {
        "rps": round(best["rps"], 1),
        "at_concurrency": best["concurrency"],
        "p99_ms": round(best["p99_ms"], 1),
        "mean_ms": round(best["mean_ms"], 2),
        "knee_concurrency": bend["concurrency"],
        "container_concurrency": cc,
        "target": max(1, target),
        "rps_per_pod_at_target_utilization": round(best["rps"] * utilization, 1),
    }


def costs(
    entry: Mapping[str, Any], cores: int, memory_gib: float, s: Mapping[str, Any]
) -> dict[str, Any]:
    """Pods for the peak rate and USD per million predictions."""
    prices, u = s["prices"], s["target_utilization"]
    pod_hour = cores * prices["vcpu_hour"] + memory_gib * prices["gib_hour"]
    per_hour = entry["rps"] * 3600
    return {
        "pods_for_peak": math.ceil(s["peak_rps"] / (entry["rps"] * u)),
        "pod_usd_per_hour": round(pod_hour, 4),
        "usd_per_million_full": round(pod_hour / per_hour * 1e6, 4),
        "usd_per_million_at_target": round(pod_hour / (per_hour * u) * 1e6, 4),
    }


class CpuLimit:
    """A CFS quota of `cores` CPUs for processes moved in (cgroup v1 or v2), else affinity."""

    def __init__(self, cores: int) -> None:
        self.cores, self.path, self.kind = cores, None, "affinity"
        name = f"kubesentiment-capacity-{cores}-{os.getpid()}"
        for root, quota in ((CGROUP_V1, "cpu.cfs_quota_us"), (CGROUP_V2, "cpu.max")):
            with suppress(OSError):
                path = root / name
                path.mkdir()
                value = f"{cores * 100000}" if quota.endswith("_us") else f"{cores * 100000} 100000"
                (path / quota).write_text(value)
                self.path, self.kind = path, f"cfs-quota ({quota})"
                return

    def apply(self, pid: int) -> None:
        """Move a freshly spawned process (and the threads it will start) under the limit."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(pid))
        else:
            os.sched_setaffinity(pid, set(range(self.cores)))

    def close(self) -> None:
        if self.path is not None:
            with suppress(OSError):
                self.path.rmdir()


def measure(
    system: System,
    cores: int,
    s: Mapping[str, Any],
    args: argparse.Namespace,
    sample: list[str],
    tmp: Path,
) -> dict[str, Any]:
    """Every level for one variant at one core count."""
    limit = CpuLimit(cores)
    env = {"MODEL_DIR": str(system.model), "ORT_INTRA_OP_THREADS": str(cores), **system.env}
    env.pop("MAX_CONCURRENCY", None)
    env["MAX_CONCURRENCY"] = "1024"
    function: LocalFunction = procs.spawn((), env, tmp, f"capacity-{cores}", module=system.module)
    try:
        limit.apply(function.process.pid)
        first_prediction(function, system, sample[0], 120)
        bodies = [json.dumps(system.body(t)) for t in sample]
        phases = [
            {"concurrency": c, "warmup_s": args.warmup, "duration_s": args.duration}
            for c in s["levels"]
        ]
        levels = load(function.base_url, system, bodies, phases, tmp)
        if function.process.poll() is not None:
            raise RuntimeError(
                f"{system.key} exited with {function.process.returncode} during the levels:\n"
                + function.log_tail()
            )
    finally:
        procs.stop(function)
        limit.close()
    for lv in levels:
        lv.pop("quantiles_ms", None)
    return {"limit": limit.kind, "levels": levels}


def markdown(result: Mapping[str, Any]) -> str:
    """docs/capacity.md."""
    s = result["settings"]
    lines = [
        "# Capacity plan",
        "",
        f"Generated by `{result['command']}` ({result['mode']} run, {result['date']}, "
        f"{result['seconds']} s, load average {result['loadavg_at_end']:.1f} at the end) from "
        f"measured levels of our function, one text per request "
        f"(the peer benchmark's text mix), CPU limited by {result['limit']}. SLO: p99 <= "
        f"{s['slo_p99_ms']} ms; peak {s['peak_rps']} req/s; KPA target utilisation "
        f"{s['target_utilization']:.0%}; prices (USD, editable in "
        f"benchmarks/capacity-settings.json): vCPU-hour {s['prices']['vcpu_hour']}, "
        f"GiB-hour {s['prices']['gib_hour']}, GPU-hour {s['prices']['gpu_hour']}.",
        "",
        "| variant | cores | best req/s within SLO | at concurrency | p99 ms "
        "| containerConcurrency | target | pods for peak | USD / million (full, at target) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for entry in result["plans"].values():
        p = entry.get("plan")
        if p is None:
            lines.append(
                f"| {entry['variant']} | {entry['cores']} | no level met the SLO | | | | | | |"
            )
            continue
        c = entry["costs"]
        lines.append(
            f"| {entry['variant']} | {entry['cores']} | {p['rps']:,.1f} | {p['at_concurrency']} | "
            f"{p['p99_ms']:.1f} | {p['container_concurrency']} | {p['target']} | "
            f"{c['pods_for_peak']} | {c['usd_per_million_full']:.4f}, "
            f"{c['usd_per_million_at_target']:.4f} |"
        )
    lines += ["", "Measured levels (req/s, p99 ms):", ""]
    for key, entry in result["plans"].items():
        cells = ", ".join(
            f"c{lv['concurrency']} {lv['rps']:.0f}/{lv['p99_ms']:.0f}" for lv in entry["levels"]
        )
        lines.append(f"- {key}: {cells}")
    lines += [
        "",
        "The manifests in knative/base use the plan at their own CPU limit ("
        + "; ".join(
            f"{k}, {v['file']}, {v['cores']} cores: containerConcurrency "
            f"{v['container_concurrency']}, target {v['target']}"
            for k, v in result["manifests"].items()
        )
        + "); "
        "tests/test_capacity_manifests.py keeps them equal. A GPU variant cannot be measured "
        "here (no GPU): its row stays a price input until measured on a GPU node.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity")
    parser.add_argument("--quick", action="store_true", help="1.5 s levels 1, 4, 16, 64")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--settings", type=Path, default=SETTINGS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite capacity.md from capacity.json"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        result = json.loads((args.out / "capacity.json").read_text())
        (args.out / "capacity.md").write_text(markdown(result))
        return 0
    s = json.loads(args.settings.read_text())
    if args.quick:
        args.warmup, args.duration, s["levels"] = 0.5, 1.5, [1, 4, 16, 64]
    started = time.monotonic()
    svc = services()
    ours = {x.model.name: x for x in all_systems() if x.ours and not x.key.endswith("-aa")}
    sample = [t for _, t in texts.load(next(iter(ours.values())).model)]
    result: dict[str, Any] = {"settings": s, "plans": {}, "manifests": {}}
    limits = set()
    shown = Progress(len(svc) * len(args.cores), "capacity", unit="plan")
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        for variant, service in svc.items():
            system = system_for(variant, ROOT / service["model_dir"], ours)
            if system is None:  # its manifest keeps hand-picked values (and says so)
                print(f"{variant}: {service['model_dir']} is not built, not measured", flush=True)
                shown.update(len(args.cores))
                continue
            for cores in args.cores:
                print(f"{variant} at {cores} core(s) ...", flush=True)
                measured = measure(system, cores, s, args, sample, Path(tmp))
                limits.add(measured["limit"])
                entry: dict[str, Any] = {"variant": variant, "cores": cores, **measured}
                entry["plan"] = plan(measured["levels"], s["slo_p99_ms"], s["target_utilization"])
                if entry["plan"]:
                    entry["costs"] = costs(entry["plan"], cores, service["memory_gib"], s)
                result["plans"][f"{variant}@{cores}"] = entry
                print(f"  {entry['plan']}", flush=True)
                shown.update(1, f"{variant} at {cores} core(s)")
            at = result["plans"].get(f"{variant}@{int(service['cpu'])}", {}).get("plan")
            if at:
                result["manifests"][variant] = {
                    "file": service["file"],
                    "cores": int(service["cpu"]),
                    "container_concurrency": at["container_concurrency"],
                    "target": at["target"],
                }
    shown.close()
    result.update(
        command="python -m benchmarks.capacity" + (" " + " ".join(argv) if argv else ""),
        mode="quick" if args.quick else "full",
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        seconds=round(time.monotonic() - started),
        loadavg_at_end=round(os.getloadavg()[0], 2),
        limit=", ".join(sorted(limits)),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "capacity.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
