"""Every shell command in README.md's ```bash blocks is run, or listed with why it cannot be.

The commands are read from README.md at run time (lines ending in ``\\`` joined, comments
stripped, ``a && b`` split into two commands, the leading ``NO_ALBUMENTATIONS_UPDATE=1`` dropped:
the environment sets it) and run through ``bash -c`` in a working folder laid out as a reader's
is (tests/helpers/readme_workdir.py), offline. Commands that would train for long get small
overrides appended (one epoch of two batches at 32x32; sweeps keep ``-m`` with at most two jobs);
every Hydra command gets ``paths.root_dir=<work folder>`` so that nothing is written into the
checkout. ``fer-serve`` lines start a server on a free port, and the ``curl`` lines are sent to
the one serving the demo checkpoint. A README command that is neither run here nor listed in
``NOT_EXECUTED`` fails ``test_every_readme_command_is_run_or_listed``.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from fer_lightning.cli.config import CONFIG_DIR
from tests.helpers.hydra import ENV
from tests.helpers.readme_workdir import (
    BEST_CHECKPOINT,
    DEMO_RUN,
    write_caches,
    write_datasets,
    write_demo_run,
    write_photos_and_videos,
)
from tests.helpers.serve import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
COMMAND_TIMEOUT_S = 300
SERVER_START_TIMEOUT_S = 180

# --------------------------------------------------------------------------------------------
# Reading the commands


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def _strip_comment_and_split(line: str) -> list[str]:
    """``line`` without its trailing ``# comment``, cut at top-level ``&&``, whitespace
    outside quotes collapsed. Quotes and ``$(...)`` are respected."""
    commands, current, quote, depth, i = [], [], "", 0, 0
    while i < len(line):
        char = line[i]
        if quote:
            current.append(char)
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
            current.append(char)
        elif line.startswith("$(", i):
            depth += 1
            current.append("$(")
            i += 1
        elif char == ")" and depth:
            depth -= 1
            current.append(char)
        elif char == "#" and depth == 0 and (not current or current[-1] == " "):
            break
        elif line.startswith("&&", i) and depth == 0:
            commands.append("".join(current))
            current = []
            i += 1
        elif char.isspace():
            if current and current[-1] != " ":
                current.append(" ")
        else:
            current.append(char)
        i += 1
    commands.append("".join(current))
    return [command.strip() for command in commands if command.strip()]


# A line that only sets a shell variable for the block's later lines: BEST=$(ls ... | head -1).
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\$\(.*\)|\S+)$")


def readme_commands(text: str) -> list[str]:
    """The shell commands of ``text``'s ```bash blocks, in order, each once. A variable set on
    a line of its own is written into the block's later commands where they use it (``$BEST``
    becomes its ``$(...)``), so that each command runs on its own."""
    commands: list[str] = []
    for block in bash_blocks(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        variables: dict[str, str] = {}
        for line in joined.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            for command in _strip_comment_and_split(line):
                command = re.sub(r"^NO_ALBUMENTATIONS_UPDATE=1 ", "", command)
                assignment = ASSIGNMENT.match(command)
                if assignment:
                    variables[assignment.group(1)] = assignment.group(2)
                    continue
                for name, value in variables.items():
                    command = re.sub(rf"\$\{{?{name}\b\}}?", lambda _m, v=value: v, command)
                if command not in commands:
                    commands.append(command)
    return commands


# --------------------------------------------------------------------------------------------
# Commands that are not run here, each with the reason (and another check where one exists)


@dataclass(frozen=True)
class NotExecuted:
    pattern: str
    reason: str
    # How the line is checked instead: "cfg_job" composes it with --cfg job; "cfg_job_slurm"
    # does so where hydra-submitit-launcher is installed; None: not checked.
    check: str | None = None


NOT_EXECUTED = (
    NotExecuted(r"^pip install ", "installs packages; the suite runs in the installed project"),
    NotExecuted(r"^python -m pytest\b", "the test command itself (it would run this test)"),
    NotExecuted(r"^docker (build|run)\b", "no Docker engine on the project's machines"),
    NotExecuted(
        r"^(fer-predict|python -m fer_lightning\.predict) .*\bsource=\d+\b",
        "a webcam: the machines have none; the line is composed with --cfg job instead",
        check="cfg_job",
    ),
    NotExecuted(
        r"^torchrun\b.* -m fer_lightning\.train\b",
        "two machines: tests/integration/test_multinode.py runs the two-node form on 127.0.0.1; "
        "the training command after torchrun's options is composed with --cfg job instead",
        check="cfg_job",
    ),
    NotExecuted(
        r"hydra/launcher=submitit_slurm",
        "the SLURM launcher needs a cluster; the line is composed with --cfg job instead "
        "(where hydra-submitit-launcher is installed)",
        check="cfg_job_slurm",
    ),
)

# --------------------------------------------------------------------------------------------
# How the run commands are run

_APPS = "train|eval|predict|export|serve"
HYDRA_APP = re.compile(rf"^(fer-({_APPS})|python -m fer_lightning\.({_APPS}))\b")
TRAIN = re.compile(r"^(fer-train|python -m fer_lightning\.train)\b")
# One epoch of two training batches at 32x32, from scratch (no ImageNet download), quiet.
SMALL_TRAINING = (
    "trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=1 "
    "trainer.limit_test_batches=1 trainer.num_sanity_val_steps=0 data.input_size=32 "
    "data.batch_size=4 data.num_workers=0 model.pretrained_backbone=null logger=csv"
)
# The demo keeps its checkpoints (checked); the other runs skip them (and write none: checked)
# and the TTA views: a Residual Masking Network's checkpoint with optimiser state is 1.65 GB,
# and four of them filled a CI machine's disk.
DEMO_TRAINING = f"{SMALL_TRAINING} callbacks.progress_bar.refresh_rate=0"
OTHER_TRAINING = f"{SMALL_TRAINING} callbacks=none tta=false"
SWEEP_VALUES_KEPT = 2
SMALL_EVAL = (
    "trainer.limit_test_batches=1 trainer.limit_val_batches=1 data.batch_size=4 data.num_workers=0 "
    "tta=false"
)


def shrink_sweep(command: str) -> str:
    """A ``-m`` command with at most two jobs: the first swept key keeps two values, the
    others one; ``range(N)`` becomes ``range(2)``."""
    kept = [SWEEP_VALUES_KEPT]

    def shrink(match: re.Match[str]) -> str:
        values = match.group(2).split(",")
        keep = kept[0]
        kept[0] = 1
        return f"{match.group(1)}={','.join(values[:keep])}"

    command = re.sub(r"range\(\d+\)", f"range({SWEEP_VALUES_KEPT})", command)
    return re.sub(r"(?<=\s)([\w./]+)=([^\s,'\"]+(?:,[^\s,'\"]+)+)(?=\s|$)", shrink, command)


@dataclass
class Plan:
    """How one README command runs: the text run, the folder, the expected exit status and
    what it must have produced."""

    readme: str
    command: str
    cwd: Path
    status: int = 0
    checks: list[Callable[[Path, subprocess.CompletedProcess], None]] = field(default_factory=list)


def is_run_here(command: str) -> bool:
    """A command this module runs (the rest must be in NOT_EXECUTED)."""
    return bool(
        HYDRA_APP.match(command)
        or command.startswith("python -m fer_lightning.data ")
        or command.startswith("python -c ")
        or command.startswith("curl ")
    )


def not_executed_entry(command: str) -> NotExecuted | None:
    return next((entry for entry in NOT_EXECUTED if re.search(entry.pattern, command)), None)


def uncovered_commands(text: str) -> list[str]:
    """Commands of ``text`` that are neither run here nor listed in NOT_EXECUTED."""
    return [
        command
        for command in readme_commands(text)
        if not_executed_entry(command) is None and not is_run_here(command)
    ]


# --------------------------------------------------------------------------------------------
# Checks of what a command produced


def new_files(root: Path, pattern: str, since: float) -> list[Path]:
    return [path for path in root.glob(pattern) if path.stat().st_mtime >= since]


def results_completed(kind: str, name: str) -> Callable[[Path, subprocess.CompletedProcess], None]:
    """A new ``name`` under ``outputs/<kind>/`` whose status (where it has one) is completed."""

    def check(work: Path, result: subprocess.CompletedProcess) -> None:
        found = [
            path
            for path in (work / "outputs").rglob(name)
            if path.stat().st_mtime >= result.started  # type: ignore[attr-defined]
            and f"/{kind}/" in path.as_posix()
        ]
        assert found, f"no new {name} under outputs/{kind}/"
        for path in found:
            status = json.loads(path.read_text()).get("status", "completed")
            assert status == "completed", f"{path}: status {status!r}"

    return check


def no_new_checkpoint(work: Path, result: subprocess.CompletedProcess) -> None:
    """callbacks=none writes no checkpoint at all (Lightning adds none of its own)."""
    started = result.started  # type: ignore[attr-defined]
    written = new_files(work, "outputs/**/*.ckpt", started)
    assert not written, f"callbacks=none wrote checkpoints: {written}"


def file_written(relative: str) -> Callable[[Path, subprocess.CompletedProcess], None]:
    def check(work: Path, result: subprocess.CompletedProcess) -> None:
        started = result.started  # type: ignore[attr-defined]
        found = [path for path in work.glob(relative) if path.stat().st_mtime >= started]
        assert found, f"{relative} was not written"

    return check


def plan_for(command: str, work: Path, sources: dict[str, Path]) -> Plan:
    """How ``command`` (a README command that is run here) is run in ``work``."""
    run = command.replace("2026-11-28_10-00-00", DEMO_RUN.name)
    run = run.replace("<run>", DEMO_RUN.name).replace("<best>.ckpt", BEST_CHECKPOINT)
    plan = Plan(readme=command, command=run, cwd=work)
    if HYDRA_APP.match(command):
        if TRAIN.match(command):
            if " -m " in f" {command} ":
                plan.command = shrink_sweep(plan.command)
            demo = re.search(r"\bexperiment=demo\b", command) is not None
            plan.command += f" {DEMO_TRAINING if demo else OTHER_TRAINING}"
            if re.search(r"\bckpt_path=last\b", command):
                # A resumed run goes on for one more epoch than the one-epoch run it resumes
                # (else it has nothing to do and writes no new last.ckpt).
                plan.command = plan.command.replace("trainer.max_epochs=1", "trainer.max_epochs=2")
            plan.checks.append(results_completed("train", "results.json"))
            if not demo:
                plan.checks.append(no_new_checkpoint)
            if demo:
                plan.checks.append(file_written("outputs/train/demo/*/model.pt"))
                plan.checks.append(file_written("outputs/train/demo/*/checkpoints/last.ckpt"))
        plan.command += f" paths.root_dir={work}"
        if re.match(r"^(fer-eval|python -m fer_lightning\.eval)\b", command):
            # A few faces, no TTA views: an ensemble with the published network at 224 px over
            # the demo's 420 test faces in 10 views is an hour of CPU, and its temperature fit
            # on 420 validation faces over 5 minutes (on one batch the fit is refused, as
            # documented, and the command completes).
            plan.command += f" {SMALL_EVAL}"
            plan.checks.append(results_completed("eval", "eval_results.json"))
        if re.match(r"^(fer-predict|python -m fer_lightning\.predict)\b", command):
            output = re.search(r"\boutput_dir=(\S+)", command)
            where = (
                f"{output.group(1)}/predictions.csv"
                if output
                else "outputs/predict/*/predictions.csv"
            )
            plan.checks.append(file_written(where))
        if re.match(r"^(fer-export|python -m fer_lightning\.export)\b", command):
            output = re.search(r"\boutput=(\S+)", command)
            if output:
                plan.checks.append(file_written(output.group(1)))
    elif command.startswith("python -m fer_lightning.data prepare "):
        kind = command.split()[4]
        # A reader converts images they have into a CSV they do not have yet: a folder of its own.
        plan.cwd = work / f"prepare-{kind}"
        plan.cwd.mkdir(exist_ok=True)
        plan.command = re.sub(r"\bSRC\b", str(sources[kind]), plan.command)
        plan.checks.append(file_written(plan.command.split()[6]))
    elif command.startswith("python -c "):
        written = re.findall(r"['\"](data/[\w./-]+)['\"]", command)
        plan.checks.extend(file_written(f"{path}/*") for path in written)
    return plan


def run_plan(plan: Plan) -> subprocess.CompletedProcess:
    started = time.time() - 1
    result = subprocess.run(
        ["bash", "-c", plan.command],
        cwd=plan.cwd,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    result.started = started  # type: ignore[attr-defined]
    return result


# The work folder's caches (set by the ``work`` fixture).
_CACHE_ENV: dict[str, str] = {}


def command_env() -> dict[str, str]:
    return {**ENV, **_CACHE_ENV, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}


# --------------------------------------------------------------------------------------------
# Fixtures

COMMANDS = readme_commands(README.read_text(encoding="utf-8"))
SERVE = re.compile(r"^(fer-serve|python -m fer_lightning\.serve)\b")
RUN_COMMANDS = [
    c
    for c in COMMANDS
    if is_run_here(c)
    and not c.startswith("curl ")
    and not SERVE.match(c)
    and not_executed_entry(c) is None
]
SERVE_COMMANDS = [c for c in COMMANDS if SERVE.match(c) and not_executed_entry(c) is None]
CURL_COMMANDS = [c for c in COMMANDS if c.startswith("curl ")]
CHECKED_INSTEAD = [c for c in COMMANDS if (e := not_executed_entry(c)) is not None and e.check]


def short_id(command: str) -> str:
    return re.sub(r"\s+", " ", command)[:90]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Path]]]:
    """The reader's folder (photos, the demo run, FER2013 with FER+ votes, JAFFE and FACES
    converted, the image folders for ``prepare``, the published checkpoint in the cache).
    Removed afterwards: the Residual Masking Networks' files in it come to gigabytes."""
    root = tmp_path_factory.mktemp("readme") / "work"
    root.mkdir()
    write_photos_and_videos(root)
    run = write_demo_run(root)
    # The ensemble example's two checkpoints of the reader's own.
    shutil.copyfile(run / "checkpoints" / BEST_CHECKPOINT, root / "a.ckpt")
    shutil.copyfile(run / "checkpoints" / "last.ckpt", root / "b.ckpt")
    text = "\n".join(COMMANDS)
    _CACHE_ENV.clear()
    _CACHE_ENV.update(write_caches(root, published="pretrained:" in text, imagenet=False))
    sources = write_datasets(root)
    yield root, sources
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Fast: the reader and the matcher

