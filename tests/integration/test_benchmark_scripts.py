"""The benchmark scripts run as commands: the GPU benchmark's --dry-run covers every setting
on the CPU, and every script's --help mentions --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.hydra import ENV
from tests.unit.test_benchmarks import BENCHMARKS


@pytest.mark.slow
def test_gpu_benchmark_dry_run_covers_every_setting(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--dry-run", "--json", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    trained = [record["reference"]["name"]] + [s["name"] for s in record["settings"]]
    assert trained == ["fp32", "bf16-mixed", "bf16-mixed + channels-last"]
    assert record["skipped"] == [
        "bf16-mixed + channels-last + torch.compile: dry run without --compile"
    ]
    assert [row["batch"] for row in record["inference"]] == [1, 8, 64, 256]
    assert all(row["value"] > 0 for row in record["inference"])
    assert record["ddp"] == {"skipped": "dry run"}
    assert record["dry_run"] is True and record["forward_gflops_per_image"] > 0
    assert "fp32" in result.stdout and "batch 256" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["bench_train.py"],
        ["bench_data.py"],
        ["bench_gpu.py"],
        ["bench_inference.py", "speed"],
    ],
)
def test_benchmark_help_mentions_json(command):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / command[0]), *command[1:], "--help"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "--json PATH" in result.stdout
