"""The OpenAPI document is the contract: schemathesis fuzzes a live uvicorn against it.

Every check and every phase (examples, coverage, fuzzing, stateful), positive and negative data:
a request the document calls valid must be accepted, one it calls invalid must get a 4xx, every
answer must match its documented status, schema, content type and headers, no 5xx, and 405 must
carry Allow. The server runs with small text limits so a thousand cases take about a minute; the
document states whatever limits the settings hold. A second run with API keys on checks that the
document's security schemes are enforced (schemathesis' `ignored_auth`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LiveServer

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
LIMITS = {"MAX_TEXTS": "8", "MAX_TEXT_CHARS": "200", "MAX_CONCURRENCY": "1000"}
KEY = "st-fuzz-key-1234567890"


# A deadline the document calls valid (X-Request-Timeout: 0.000001, v2 parameters.timeout: 1, a
# ce-deadline in the past) can pass before the texts run, and then 504 deadline_exceeded is the
# documented, right answer; schemathesis counts every 5xx as a server error, so 504 (and only
# 504: nothing else in the function answers it) is accepted. Its body is still checked against
# the document; tests/test_deadlines.py checks when it is given.
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "504"]
"""


def fuzz(server: LiveServer, examples: int, *extra: str) -> tuple[int, str]:
    """Run schemathesis; return the number of generated cases and its output."""
    config = server.log_path.with_name(f"{server.log_path.stem}-schemathesis.toml")
    config.write_text(CONFIG)
    cmd = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--url",
        server.url,
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--mode",
        "all",
        "--max-examples",
        str(examples),
        "--seed",
        "20261203",
        "--no-color",
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    out = done.stdout + done.stderr
    match = re.search(r"(\d+) generated", out)
    assert match, out[-3000:]
    assert done.returncode == 0, out[-6000:]
    return int(match.group(1)), out


@pytest.mark.integration
@pytest.mark.slow
def test_schemathesis_finds_nothing(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(LIMITS)
    cases, out = fuzz(server, 100)
    print(out[-1500:])
    assert cases >= 1000, f"only {cases} cases generated"
    assert "no issues found" in out.lower() or " 0 failures" in out or "failures" not in out
    assert "unexpected error" not in server.logs()


@pytest.mark.integration
@pytest.mark.slow
def test_schemathesis_with_api_keys(live_server: Callable[..., LiveServer]) -> None:
    server = live_server({**LIMITS, "API_KEYS": KEY})
    cases, out = fuzz(server, 15, "--header", f"Authorization: Bearer {KEY}")
    print(out[-1500:])
    assert cases >= 100
    assert "unexpected error" not in server.logs()
