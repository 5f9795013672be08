"""The in-process ceiling per way of building and running the default model.

    python -m benchmarks.ceiling            (docs/ceiling.json, docs/ceiling.md, README block)
    python -m benchmarks.ceiling --readme   (README block from docs/ceiling.json)

Each option is a model directory and an execution provider: today's served graph (ONNX Runtime's
transformer fusions, then dynamic int8) and its A/A twin (the same file, measured as if it were
another option), fp32, the graph without the fusions, static int8 (QDQ, per-channel weights,
activations calibrated on training texts: `training.export.derive_int8_static`) of the fused and
of the unfused graph, and the OpenVINO execution provider (`onnxruntime-openvino`, which replaces
onnxruntime, so in its own venv under build/ceiling/) on the files it handles.

Rates: every option is measured in its own process, in turn, pass after pass (the order rotated
each pass), on the peer benchmark's texts and the served session options, three ways as in
`benchmarks.peers.ceiling` (its best ways there: one run per text, padded pairs in arrival order,
length-sorted runs of 32 as the function's batcher forms them). An option's rate in a pass is its
best way; its ratio is to the served graph's rate in the same pass, the median over passes is
reported, and the A/A twin's ratios say how far the host's noise alone moves a ratio.

Gate: an option's accuracy on the project's held-out sets (training/evaluate.py), scored in the
option's own process and provider, against the fp32 model's, with the quantization gate's limit
(training/quantgate.py). An option slower than the served graph by more than the A/A spread
cannot be adopted and is not gated (it would cost minutes per option); the A/A twin is the served
file and shares its record. An option is adoptable when it passes the gate, its ratio is above 1
by more than the A/A spread and the serving stack's own onnxruntime runs it.
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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "ceiling"
MODELS = BUILD / "models"
RESULTS = ROOT / "docs" / "ceiling.json"
TABLE = ROOT / "docs" / "ceiling.md"
OPENVINO_REQUIREMENTS = ROOT / "benchmarks" / "requirements-openvino.txt"
OPENVINO_VENV = BUILD / "venv-openvino"
SERVED = ROOT / "models" / "minilm-sentiment-int8"
FP32 = ROOT / "models" / "minilm-sentiment-fp32"
CHECKPOINT = ROOT / "models" / "minilm-sentiment-checkpoint"
CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
BASELINE = "dynamic-int8"


@dataclass(frozen=True)
class Option:
    """One way of building and running the model."""

    key: str
    model: str  # a model directory: "served", "fp32" or a name under build/ceiling/models
    description: str
    provider: str = CPU
    venv: str = ""  # "" the project's interpreter, "openvino" build/ceiling/venv-openvino


# The A/A twin sits in the middle: with the order rotated each pass it is never measured right
# after the served graph, so its ratio sees the drift a distant option sees.
OPTIONS = (
    Option(BASELINE, "served", "served: fused graph, dynamic int8 (per-channel, head fp32)"),
    Option("fp32", "fp32", "fused graph, fp32 (the gate's reference)"),
    Option("dynamic-int8-unfused", "int8-unfused", "graph as traced (no fusions), dynamic int8"),
    Option("static-int8", "static-fused", "fused graph, static int8 (QDQ, calibrated)"),
    Option("static-int8-unfused", "static-unfused", "no fusions, static int8 (QDQ, calibrated)"),
    Option(f"{BASELINE}-aa", "served", "A/A twin: the served file again, as another option"),
    Option(
        "ort-1.24-dynamic-int8",
        "served",
        "served file, CPU provider of the OpenVINO build's onnxruntime (version vs provider)",
        venv="openvino",
    ),
    Option("openvino-dynamic-int8", "served", "served file, OpenVINO", OPENVINO, "openvino"),
    Option("openvino-fp32", "fp32-unfused", "no fusions, fp32, OpenVINO", OPENVINO, "openvino"),
    Option(
        "openvino-static-int8",
        "static-unfused",
        "no fusions, static int8 (QDQ), OpenVINO",
        OPENVINO,
        "openvino",
    ),
)


def model_dir(name: str) -> Path:
    """The directory an option runs: the committed served or fp32 model, or a built one."""
    return {"served": SERVED, "fp32": FP32}.get(name, MODELS / name)


def build(name: str) -> Path:
    """Build an option's model directory under build/ceiling/models unless it is there."""
    out = model_dir(name)
    if (out / "manifest.json").exists():
        return out
    from training import export

    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"building {name} ...", flush=True)
    if name == "fp32-unfused":
        export.export_checkpoint(CHECKPOINT, out, version="ceiling", max_tokens=256, optimize=None)
    elif name == "int8-unfused":
        export.derive_int8(build("fp32-unfused"), out)
    elif name == "static-fused":
        export.derive_int8_static(FP32, out)
    elif name == "static-unfused":
        export.derive_int8_static(build("fp32-unfused"), out)
    else:
        raise ValueError(f"no recipe for {name}")
    return out


