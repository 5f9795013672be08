"""JobSink entry point: `python -m training.adaptjob` adapts the default model to a labelled file.

A Knative JobSink creates one Job per `dev.kubesentiment.adapt.requested` event and mounts it,
as structured CloudEvent JSON, at `/etc/jobsink-event/event` (JOBSINK_EVENT_PATH). Its data:

    {"labels": "in/labels.csv", "base_variant": "cpu-int8", "output": "models/adapted-1",
     "min_labels": 20, "holdout": 0.3, "seed": 1}          # the last three optional

with paths relative to ADAPT_DATA_ROOT (default /data; absolute paths must lie inside it, `..`
is refused). The labelled file is what the labelling page exports (CSV `id,text,label,guess,
sample`; any CSV/JSONL with text and label, training/labelled.py). The job splits it into train
and held-out rows (the rows a sampler drew at random, `sample == "random"`, make the held-out
share when at least HOLDOUT_RANDOM_MIN of them carry a label: an unbiased estimate; otherwise a
seeded stratified share of all rows), adapts the base variant's checkpoint with the default
recipe (training/adapt.py), writes the int8 model at OUTPUT (refused by the quantization gate if it
loses more than 1 point of accuracy against fp32 on all the labelled rows), the fp32 model at
OUTPUT-fp32 and the checkpoint at OUTPUT-checkpoint (like `make finetune`), and scores the base
and the adapted model on the same held-out rows beside the majority class.

It then posts `dev.kubesentiment.adapt.completed` (or `.failed`, with a reason: too_few_labels,
one_class, gate_refused, bad_request, internal) to K_SINK with retries (the batch job's sender).
Event ids derive from the request's source and id (shared/eventid.py), so a retried Job sends the
same id. Everything is built in a staging directory and moved into place at the end, the int8
directory last; its manifest (checksums verified) names the request, so a retried Job that finds
it re-sends the completion without training again, and one that finds a partial output starts
clean.

Exit status, as the batch job's: 0 done and reported; 1 retryable (an internal error, or the
event could not be delivered); 2 permanent (bad request, too few labels, one class, gate refused).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cloudevents.core.v1.event import CloudEvent

from functions import batchjob
from shared import modeldir
from shared.eventid import derived_id
from training import finetune, labelled

REQUESTED = "dev.kubesentiment.adapt.requested"
COMPLETED = "dev.kubesentiment.adapt.completed"
FAILED = "dev.kubesentiment.adapt.failed"
SOURCE = "/kubesentiment/adapt"
HOLDOUT_RANDOM_MIN = 40
ROOT = Path(__file__).resolve().parent.parent
# Base variants the job can adapt: (training checkpoint, served model) under ADAPT_MODELS_DIR.
BASES = {"cpu-int8": ("minilm-sentiment-checkpoint", "minilm-sentiment-int8")}
log = logging.getLogger("kubesentiment.adaptjob")


class Failure(Exception):
    """The job cannot succeed: a reason of the failure event, a sentence, an exit status."""

    def __init__(self, reason: str, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.reason, self.message, self.code = reason, message, code


@dataclass(frozen=True)
class AdaptSettings:
    """The job's configuration, read once from the environment."""

    event_path: Path = Path(batchjob.EVENT_PATH)
    data_root: Path = Path("/data")
    models_dir: Path = ROOT / "models"
    sink: str | None = None
    recipe: str = "default"
    threads: int = 0
    sink_attempts: int = 5
    backoff_s: float = 0.5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> AdaptSettings:
        """From JOBSINK_EVENT_PATH, ADAPT_DATA_ROOT, ADAPT_MODELS_DIR, K_SINK, ADAPT_RECIPE
        (training.adapt.RECIPES key), ADAPT_THREADS (0: all cores)."""
        try:
            return cls(
                event_path=Path(environ.get("JOBSINK_EVENT_PATH") or batchjob.EVENT_PATH),
                data_root=Path(environ.get("ADAPT_DATA_ROOT") or "/data"),
                models_dir=Path(environ.get("ADAPT_MODELS_DIR") or cls.models_dir),
                sink=environ.get("K_SINK") or None,
                recipe=environ.get("ADAPT_RECIPE") or cls.recipe,
                threads=int(environ.get("ADAPT_THREADS") or 0),
            )
        except ValueError as e:
            raise Failure("bad_request", f"bad setting: {e}") from None