SAMPLE_README = """
Intro.

```bash
pip install -e ".[dev]" && python -m fer_lightning.train experiment=demo   # install, train
NO_ALBUMENTATIONS_UPDATE=1 python -m pytest                                # tests
python -m fer_lightning.data prepare jaffe  SRC data/jaffe/jaffe.csv
    # options: --detector none
python -m fer_lightning.train -m hydra/launcher=submitit_slurm \\
    trainer=ddp
fer-serve ckpt_path=$(ls -t outputs/*/x.ckpt | head -1)   # a # inside: 127.0.0.1:8000
```

```python
print("not a shell command")
```

```bash
python -c "print('a # not a comment && nor a split')"
fer-predict ckpt_path=x.ckpt source=0 max_frames=3
```
"""


def test_readme_commands_are_read_as_a_shell_reads_them():
    assert readme_commands(SAMPLE_README) == [
        'pip install -e ".[dev]"',
        "python -m fer_lightning.train experiment=demo",
        "python -m pytest",
        "python -m fer_lightning.data prepare jaffe SRC data/jaffe/jaffe.csv",
        "python -m fer_lightning.train -m hydra/launcher=submitit_slurm trainer=ddp",
        "fer-serve ckpt_path=$(ls -t outputs/*/x.ckpt | head -1)",
        "python -c \"print('a # not a comment && nor a split')\"",
        "fer-predict ckpt_path=x.ckpt source=0 max_frames=3",
    ]


