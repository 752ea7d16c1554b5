"""Requests generated from fer-serve's own ``/openapi.json`` by schemathesis, against a real
server on 127.0.0.1 (the app over a small network, ``tests/helpers/serve_app.py``): no answer
is a 5xx and every answer fits the schema it documents (status, content type, body). Bounded:
a fixed seed, ``MAX_EXAMPLES`` cases per operation and ``MAX_TIME_S`` in all."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.hydra import ENV
from tests.helpers.serve import small_app_server

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40
MAX_TIME_S = 60
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
RUN_SCHEMATHESIS = "from schemathesis.cli import schemathesis; schemathesis()"


def test_generated_requests_get_no_5xx_and_answers_that_fit_the_schema(tmp_path):
    pytest.importorskip("schemathesis", reason="pip install schemathesis (the dev extra)")
    with small_app_server(tmp_path, max_body_mb=1, body_timeout_s=5) as (_, port):
        url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable,
            "-c",
            RUN_SCHEMATHESIS,
            "run",
            f"{url}/openapi.json",
            "--url",
            url,
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--max-time",
            str(MAX_TIME_S),
            "--seed",
            "1",
            "--request-timeout",
            "30",
            "--workers",
            "1",
            "--no-color",
        ]
        run = subprocess.run(
            command,
            cwd=tmp_path,
            env={**ENV, "SCHEMATHESIS_HOOKS": ""},
            capture_output=True,
            text=True,
            timeout=MAX_TIME_S + 120,
        )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    assert "/v1/predict" in report
