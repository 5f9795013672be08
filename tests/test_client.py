"""The batch client against a live server: every row once, per-item errors, retries and resume."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.client import Config, FatalError, main, resume, run
from tests.conftest import LiveServer, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent

N = 300
BAD = {7, 150}


def write_jsonl(path: Path, n: int = N) -> None:
    with path.open("w") as f:
        for i in range(n):
            text = (
                "" if i in BAD else f"row {i}: {'really good ' * (i % 4)}product, would buy again"
            )
            f.write(json.dumps({"doc": f"d{i}", "body": text}) + "\n")


def read_output(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # MAX_CONCURRENCY=1 with several client connections makes 429s certain: the client must
    # retry them. RETRY_AFTER_SECONDS=0 keeps the retries quick.
    log = tmp_path_factory.mktemp("client") / "server.log"
    env = {"ORT_INTRA_OP_THREADS": "1", "MAX_CONCURRENCY": "1", "RETRY_AFTER_SECONDS": "0"}
    s = LiveServer(env, log)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def config(server: LiveServer, tmp_path: Path, **kw: object) -> Config:
    base: dict[str, object] = {
        "input": tmp_path / "in.jsonl",
        "output": tmp_path / "out.jsonl",
        "url": server.url,
        "id_field": "doc",
        "text_field": "body",
        "batch_size": 16,
        "concurrency": 6,
        "backoff_s": 0.02,
        "max_backoff_s": 0.2,
        "retries": 50,
        "progress": False,
    }
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mode", [pytest.param("http", id="http"), pytest.param("cloudevents", id="ce")]
)
def test_every_row_is_written_once_with_errors_for_bad_texts(
    server: LiveServer, tmp_path: Path, mode: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl")
    summary = asyncio.run(run(config(server, tmp_path, mode=mode)))
    rows = read_output(tmp_path / "out.jsonl")
    counts = Counter(r["id"] for r in rows)
    assert set(counts) == {f"d{i}" for i in range(N)}
    assert set(counts.values()) == {1}
    errors = {r["id"] for r in rows if "error" in r}
    assert errors == {f"d{i}" for i in BAD}
    assert all("label" in r for r in rows if r["id"] not in errors)
    assert summary.written == N
    assert summary.item_errors == len(BAD)
    assert summary.failed == 0
    # MAX_CONCURRENCY=1 against 6 concurrent batches: 429s happened and were retried.
    assert summary.retries > 0


def test_resume_skips_written_rows_and_redoes_a_cut_short_line(
    server: LiveServer, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    # A previous run wrote 100 rows (marked so a redo would show) and was cut mid-line.
    with out.open("w") as f:
        for i in range(100):
            f.write(json.dumps({"id": f"d{i}", "label": "from-the-first-run"}) + "\n")
        f.write('{"id": "d100", "label": "posi')
    summary = asyncio.run(run(config(server, tmp_path)))
    rows = read_output(out)
    counts = Counter(r["id"] for r in rows)
    assert set(counts) == {f"d{i}" for i in range(N)}
    assert set(counts.values()) == {1}
    kept = [r for r in rows if r.get("label") == "from-the-first-run"]
    assert {r["id"] for r in kept} == {f"d{i}" for i in range(100)}  # not redone
    assert summary.skipped == 100
    assert summary.written == N - 100  # d100 (the cut line) was redone

    # A second rerun has nothing left to do.
    again = asyncio.run(run(config(server, tmp_path)))
    assert (again.skipped, again.written, again.requests) == (N, 0, 0)


def test_csv_input_and_the_command_line(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "reviews.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review_id", "review"])
        for i in range(40):
            w.writerow([f"r{i}", f"review {i}, quite nice"])
    out = tmp_path / "results.jsonl"
    argv = [str(src), "-o", str(out), "--url", server.url, "--id-field", "review_id"]
    argv += ["--text-field", "review", "--batch-size", "8", "--backoff", "0.02", "--retries", "50"]
    assert main(argv) == 0
    assert [r["id"] for r in read_output(out)].count("r39") == 1
    assert len(read_output(out)) == 40
    assert "summary: rows=40" in capsys.readouterr().err


def test_a_damaged_line_in_the_middle_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(FatalError):
        resume(out)


def test_unreachable_server_counts_rows_as_failed_not_written(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", n=5)
    cfg = Config(
        input=tmp_path / "in.jsonl",
        output=tmp_path / "out.jsonl",
        url=f"http://127.0.0.1:{free_port()}",
        id_field="doc",
        text_field="body",
        retries=2,
        backoff_s=0.01,
        progress=False,
    )
    summary = asyncio.run(run(cfg))
    assert summary.failed == 5
    assert summary.written == 0
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_progress_off_a_terminal_is_one_line_per_interval(
    server: LiveServer, tmp_path: Path
) -> None:
    # stderr is a pipe here, as in a CI log: no bar, no carriage returns, plain lines with the
    # counts, rate and ETA (every batch, with --progress-interval 0), then the last one.
    write_jsonl(tmp_path / "in.jsonl", n=120)
    argv = [sys.executable, "-m", "functions.client", str(tmp_path / "in.jsonl")]
    argv += ["-o", str(tmp_path / "out.jsonl"), "--url", server.url, "--id-field", "doc"]
    argv += ["--text-field", "body", "--batch-size", "10", "--concurrency", "2"]
    argv += ["--backoff", "0.02", "--retries", "50", "--progress-interval", "0"]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("classify: ")]
    counts = [int(line.split()[1].split("/")[0]) for line in lines]
    assert len(lines) >= 12  # 12 batches, one line after each, and the last line
    assert counts == sorted(counts)
    assert counts[-1] == 120
    assert all(", ETA " in line for line in lines[:-1] if not line.startswith("classify: 120/"))
    assert re.fullmatch(
        r"classify: 120/120 text \(100 %\), [0-9.]+ text/s, done in \d\d:\d\d, "
        r"retries \d+, errors 1",  # row 7 is empty (BAD)
        lines[-1],
    ), lines[-1]
    assert "summary: rows=120" in done.stderr.splitlines()[-1]


def test_progress_off_a_terminal_waits_for_its_interval(server: LiveServer, tmp_path: Path) -> None:
    # The default interval (30 s) is longer than this run: only the last line is written.
    write_jsonl(tmp_path / "in.jsonl", n=40)
    argv = [sys.executable, "-m", "functions.client", str(tmp_path / "in.jsonl")]
    argv += ["-o", str(tmp_path / "out.jsonl"), "--url", server.url, "--id-field", "doc"]
    argv += ["--text-field", "body", "--backoff", "0.02", "--retries", "50"]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("classify: ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("classify: 40/40 text (100 %)"), lines
