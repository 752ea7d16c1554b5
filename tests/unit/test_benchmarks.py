"""The benchmark scripts: each takes --json and records the machine with its figures and the
CPU's dense matmul peak, with each setting's share of it; the GPU benchmark's --dry-run runs
every path on the CPU (CI's check that it works without a GPU)."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = (
    "bench_train.py",
    "bench_inference.py",
    "bench_data.py",
    "bench_gpu.py",
    "bench_convs.py",
    "bench_tracking.py",
    "bench_serve.py",
)


def load_run_info():
    spec = importlib.util.spec_from_file_location("run_info", BENCHMARKS / "run_info.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_parsers(tree: ast.Module) -> tuple[set[str], set[str], set[str]]:
    """(parsers made, parsers that hold sub-commands, parsers given run_info's options)."""
    made, with_subcommands, with_options = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("ArgumentParser", "add_parser"):
                made.update(t.id for t in node.targets if isinstance(t, ast.Name))
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and func.attr == "add_subparsers":
            with_subcommands.add(getattr(func.value, "id", ""))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "add_options":
            with_options.update(a.id for a in node.args[:1] if isinstance(a, ast.Name))
    return made, with_subcommands, with_options


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_command_takes_json(script):
    tree = ast.parse((BENCHMARKS / script).read_text())
    made, with_subcommands, with_options = command_parsers(tree)
    commands = made - with_subcommands
    assert commands, f"{script}: no argparse parser found"
    assert commands <= with_options, f"{script}: {commands - with_options} lack --json"


def test_run_info_records_machine_reference_and_ratios(tmp_path, capsys, monkeypatch):
    import argparse

    run_info = load_run_info()
    parser = argparse.ArgumentParser()
    run_info.add_options(parser)
    monkeypatch.setattr(sys, "argv", ["bench_example.py", "--json", str(tmp_path / "out.json")])
    args = parser.parse_args(sys.argv[1:])
    run = run_info.Run("bench_example", "images/s", args.include_emulated_bf16, peak_size=256)
    assert capsys.readouterr().out.startswith(f"CPU: {run_info.cpu_model()}; bf16 ")
    run.set_reference("plain fp32", 2.0)
    run.add("faster", 5.0)
    label = run.bf16_label("bf16 setting")
    run.write_json(args.json, size=32)
    record = json.loads(args.json.read_text())
    assert record["reference"] == {"name": "plain fp32", "value": 2.0}
    assert record["settings"] == [{"name": "faster", "value": 5.0, "ratio": 2.5}]
    assert record["unit"] == "images/s" and record["size"] == 32
    assert len(record["load_average_start"]) == len(record["load_average_end"]) == 3
    assert record["command"] == f"python bench_example.py --json {args.json}"
    assert record["bf16_native"] is run.bf16_native
    if run.bf16_native:
        assert label == "bf16 setting" and record["skipped"] == []
    else:  # emulated bf16 is skipped by default, and said so
        assert label is None and record["skipped"][0].startswith("bf16 setting: bf16 is emulated")


def test_run_measures_the_matmul_peak_and_records_it(tmp_path, capsys):
    run_info = load_run_info()
    run = run_info.Run("bench_example", "images/s", peak_size=256)
    out = capsys.readouterr().out
    assert "dense matmul peak (torch.mm 256x256" in out and "fp32 " in out
    run.write_json(tmp_path / "out.json")
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["peak_tflops"]["fp32"] > 0
    if run.bf16_native:
        assert record["peak_tflops"]["bf16"] > 0 and "bf16 " in out
    else:  # emulated bf16 has no peak worth the name: not measured, and said so
        assert record["peak_tflops"]["bf16"] is None
        assert record["peak_matmul"]["note"].startswith("bf16 peak not measured")
    matmul = record["peak_matmul"]
    assert matmul["size"] == 256 and matmul["threads"] == run_info.torch.get_num_threads()
    assert 1 <= matmul["timed_products"]["fp32"] <= run_info.PEAK_REPEATS


def test_a_settings_share_is_its_model_flops_over_the_matching_peak(tmp_path):
    run_info = load_run_info()
    run = run_info.Run("bench_example", "images/s", peak_size=256)
    peak = run.peak_tflops
    run.set_reference("fp32 loop", 4.0, flops_per_item=3e9, precision="32-true")
    bf16 = run.add("bf16", 10.0, flops_per_item=3e9, precision="bf16-mixed")
    int8 = run.add("int8", 20.0, flops_per_item=1e9, precision="int8")
    conv = run.add("conv", 250.0, flops_per_second=6e10, precision="fp32")  # a time, in ms
    plain = run.add("no FLOPs", 1.0)
    reference = run.reference
    assert reference["model_tflops"] == pytest.approx(4.0 * 3e9 / 1e12)
    assert reference["peak"] == "fp32"
    assert reference["peak_share"] == pytest.approx(4.0 * 3e9 / 1e12 / peak["fp32"])
    assert int8["peak"] == "fp32" and int8["peak_note"] == run_info.INT8_NOTE
    assert int8["peak_share"] == pytest.approx(20.0 * 1e9 / 1e12 / peak["fp32"])
    assert conv["peak_share"] == pytest.approx(6e10 / 1e12 / peak["fp32"])
    assert "model_tflops" not in plain and run.share_text(plain) == ""
    assert bf16["peak"] == "bf16" and bf16["model_tflops"] == pytest.approx(0.03)
    if run.bf16_native:
        assert bf16["peak_share"] == pytest.approx(0.03 / peak["bf16"])
        assert run.share_text(bf16).endswith("% of the bf16 peak")
    else:
        assert bf16["peak_share"] is None and "no bf16 peak measured" in bf16["peak_note"]
    assert "int8: no int8 peak measured" in run.share_text(int8)
    run.write_json(tmp_path / "out.json")
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["settings"][0]["peak_share"] == bf16["peak_share"]


def test_a_precision_without_a_peak_is_refused_by_name():
    run_info = load_run_info()
    run = run_info.Run("bench_example", "images/s", peak_size=128)
    with pytest.raises(ValueError, match="precision '16-mixed'"):
        run.add("fp16", 1.0, flops_per_item=1e9, precision="16-mixed")
    with pytest.raises(SystemExit, match="--peak-size must be a positive"):
        run_info.Run("bench_example", "images/s", peak_size=0)


def test_training_flops_are_three_forwards_of_the_zoo_count():
    from fer_lightning.models.zoo import describe

    run_info = load_run_info()
    forward = run_info.model_flops_per_image("resnet18", 64)
    assert forward == pytest.approx(describe("resnet18", 64)["gflops"] * 1e9)
    assert run_info.model_flops_per_image("resnet18", 64, training=True) == 3 * forward
