"""benchmarks/device_check.sh --dry-run: the GPU machine's first check, run on the CPU, writes
its one JSON with every part passed and the figures' keys in place."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers.hydra import ENV
from tests.unit.test_benchmarks import BENCHMARKS

PARTS = ("gpu_tier", "bench_gpu", "fer_train")
SPEED_KEYS = {"images_per_s", "mfu", "batch_wait_share", "forward_gflops_per_image", "precision"}
SUMMARY_KEYS = {
    "end_to_end_images_per_s",
    "end_to_end_mfu",
    "network_images_per_s",
    "network_mfu",
    "end_to_end_over_network",
}


@pytest.mark.slow
def test_device_check_dry_run_writes_one_json_with_every_part_passed(tmp_path):
    out = tmp_path / "dc.json"
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "device_check.sh"), "--dry-run", "--out", str(out)],
        cwd=BENCHMARKS.parent,
        env={**ENV, "TMPDIR": str(tmp_path)},  # the parts' work folder goes with tmp_path
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["ok"] is True and record["dry_run"] is True
    parts = record["parts"]
    assert set(parts) == set(PARTS)  # no install in the dry run
    for name in PARTS:
        assert parts[name]["status"] == "passed" and parts[name]["exit_status"] == 0, name
        assert parts[name]["seconds"] <= parts[name]["budget_s"]
    tier = parts["gpu_tier"]
    assert tier["tests"]["passed"] >= 1 and tier["tests"]["failed"] == 0
    # The CUDA-only part of a dry-run test skips with its reason.
    assert any("CUDA only" in reason for reason in tier["skipped_tests"].values())
    training = parts["bench_gpu"]["figures"]["training"]
    assert {"fp32", "bf16-mixed", "bf16-mixed + channels-last"} <= set(training)
    assert all(row["images_per_s"] > 0 and "mfu" in row for row in training.values())
    speed = parts["fer_train"]["figures"]
    assert set(speed) >= SPEED_KEYS and speed["images_per_s"] > 0
    assert speed["timed_steps"] == 4 and speed["images"] == 4 * speed["batch_size"]
    assert set(record["summary"]) >= SUMMARY_KEYS
    assert record["summary"]["end_to_end_images_per_s"] == speed["images_per_s"]
    # Batch 2 against batch 8 on the CPU: not comparable, so no ratio.
    assert record["summary"]["end_to_end_over_network"] is None
    assert "every part passed" in result.stdout


@pytest.mark.slow
def test_device_check_without_a_gpu_is_refused_and_writes_nothing(tmp_path):
    out = tmp_path / "dc.json"
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "device_check.sh"), "--out", str(out)],
        cwd=BENCHMARKS.parent,
        env={**ENV, "TMPDIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "no CUDA GPU here" in result.stderr and "--dry-run" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no work folder, no JSON, nothing installed