def test_a_new_readme_command_that_is_neither_run_nor_listed_is_found():
    assert uncovered_commands(SAMPLE_README) == []
    extended = SAMPLE_README + "\n```bash\nmake deploy   # new\nfer-train model=resnet18\n```\n"
    assert uncovered_commands(extended) == ["make deploy"]


def test_sweeps_shrink_to_two_jobs():
    assert shrink_sweep("python -m fer_lightning.train -m model=a,b,c seed=1,2") == (
        "python -m fer_lightning.train -m model=a,b seed=1"
    )
    assert shrink_sweep("fer-train -m experiment=jaffe_cv data.fold='range(10)'") == (
        "fer-train -m experiment=jaffe_cv data.fold='range(2)'"
    )


def test_every_readme_command_is_run_or_listed():
    uncovered = uncovered_commands(README.read_text(encoding="utf-8"))
    assert not uncovered, (
        "README.md commands neither run by tests/integration/test_readme_commands.py nor listed "
        f"in its NOT_EXECUTED table (with the reason): {uncovered}"
    )


# --------------------------------------------------------------------------------------------
# Slow: the commands


def _explain(plan: Plan, result: subprocess.CompletedProcess) -> str:
    return (
        f"README command: {plan.readme}\nran: {plan.command}\n(in {plan.cwd})\n"
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n"
        f"{result.stderr[-4000:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", RUN_COMMANDS, ids=short_id)