def interpreter(venv: str) -> str | None:
    """The option's Python, creating the OpenVINO venv on first use (None when it fails)."""
    if not venv:
        return sys.executable
    python = OPENVINO_VENV / "bin" / "python"
    stamp = OPENVINO_VENV / ".installed"
    wanted = OPENVINO_REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python)
    print(f"creating {OPENVINO_VENV.relative_to(ROOT)} ...", flush=True)
    steps = [
        ["python3", "-m", "venv", "--clear", str(OPENVINO_VENV)],
        [str(python), "-m", "pip", "install", "-q", "-r", str(OPENVINO_REQUIREMENTS)],
    ]
    for cmd in steps:
        if subprocess.run(cmd, check=False, timeout=1800).returncode != 0:
            return None
    stamp.write_text(wanted)
    return str(python)


# ---- the worker: one option in its own process ----------------------------------------------


def engine_for(option: Option) -> Any:
    """The peer benchmark's engine on the option's model, on the option's provider."""
    import onnxruntime as ort

    from benchmarks.peers.engine import Engine
    from functions.sentiment.model import session_options

    directory = model_dir(option.model)
    engine = Engine(directory)
    if option.provider != CPU:
        settings = {"device_type": "CPU", "precision": "FP32", "num_of_threads": engine.threads}
        engine.session = ort.InferenceSession(
            str(directory / "model.onnx"),
            sess_options=session_options(engine.threads, 1, spinning=False),
            providers=[(option.provider, {k: str(v) for k, v in settings.items()})],
        )
        used = engine.session.get_providers()
        if used[0] != option.provider:
            raise RuntimeError(f"{option.provider} not used: {used}")
    return engine


def ways(engine: Any, texts: Sequence[str]) -> dict[str, float]:
    """Texts per second run one by one, in padded pairs, and in length-sorted runs of 32."""

    def rate(runs: list[Sequence[str]]) -> float:
        started = time.perf_counter()
        for run in runs:
            engine.run(engine.encode(run))
        return round(len(texts) / (time.perf_counter() - started), 1)

    engine.run(engine.encode(texts[:32]))  # warm-up
    tokens = {t: len(ids) for t, ids in zip(texts, engine.encode(texts), strict=True)}
    ordered = sorted(texts, key=tokens.__getitem__)
    out = {
        "batch_1": rate([[t] for t in texts]),
        "padded_2": rate([texts[i : i + 2] for i in range(0, len(texts), 2)]),
        "sorted_32": rate([ordered[i : i + 32] for i in range(0, len(ordered), 32)]),
    }
    return {**out, "best": max(out.values())}


def worker(kind: str, key: str, texts_file: Path) -> dict[str, Any]:
    """`rate`: the ceiling's rates on the texts; `score`: label index and score per text."""
    import onnxruntime as ort

    option = next(o for o in OPTIONS if o.key == key)
    texts: list[str] = json.loads(texts_file.read_text())
    engine = engine_for(option)
    info = {"onnxruntime": ort.__version__, "providers": engine.session.get_providers()}
    if kind == "rate":
        return {**info, **ways(engine, texts)}
    labels = [label.lower() for label in engine.labels]
    pos, neg = labels.index("positive"), labels.index("negative")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # as evaluate.onnx_scorer
    out: list[list[float]] = [[0.0, 0.0]] * len(texts)
    for start in range(0, len(order), 64):
        idx = order[start : start + 64]
        for i, row in zip(idx, engine.probabilities([texts[i] for i in idx]), strict=True):
            out[i] = [float(row.argmax()), float(row[pos] - row[neg])]
    return {**info, "scores": out}