@dataclass(frozen=True)
class AdaptRequest:
    """What one `dev.kubesentiment.adapt.requested` event asks for."""

    source: str
    event_id: str
    labels: str
    base_variant: str
    output: str
    min_labels: int = 20
    holdout: float = 0.3
    seed: int = 1


def parse_request(event: CloudEvent) -> AdaptRequest:
    """The request in an event of type REQUESTED; Failure("bad_request") otherwise."""
    if event.get_type() != REQUESTED:
        raise Failure("bad_request", f"event type {event.get_type()!r} is not {REQUESTED}")
    data = event.get_data()
    if not isinstance(data, Mapping):
        raise Failure("bad_request", "the event data must be a JSON object")
    unknown = set(data) - {"labels", "base_variant", "output", "min_labels", "holdout", "seed"}
    if unknown:
        raise Failure("bad_request", f"unknown field(s) in the event data: {sorted(unknown)}")
    for name in ("labels", "base_variant", "output"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise Failure("bad_request", f"'{name}' must be a non-empty string")
    request = AdaptRequest(
        str(event.get_source()), str(event.get_id()),
        data["labels"], data["base_variant"], data["output"],
    )  # fmt: skip
    checks = {
        "min_labels": (int, lambda v: 4 <= v <= 1_000_000),
        "holdout": (float, lambda v: 0.05 <= v <= 0.5),
        "seed": (int, lambda v: 0 <= v < 2**31),
    }
    for name, (kind, ok) in checks.items():
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not ok(kind(value)):
            raise Failure("bad_request", f"'{name}' is out of range or not a number: {value!r}")
        if kind is int and value != int(value):
            raise Failure("bad_request", f"'{name}' must be a whole number: {value!r}")
        request = replace(request, **{name: kind(value)})
    if request.base_variant not in BASES:
        raise Failure(
            "bad_request",
            f"base variant {request.base_variant!r} cannot be adapted (known: {sorted(BASES)})",
        )
    return request


def locate(location: str, root: Path) -> Path:
    """A path inside the data root (the batch job's rules), else Failure("bad_request")."""
    try:
        return batchjob.locate(location, root)
    except batchjob.InvalidRequest as e:
        raise Failure("bad_request", str(e).replace("batch volume", "data volume")) from None


def held_out_split(
    rows: list[labelled.Row], fraction: float, seed: int
) -> tuple[list[labelled.Row], list[labelled.Row], str]:
    """(train, held out, how): the random-sample rows when there are enough (contract B), else a
    seeded stratified share of all rows."""
    import random

    randoms = [r for r in rows if r.sample == "random"]
    labels = {r.label for r in rows}
    if len(randoms) >= HOLDOUT_RANDOM_MIN and {r.label for r in randoms} == labels:
        rng = random.Random(seed)
        rng.shuffle(randoms)
        held = randoms[: max(HOLDOUT_RANDOM_MIN, round(fraction * len(rows)))]
        chosen = {id(r) for r in held}
        train = [r for r in rows if id(r) not in chosen]
        if {r.label for r in train} == labels:
            return train, held, f"the {len(held)} labelled rows sampled at random"
    train, held = labelled.split(rows, seed, fraction)
    return train, held, f"a seeded stratified {fraction:.0%} of the rows"


def answer(request: AdaptRequest, kind: str, data: dict[str, Any]) -> CloudEvent:
    """The completion or failure event for `request` (id derived from the request's)."""
    attributes = {
        "id": derived_id(request.source, request.event_id, kind),
        "source": SOURCE,
        "type": kind,
        "subject": request.event_id,
        "requestid": request.event_id,
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, {"request": {"source": request.source, "id": request.event_id},
                                   **data})  # fmt: skip


def completed_record(out: Path, request: AdaptRequest) -> dict[str, Any] | None:
    """The completion data stored with this request's finished output; None when there is no
    output or only a damaged one of this request (the job starts clean). An output that is not
    this request's is refused, never overwritten."""
    if not (out / modeldir.MANIFEST).is_file():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise Failure("bad_request", f"output {request.output!r} exists and is not a model")
        return None
    try:
        record = modeldir.read_manifest(out).evaluation.get("adapt_job")
    except modeldir.ModelDirError as e:
        raise Failure("bad_request", f"output {request.output!r}: {e}") from None
    if not isinstance(record, dict) or record.get("request") != {
        "source": request.source, "id": request.event_id,
    }:  # fmt: skip
        owner = record.get("request") if isinstance(record, dict) else "not an adapt job"
        raise Failure(
            "bad_request",
            f"output {request.output!r} holds another model ({owner}); choose a new output",
        )
    try:
        modeldir.load(out)
    except modeldir.ModelDirError as e:
        log.warning("output %s is damaged (%s): starting clean", request.output, e)
        return None
    return {k: v for k, v in record.items() if k != "request"}


def adapt_to(request: AdaptRequest, settings: AdaptSettings) -> dict[str, Any]:
    """Read, check, split, adapt, export and evaluate; the completion event's data."""
    started = time.monotonic()
    path = locate(request.labels, settings.data_root)
    out = locate(request.output, settings.data_root)
    if not path.is_file():
        raise Failure("bad_request", f"labels file {request.labels!r} does not exist")
    done = completed_record(out, request)
    if done is not None:
        log.info("output %s is complete for this request: not training again", request.output)
        return done
    try:
        rows, skipped = labelled.read_labelled(path)
    except labelled.DataError as e:
        message = str(e).replace(f"{settings.data_root.resolve()}/", "")
        raise Failure("bad_request", message) from None
    rows = labelled.deduplicate(rows)
    counts = Counter(r.label for r in rows)
    if len(counts) < 2:
        only = f" ({next(iter(counts))!r})" if counts else ""
        raise Failure("one_class", f"all {len(rows)} labelled rows carry one label{only}")
    if len(rows) < request.min_labels or min(counts.values()) < 2:
        raise Failure(
            "too_few_labels",
            f"{len(rows)} labelled rows ({labelled.counts(rows)}); at least "
            f"{request.min_labels} are needed, and two of each label",
        )
    plan = labelled.plan_labels(rows, path)
    from training.adapt import RECIPES  # torch: only once the request is known to be good

    if settings.recipe not in RECIPES:
        raise Failure(
            "bad_request", f"ADAPT_RECIPE {settings.recipe!r} is not in {sorted(RECIPES)}"
        )
    train, held, how = held_out_split(rows, request.holdout, request.seed)
    base_ckpt, base_model = (settings.models_dir / name for name in BASES[request.base_variant])
    staging = out.with_name(f".{out.name}.adapt-staging")
    for directory in (staging, out, *siblings(out)):
        shutil.rmtree(directory, ignore_errors=True)
    staging.mkdir(parents=True)
    import torch

    from training.quantgate import QuantizationRefused
    from training.train import base_model_dir

    if settings.threads > 0:
        torch.set_num_threads(settings.threads)

    # The quantization gate counts every labelled row: on the held-out share alone (18 rows of 60)
    # one text that int8 flips is 5.6 points, and a 1-point criterion would refuse at random.
    work = staging / out.name
    try:
        record = finetune.produce(
            base=base_ckpt, encoder=base_model_dir(), plan=plan, train=train,
            gate=("labelled_rows", [r.text for r in rows], [plan.canonical[r.label] for r in rows]),
            out=work,
            recipe=RECIPES[settings.recipe], seed=request.seed, name=out.name,
            version="1.0.0", max_tokens=modeldir.load(base_model).max_tokens,
            source=f"{request.labels}: {len(rows)} labelled rows ({labelled.counts(rows)}), "
            f"{skipped} without a label skipped; held out: {how}", threads=settings.threads,
        )  # fmt: skip
    except QuantizationRefused as e:
        shutil.rmtree(staging, ignore_errors=True)
        # The refusal's first line and the figures of each set, on one line.
        message = "; ".join(line.strip() for line in str(e).splitlines())
        raise Failure("gate_refused", message) from None
    majority = Counter(plan.canonical[r.label] for r in train).most_common(1)[0][0]
    results = finetune.held_out_results(
        {"adapted": work}, base_model, plan, held, majority, settings.threads
    )
    pick = ("accuracy", "balanced_accuracy", "macro_f1")
    figures = {k: {m: round(v[m], 4) for m in pick} for k, v in results.items()}
    manifest = modeldir.load(work)
    gate = manifest.extra["quantization_gate"]["sets"]["labelled_rows"]
    data: dict[str, Any] = {
        "status": "succeeded",
        "base_variant": request.base_variant,
        "model_dir": request.output,
        "model_uri": out.resolve().as_uri(),
        "model": {"name": manifest.name, "version": manifest.version,
                  "sha256": manifest.files[manifest.onnx_file]},
        "held_out": {
            "n": len(held), "how": how, "labels": list(plan.labels),
            "base": figures.get(f"default {base_model.name}"),
            "adapted": figures["adapted"],
            "majority": {"label": majority, **figures[f"majority class ({majority})"]},
        },
        "gate": {"fp32_accuracy": gate["fp32"], "int8_accuracy": gate["int8"], "passed": True},
        "train_rows": len(train), "skipped_rows": skipped,
        "seconds": round(time.monotonic() - started, 1), "recipe": record["recipe"]["name"],
    }  # fmt: skip
    stored = {**data, "request": {"source": request.source, "id": request.event_id}}
    modeldir.write_manifest(work, replace(manifest, evaluation={"adapt_job": stored}))
    for name in ("fp32", "checkpoint"):
        staging.joinpath(f"{out.name}-{name}").rename(out.with_name(f"{out.name}-{name}"))
    work.rename(out)  # last: its manifest marks the output complete
    shutil.rmtree(staging, ignore_errors=True)
    return data


def siblings(out: Path) -> tuple[Path, Path]:
    """OUTPUT-fp32 and OUTPUT-checkpoint."""
    return out.with_name(f"{out.name}-fp32"), out.with_name(f"{out.name}-checkpoint")


async def run(settings: AdaptSettings) -> int:
    """Run the job once; the exit status (see the module docstring)."""
    request: AdaptRequest | None = None
    try:
        event = batchjob.read_event(settings.event_path)
        request = parse_request(event)
        data = adapt_to(request, settings)
        reply, code = answer(request, COMPLETED, data), 0
    except batchjob.InvalidRequest as e:
        reply, code = unanswerable(str(e)), 2
    except Failure as e:
        if request is None:
            reply = unanswerable(e.message)
        else:
            reply = answer(request, FAILED, failure(e.reason, e.message))
        code = e.code
    except Exception as e:  # a bug or the machine: the Job's retry may succeed
        log.exception("adapt job failed")
        failed = failure("internal", f"{type(e).__name__}: {e}")
        reply = answer(request, FAILED, failed) if request else unanswerable(str(e))
        code = 1
    log.info("adapt job: %s %s", reply.get_type(), reply.get_data())
    sender = batchjob.JobSettings(
        sink=settings.sink, sink_attempts=settings.sink_attempts, backoff_s=settings.backoff_s
    )
    if not await batchjob.deliver(sender, reply) and code == 0:
        code = 1  # a retry finds the finished output and sends the event again
    return code


def failure(reason: str, message: str) -> dict[str, Any]:
    return {"status": "failed", "reason": reason, "message": message}


def unanswerable(message: str) -> CloudEvent:
    """A failure event for an event that could not be read (no request id to derive from)."""
    attributes = {"id": str(uuid.uuid4()), "source": SOURCE, "type": FAILED,
                  "datacontenttype": "application/json"}  # fmt: skip
    return CloudEvent(attributes, {"request": None, **failure("bad_request", message)})


def main(environ: Mapping[str, str] = os.environ) -> int:
    """Entry point of the JobSink's Job."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = AdaptSettings.from_env(environ)
    except Failure as e:
        print(f"configuration error: {e.message}", file=sys.stderr)
        return 2
    code = asyncio.run(run(settings))
    if code == 2:
        print("the adapt request cannot succeed (see the log): not retrying", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