def test_readme_command_runs(command: str, work: tuple[Path, dict[str, Path]]):
    root, sources = work
    plan = plan_for(command, root, sources)
    result = run_plan(plan)
    assert result.returncode == plan.status, _explain(plan, result)
    for check in plan.checks:
        try:
            check(plan.cwd, result)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{_explain(plan, result)}") from None
    if TRAIN.match(command) and not re.search(r"\bexperiment=demo\b", command):
        _remove_new_runs(plan.cwd, result)


def _remove_new_runs(work: Path, result: subprocess.CompletedProcess) -> None:
    """Checked runs other than the demo's are removed: no later command reads them, and each
    Residual Masking Network run holds a 550 MB model.pt (the module's runs came to 6 GB)."""
    for path in new_files(work, "outputs/train/**/results.json", result.started):  # type: ignore[attr-defined]
        shutil.rmtree(path.parent, ignore_errors=True)


def _start_server(command: str, root: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    line = f"exec {command} port={port} paths.root_dir={root}"
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["bash", "-c", line], cwd=root, env=command_env(), stdout=out, stderr=out
        )


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()}"
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no answer within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.mark.slow
@pytest.mark.parametrize("command", SERVE_COMMANDS, ids=short_id)
def test_readme_serve_command_serves(command: str, work: tuple[Path, dict[str, Path]]):
    """The server starts and answers; the README's curl lines (sent to the one serving the demo
    checkpoint, on its port) get faces back; SIGTERM ends it with status 0."""
    root, _ = work
    port = free_port()
    log = root / f"serve-{port}.log"
    process = _start_server(command, root, port, log)
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}", log)
        if "pretrained:" not in command:
            for curl in CURL_COMMANDS:
                line = curl.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                result = subprocess.run(
                    ["bash", "-c", f"{line} --fail-with-body --silent --show-error"],
                    cwd=root,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert result.returncode == 0, f"{curl}: {result.stdout}{result.stderr}"
                answer = json.loads(result.stdout)
                assert answer["faces"], f"{curl}: no face in {answer}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert status == 0, f"{command}: SIGTERM ended it with {status}:\n{log.read_text()}"


def test_curl_lines_have_a_server_to_talk_to():
    """The curl lines are run by the serve test above: that needs a fer-serve line that serves a
    checkpoint of the reader's own (not the published download)."""
    if CURL_COMMANDS:
        assert any("pretrained:" not in command for command in SERVE_COMMANDS), CURL_COMMANDS


@pytest.mark.slow
@pytest.mark.parametrize("command", CHECKED_INSTEAD, ids=short_id)
def test_readme_command_that_cannot_run_here_composes(
    command: str, work: tuple[Path, dict[str, Path]]
):
    entry = not_executed_entry(command)
    assert entry is not None
    if entry.check == "cfg_job_slurm":
        pytest.importorskip(
            "hydra_plugins.hydra_submitit_launcher",
            reason="hydra-submitit-launcher is not installed (pip install -e '.[slurm]')",
        )
    root, _ = work
    # torchrun starts the training command on each machine: compose that command.
    started = re.sub(r"^torchrun\b.*?(?= -m fer_lightning\.train\b)", "python", command)
    # --cfg composes one job: Hydra refuses it together with -m (the sweep's jobs compose alike).
    app = HYDRA_APP.match(started)
    prefix, options = (started[: app.end()], started[app.end() :]) if app else ("", started)
    composed = prefix + re.sub(r"\s-m(?=\s)", "", options, count=1)
    plan = Plan(readme=command, command=f"{composed} paths.root_dir={root} --cfg job", cwd=root)
    result = run_plan(plan)
    assert result.returncode == 0, _explain(plan, result)
    # A value the shell computes ($(...)) is not in the config as typed; the runs check it.
    typed = re.sub(r"\S*\$\([^)]*\)\S*", "", started)
    for override in (word for word in typed.split() if "=" in word):
        key, value = override.split("=", 1)
        # Group choices and Hydra's own settings are not keys of the job's config.
        if key.startswith("hydra") or (CONFIG_DIR / key.split("/")[0]).is_dir():
            continue
        leaf = key.split(".")[-1].lstrip("+")
        assert re.search(rf"^\s*{re.escape(leaf)}: {re.escape(value)}\s*$", result.stdout, re.M), (
            f"{override} is not in the composed config:\n{result.stdout[-3000:]}"
        )
