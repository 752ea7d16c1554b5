"""More than one machine, played on one: a sweep through Hydra's submitit launcher and a two-node
DDP run started by torchrun.

``hydra/launcher=submitit_local`` runs each job the way ``submitit_slurm`` does on a cluster (the
job pickled, started by submitit in a process of its own, its result pickled back), without the
scheduler. ``torchrun --nnodes=2`` on 127.0.0.1 starts the two "nodes" a user starts on two
machines that share a filesystem (gloo, one CPU process per node). No real cluster is involved.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fer_lightning.data import FERDataModule
from fer_lightning.models.checkpoints import load_model
from fer_lightning.training.evaluate import evaluate_network

pytestmark = pytest.mark.slow

# 7 classes x 1 face: 7 validation and 7 test faces, which 2 processes cannot share evenly
# (Lightning's DistributedSampler would pad the split to 8 with a repeated face). Validation
# batches of 3: one process scores 2 batches, the other 1.
FACES_PER_CLASS = {"train_per_class": 2, "val_per_class": 1, "test_per_class": 1}
SPLIT_SIZE = 7
TINY_RUN = [
    "experiment=demo",
    "data.input_size=32",
    "data.batch_size=4",
    "data.eval_batch_size=3",
    "data.num_workers=0",
    *(f"data.synthetic.{key}={value}" for key, value in FACES_PER_CLASS.items()),
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    # fp32: the test below scores the checkpoint again on one process and compares.
    "trainer.precision=32-true",
    "logger=csv",
    "tta=false",
    "callbacks.progress_bar.refresh_rate=0",
]


def _env() -> dict[str, str]:
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _one(paths: list[Path], what: str) -> Path:
    assert len(paths) == 1, f"expected one {what}, found {paths}"
    return paths[0]


def test_sweep_through_submitit_runs_each_job_in_its_own_folder(tmp_path: Path):
    command = [
        sys.executable,
        "-m",
        "fer_lightning.train",
        "-m",
        "hydra/launcher=submitit_local",
        "seed=1,2",
        f"paths.root_dir={tmp_path}",
        *TINY_RUN,
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=480
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep_dir = _one(list((tmp_path / "outputs" / "train" / "demo").glob("multirun_*")), "sweep")

    # submitit ran both jobs: one folder per submitit job, its log and its pickled result.
    submitit_jobs = {p.name: p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()}
    assert len(submitit_jobs) == 2, sorted((sweep_dir / ".submitit").iterdir())
    for job_id, folder in submitit_jobs.items():
        assert "Starting with JobEnvironment" in (folder / f"{job_id}_0_log.out").read_text()
        with open(folder / f"{job_id}_0_result.pkl", "rb") as file:
            outcome, job_return = pickle.load(file)
        assert outcome == "success", job_return
        assert str(job_return.status) == "JobStatus.COMPLETED", job_return

    seen_job_ids = set()
    for number, seed in ((0, 1), (1, 2)):
        job_dir = sweep_dir / str(number)
        hydra_job = (job_dir / ".hydra" / "hydra.yaml").read_text()
        # Hydra records the submitit job that ran this folder's job.
        seen_job_ids |= {job_id for job_id in submitit_jobs if f"id: '{job_id}'" in hydra_job}
        results = json.loads((job_dir / "results.json").read_text())
        assert results["status"] == "completed"
        assert results["seed"] == seed
        assert results["test/samples"] == SPLIT_SIZE
        assert results["best_checkpoint"] == str((job_dir / "checkpoints" / "best.ckpt").resolve())
        assert sorted(p.name for p in (job_dir / "checkpoints").iterdir()) == [
            "best.ckpt",
            "last.ckpt",
        ]
    assert seen_job_ids == set(submitit_jobs)

    summary = pd.read_csv(sweep_dir / "summary.csv")
    jobs = summary[summary["job"].astype(str).isin(["0", "1"])]
    assert list(jobs["job"].astype(str)) == ["0", "1"]
    assert list(jobs["status"]) == ["completed", "completed"]
    assert ["seed=1" in jobs["overrides"].iloc[0], "seed=2" in jobs["overrides"].iloc[1]] == [
        True,
        True,
    ]
    assert (sweep_dir / "summary.md").is_file()


def test_two_nodes_by_torchrun_write_one_run_and_count_each_face_once(tmp_path: Path):
    port = _free_port()
    nodes = []
    for node_rank in (0, 1):
        log = open(tmp_path / f"node{node_rank}.log", "w")  # noqa: SIM115 (closed below)
        command = [
            *(sys.executable, "-m", "torch.distributed.run"),
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={node_rank}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            *("-m", "fer_lightning.train"),
            f"paths.root_dir={tmp_path}",
            *TINY_RUN,
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.num_nodes=2",
            "trainer.strategy=ddp",
        ]
        # A session of its own: a hung run is ended with torchrun's workers, not torchrun alone.
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        nodes.append((process, log))
    try:
        codes = [process.wait(timeout=480) for process, _ in nodes]
    finally:
        for process, log in nodes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()
    logs = [(tmp_path / f"node{rank}.log").read_text()[-3000:] for rank in (0, 1)]
    assert codes == [0, 0], "\n\n".join(logs)
    check_one_run_that_counts_each_face_once(tmp_path)


def test_ddp_on_one_machine_tests_once_after_training(tmp_path: Path):
    """Lightning's own launcher (trainer=ddp on one machine) starts the second process; rank 0
    still tests alone after training (it used to wait there for ever for the finished rank)."""
    command = [
        *(sys.executable, "-m", "fer_lightning.train"),
        f"paths.root_dir={tmp_path}",
        *TINY_RUN,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    ]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=480,
        start_new_session=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_one_run_that_counts_each_face_once(tmp_path, other_rank_logs=("train_ddp_process_1.log",))


def check_one_run_that_counts_each_face_once(
    root: Path, other_rank_logs: tuple[str, ...] = ()
) -> None:
    """One run folder under ``root`` (rank 0's) with the run's only checkpoints, results.json and
    train.log (the other rank's own log, where its launcher names one, beside it); the 7 test
    faces counted once; the validation accuracy that chose best.ckpt counting each face once."""
    run_dir = _one(list((root / "outputs" / "train" / "demo").iterdir()), "run folder")
    assert _one(list(root.rglob("results.json")), "results.json") == run_dir / "results.json"
    assert _one(list(root.rglob("checkpoints")), "checkpoint folder") == run_dir / "checkpoints"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    run_logs = [path for path in root.rglob("*.log") if path.parent != root]  # not the consoles
    assert sorted(run_logs) == sorted(run_dir / name for name in ["train.log", *other_rank_logs])

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["test/samples"] == SPLIT_SIZE
    assert sum(map(sum, results["test/confusion_matrix"])) == SPLIT_SIZE

    # val/acc is the accuracy of best.ckpt on the 7 validation faces scored on one process (with
    # a face repeated to share 8 between 2 processes, it would be k/8).
    val_acc = _one(results["history"], "epoch")["val/acc"]
    datamodule = FERDataModule(
        "synthetic",
        root=str(root / "data"),
        batch_size=SPLIT_SIZE,
        num_workers=0,
        input_size=32,
        synthetic={**FACES_PER_CLASS, "seed": 0},
    )
    datamodule.setup("fit")
    assert len(datamodule.val_set) == SPLIT_SIZE
    predictions = evaluate_network(
        load_model(run_dir / "checkpoints" / "best.ckpt"),
        datamodule,
        input_size=32,
        tta=False,
        accelerator="cpu",
        precision="32-true",
        progress=False,
        split="val",
    )
    assert len(predictions.labels) == SPLIT_SIZE
    single_process_acc = (predictions.probs.argmax(1) == predictions.labels).float().mean()
    assert val_acc == pytest.approx(float(single_process_acc), abs=1e-6)
    assert val_acc * SPLIT_SIZE == pytest.approx(round(val_acc * SPLIT_SIZE), abs=1e-4)
