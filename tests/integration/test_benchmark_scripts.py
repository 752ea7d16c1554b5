"""The benchmark scripts run as commands: the GPU benchmark's --dry-run covers every setting
on the CPU, every script's --help mentions --json, and the CPU benchmarks record the dense
matmul peak with each setting's share of it (bench_data: the workers its loader needs)."""

from __future__ import annotations

import json
import math
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
        ["bench_serve.py"],
        ["learning_seeds.py"],
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


def run_benchmark(tmp_path, script: str, *args: str) -> tuple[dict, str]:
    out = tmp_path / f"{script}.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--peak-size", "512", "--json", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), result.stdout


@pytest.mark.slow
def test_train_benchmark_records_each_settings_share_of_the_peak(tmp_path):
    from fer_lightning.models.zoo import describe

    record, stdout = run_benchmark(
        tmp_path,
        "bench_train.py",
        *("--arch", "resnet18", "--sizes", "32:4", "--steps", "1"),
        *("--only", "Lightning 32-true, project defaults"),
    )
    peak = record["peak_tflops"]
    assert peak["fp32"] > 0 and record["peak_matmul"]["size"] == 512
    assert "dense matmul peak (torch.mm 512x512" in stdout
    flops = 3 * describe("resnet18", 32)["gflops"] * 1e9  # a training step: 3 forwards
    for setting in (record["reference"], *record["settings"]):
        assert setting["flops_per_item"] == pytest.approx(flops)
        tflops = setting["value"] * flops / 1e12
        assert setting["model_tflops"] == pytest.approx(tflops)
        assert setting["peak"] == "fp32"
        assert setting["peak_share"] == pytest.approx(tflops / peak["fp32"])
    assert "% of the fp32 peak" in stdout


@pytest.mark.slow
def test_inference_benchmark_gives_every_setting_its_share_of_its_precisions_peak(tmp_path):
    from fer_lightning.models.zoo import describe

    record, stdout = run_benchmark(
        tmp_path,
        "bench_inference.py",
        "speed",
        "--arch",
        "resnet18",
        "--size",
        "64",
        "--repeats",
        "1",
    )
    flops = describe("resnet18", 64)["gflops"] * 1e9  # inference: the forward alone
    peak = record["peak_tflops"]
    names = [setting["name"] for setting in (record["reference"], *record["settings"])]
    assert "int8 ONNX, batched" in names and "per-face fp32 loop" in names
    for setting in (record["reference"], *record["settings"]):
        expected = (
            "int8" if "int8" in setting["name"] else "bf16" if "bf16" in setting["name"] else "fp32"
        )
        assert setting["precision"] == expected
        assert setting["model_tflops"] == pytest.approx(setting["value"] * flops / 1e12)
        matching = "bf16" if expected == "bf16" else "fp32"
        assert setting["peak_share"] == pytest.approx(setting["model_tflops"] / peak[matching])
    assert "no int8 peak measured" in stdout


@pytest.mark.slow
def test_data_benchmark_states_the_workers_a_target_rate_needs(tmp_path):
    record, stdout = run_benchmark(
        tmp_path,
        "bench_data.py",
        *("--rows", "600", "--loader-samples", "96", "--worker-samples", "480"),
        *("--batch-size", "48", "--target", "50000"),
    )
    assert record["peak_tflops"]["fp32"] > 0
    workers = record["loader_workers"]
    rate = workers["augment_on_images_per_cpu_s"]
    assert 0 < rate < workers["augment_off_images_per_cpu_s"]  # augmenting costs time
    assert workers["one_worker_loader_images_per_s_wall"] > 0
    assert workers["workers_needed"] == math.ceil(50000 / rate)
    assert workers["fits_a_16_core_host"] == (workers["workers_needed"] <= 16)
    assert f"50000 images/s need {workers['workers_needed']} worker" in stdout