def run_worker(option: Option, kind: str, texts: Sequence[str]) -> dict[str, Any]:
    """Run the worker for an option in its interpreter; its JSON answer."""
    python = interpreter(option.venv)
    if python is None:
        raise RuntimeError(f"the {option.venv} venv could not be installed")
    with tempfile.TemporaryDirectory(prefix="ceiling-") as tmp:
        src, dst = Path(tmp) / "texts.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(list(texts)))
        cmd = [python, "-m", "benchmarks.ceiling", "--worker", kind, "--option", option.key,
               "--texts", str(src), "--out", str(dst)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
        result: dict[str, Any] = json.loads(dst.read_text())
        return result


# ---- the driver ---------------------------------------------------------------------------


def accuracies(option: Option) -> dict[str, float]:
    """Accuracy per held-out set (as `quantgate.project_measure`), scored by the worker."""
    from training.evaluate import evaluate

    def scorer(texts: list[str]) -> tuple[list[int], list[float]]:
        rows = run_worker(option, "score", texts)["scores"]
        return [int(r[0]) for r in rows], [float(r[1]) for r in rows]

    return {k: float(v["accuracy"]) for k, v in evaluate(scorer).items() if "accuracy" in v}


def gate(
    options: Sequence[Option], reference: Option, slower: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """The quantization gate's record per option against the reference's accuracies; `slower`:
    the options slower than the served graph beyond the A/A spread, with their ratio."""
    from training.quantgate import check

    fp32 = accuracies(reference)
    out: dict[str, dict[str, Any]] = {}
    for option in options:
        started = time.monotonic()
        if option.key in slower:
            why = f"not gated: {slower[option.key]:.2f}x the served graph, cannot be adopted"
            out[option.key] = {"passed": False, "error": why}
        elif option.key == f"{BASELINE}-aa" and BASELINE in out:
            out[option.key] = out[BASELINE]  # the same file
        else:
            try:
                out[option.key] = check(fp32, fp32 if option is reference else accuracies(option))
            except RuntimeError as e:
                out[option.key] = {"passed": False, "error": str(e)}
        print(f"gate {option.key}: {out[option.key].get('passed')} "
              f"({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
    return out


def rates(
    options: Sequence[Option], texts: Sequence[str], passes: int
) -> dict[str, list[dict[str, Any]]]:
    """Every option's rates per pass, the options alternating, the order rotated each pass."""
    out: dict[str, list[dict[str, Any]]] = {o.key: [] for o in options}
    for n in range(passes):
        order = [*options[n % len(options) :], *options[: n % len(options)]]
        for option in order:
            try:
                result = run_worker(option, "rate", texts)
            except RuntimeError as e:
                result = {"error": str(e)}
            result["load_average"] = round(os.getloadavg()[0], 2)
            out[option.key].append(result)
            print(f"pass {n + 1} {option.key}: {result.get('best', result.get('error'))}",
                  flush=True)  # fmt: skip
    return out


def _mib(path: Path) -> float | None:
    return round(path.stat().st_size / 2**20, 1) if path.exists() else None


def summarize(
    options: Sequence[Option],
    measured: dict[str, list[dict[str, Any]]],
    gates: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Per option: median rate, ratio to the served graph per pass and median, gate, size."""
    base = [r.get("best") for r in measured[BASELINE]]
    aa = [
        r["best"] / b for r, b in zip(measured[f"{BASELINE}-aa"], base, strict=True)
        if b and "best" in r
    ]  # fmt: skip
    spread = max((abs(1 - r) for r in aa), default=0.0)
    table: dict[str, Any] = {}
    for option in options:
        runs = measured[option.key]
        ok = [(r, b) for r, b in zip(runs, base, strict=True) if "best" in r and b]
        directory = model_dir(option.model)
        row: dict[str, Any] = {
            "description": option.description,
            "provider": option.provider,
            "model": option.model,
            "model_mib": _mib(directory / "model.onnx"),
            "gate": gates[option.key],
        }
        if not ok:
            row["error"] = next((r["error"] for r in runs if "error" in r), "no rate")
        else:
            ratios = [r["best"] / b for r, b in ok]
            ways = [k for k in ok[0][0] if k.startswith(("batch_", "padded_", "sorted_"))]
            row.update({
                "onnxruntime": ok[0][0]["onnxruntime"],
                "texts_per_s": round(statistics.median(r["best"] for r, _ in ok), 1),
                "texts_per_s_passes": [r["best"] for r, _ in ok],
                "ways": {w: round(statistics.median(r[w] for r, _ in ok), 1) for w in ways},
                "ratio": round(statistics.median(ratios), 3),
                "ratios": [round(x, 3) for x in ratios],
            })  # fmt: skip
        faster = row.get("ratio", 0.0) - 1 > spread
        row["adoptable"] = bool(gates[option.key].get("passed")) and faster
        table[option.key] = row
    return {"aa_ratios": [round(x, 3) for x in aa], "aa_spread": round(spread, 3), "options": table}


def machine() -> dict[str, Any]:
    """What the rates were measured on."""
    import onnxruntime as ort

    from shared.cpu import available_cpus

    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    return {
        "cpu": names[0] if names else platform.processor(),
        "cores": available_cpus(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "openvino_requirements": OPENVINO_REQUIREMENTS.read_text().split(),
    }


def table(result: dict[str, Any]) -> str:
    """The markdown table of docs/ceiling.md and the README block."""
    rows = [
        "| option | provider (onnxruntime) | model MiB | texts/s (median) | ratio to served | "
        "gate (largest accuracy drop vs fp32) | adoptable |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for key, r in result["options"].items():
        provider = r["provider"].removesuffix("ExecutionProvider")
        g = r["gate"]
        if "sets" in g:
            worst = max(g["sets"].items(), key=lambda kv: kv[1]["drop"])
            verdict = "passed" if g["passed"] else "REFUSED"
            drop = f"{verdict}: {100 * worst[1]['drop']:.1f} pt lost on {worst[0]}"
        else:
            drop = g.get("error", "not gated")
        rate = f"{r['texts_per_s']:.0f}" if "texts_per_s" in r else f"error: {r.get('error')}"
        ratio = (
            f"{r['ratio']:.2f}x ({min(r['ratios']):.2f}-{max(r['ratios']):.2f})"
            if "ratio" in r
            else "-"
        )
        rows.append(
            f"| `{key}` {r['description']} | {provider} ({r.get('onnxruntime', '?')}) | "
            f"{r['model_mib'] or 0:.1f} | {rate} | {ratio} | {drop} | "
            f"{'yes' if r['adoptable'] else 'no'} |"
        )
    return "\n".join(rows)


def details(result: dict[str, Any]) -> str:
    """docs/ceiling.md's detail: the median rate per way, and the accuracy per held-out set."""
    rows = result["options"]
    way_names = sorted({w for r in rows.values() for w in r.get("ways", {})})
    lines = ["Texts/s per way (median over passes):", "",
             "| option | " + " | ".join(way_names) + " |",
             "|---|" + "---:|" * len(way_names)]  # fmt: skip
    lines += [
        f"| `{k}` | " + " | ".join(f"{r['ways'].get(w, 0):.1f}" for w in way_names) + " |"
        for k, r in rows.items()
        if "ways" in r
    ]
    gated = {k: r["gate"]["sets"] for k, r in rows.items() if "sets" in r["gate"]}
    if gated:
        sets = sorted(next(iter(gated.values())))
        head = "| option | " + " | ".join(sets) + " |"
        lines += ["", "Accuracy per held-out set (drop against fp32 in points):", "", head,
                  "|---|" + "---:|" * len(sets)]  # fmt: skip
        first = next(iter(gated.values()))
        lines.append(
            "| fp32 reference | " + " | ".join(f"{first[s]['fp32']:.4f}" for s in sets) + " |"
        )
        lines += [
            f"| `{k}` | "
            + " | ".join(f"{v[s]['int8']:.4f} ({100 * v[s]['drop']:+.1f})" for s in sets)
            + " |"
            for k, v in gated.items()
        ]
    return "\n".join(lines)


BEGIN = "<!-- ceiling: generated by `python -m benchmarks.ceiling --readme`; do not edit -->"
END = "<!-- /ceiling -->"


def readme_section(result: dict[str, Any]) -> str:
    """The README's ceiling block, from docs/ceiling.json."""
    m = result["machine"]
    loads = result.get("load_average")
    load = (
        f" (1-minute load average {loads[0]}-{loads[1]}: other work on the host)" if loads else ""
    )
    return "\n".join([
        BEGIN,
        f"In-process ceiling on {m['cpu']} ({m['cores']} cores), {result['texts']} texts of the "
        f"peer mix, {result['passes']} alternating passes{load}; the ratio is to the served "
        f"graph in "
        f"the same pass (median, range), the A/A twin's ratios "
        f"{', '.join(f'{x:.3f}' for x in result['aa_ratios'])} (spread "
        f"{100 * result['aa_spread']:.1f} %). Gate: accuracy on every held-out set within "
        f"{100 * result['max_drop']:.0f} point of fp32.",
        "",
        table(result),
        "",
        f"Adopted: {decide(result['options'])}",
        END,
    ])  # fmt: skip


def write_readme(result: dict[str, Any], readme: Path = ROOT / "README.md") -> None:
    """Replace the block between the markers in the README."""
    from scripts import readme_blocks

    readme_blocks.replace(readme_section(result), BEGIN, END, readme)


def decide(options: dict[str, Any]) -> str:
    """The option to adopt: adoptable (gate passed, faster than the A/A spread), run by the
    serving stack's own onnxruntime, and a model file no larger than the served one (the image
    has no room for more: 249.7 MiB of its 250 MiB budget, and the file is read at every cold
    start); else why the served graph stays."""
    served = options[BASELINE]["model_mib"]
    servable = {o.key for o in OPTIONS if not o.venv and o.model != "served"}
    candidates = [k for k, r in options.items() if r["adoptable"] and k in servable]
    fits = [k for k in candidates if (options[k]["model_mib"] or 1e9) <= 1.05 * served]
    if fits:
        best = max(fits, key=lambda k: options[k]["ratio"])
        return f"`{best}` ({options[best]['ratio']:.2f}x the served graph, gate passed)"
    too_big = "; ".join(
        f"`{k}` is faster and passes the gate but its file is {options[k]['model_mib']:.0f} MiB "
        f"against {served:.0f}" for k in candidates
    )  # fmt: skip
    return "none, the served graph stays" + (f": {too_big}" if too_big else (
        ": no option run by the serving stack's onnxruntime both passes the gate and beats the "
        "served graph by more than the A/A spread"
    ))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--n", type=int, default=512, help="texts of the peer mix per rate")
    p.add_argument("--only", nargs="*", help="option keys (the served graph and twin always)")
    p.add_argument("--no-gate", action="store_true", help="rates only (the gate takes minutes)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--readme", action="store_true", help="README block from docs/ceiling.json")
    p.add_argument("--worker", choices=("rate", "score"), help=argparse.SUPPRESS)
    p.add_argument("--option", help=argparse.SUPPRESS)
    p.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.out.write_text(json.dumps(worker(args.worker, args.option, args.texts)))
        return
    if args.readme:
        result = json.loads(RESULTS.read_text())
        result["adopted"] = decide(result["options"])  # the rule applied to the recorded rows
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        TABLE.write_text(
            f"# In-process ceiling per option\n\n{readme_section(result)}\n\n{details(result)}\n"
        )
        write_readme(result)
        return
    from benchmarks.peers import texts as peer_texts
    from training.quantgate import MAX_DROP

    keep = {BASELINE, f"{BASELINE}-aa", *(args.only or (o.key for o in OPTIONS))}
    options = [o for o in OPTIONS if o.key in keep]
    for option in options:
        build(option.model)
    sample = [t for _, t in peer_texts.load(SERVED, max(args.n, 1000))][: args.n]
    started = time.monotonic()
    measured = rates(options, sample, args.passes)
    reference = next(o for o in OPTIONS if o.key == "fp32")
    ungated = {o.key: {"passed": False, "error": "--no-gate"} for o in options}
    first = summarize(options, measured, ungated)
    slower = {
        k: r["ratio"] for k, r in first["options"].items()
        if r.get("ratio", 0.0) < 1 - first["aa_spread"]
    }  # fmt: skip
    gates = ungated if args.no_gate else gate(options, reference, slower)
    result = {
        "machine": machine(),
        "texts": len(sample),
        "passes": args.passes,
        "baseline": BASELINE,
        "max_drop": MAX_DROP,
        "seconds": round(time.monotonic() - started),
        "load_average": [
            min(r["load_average"] for rs in measured.values() for r in rs),
            max(r["load_average"] for rs in measured.values() for r in rs),
        ],
        **summarize(options, measured, gates),
    }
    result["adopted"] = decide(result["options"])
    print(table(result) + f"\nA/A ratios {result['aa_ratios']}\nadopted: {result['adopted']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.out == RESULTS:
        TABLE.write_text(
            f"# In-process ceiling per option\n\n{readme_section(result)}\n\n{details(result)}\n"
        )
        write_readme(result)


if __name__ == "__main__":
    main()
