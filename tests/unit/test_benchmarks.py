"""The benchmark scripts: each takes --json and records the machine with its figures; the GPU
benchmark's --dry-run runs every path on the CPU (CI's check that it works without a GPU)."""

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
    run = run_info.Run("bench_example", "images/s", args.include_emulated_bf16)
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
