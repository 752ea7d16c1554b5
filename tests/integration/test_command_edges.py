"""What every command does at its edges: one set of recogniser options, mandatory keys and junk
checkpoints as one line with exit 2 and nothing written, --help that lists what the command
takes, and a predict run that is stopped midway never leaving a folder that lies."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch

from fer_lightning.cli import eval as eval_cli
from fer_lightning.cli import export, predict, serve, train
from fer_lightning.inference import outputs as outputs_module
from fer_lightning.inference.outputs import INCOMPLETE_MARKER, RUN_MARKER, STAGING_PREFIX
from fer_lightning.inference.samples import astronaut
from tests.helpers.hydra import ENV, compose_config, run_app
from tests.helpers.inference import SMALL_INPUT, save_lightning_checkpoint

COMMON = ["detector=none", "device=cpu", "precision=fp32"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_lightning_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.ckpt")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(6):
        cv2.imwrite(str(folder / f"face{i}.jpg"), astronaut())
    return folder


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def everything_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


# -- one set of recogniser options -------------------------------------------------------------


def test_predict_and_serve_compose_the_same_recogniser_keys():
    keys = ("ckpt_path", "arch", "input_size", "device", "precision", "margin", "align_faces")
    for name, extra in (("predict", ["source=x"]), ("serve", [])):
        cfg = compose_config(name, ["ckpt_path=a.ckpt", *extra, "margin=0.3", "detector=dlib"])
        assert [cfg[k] for k in keys] == ["a.ckpt", None, None, "auto", "auto", 0.3, True]
        assert cfg.detector.name == "dlib"
    export_cfg = compose_config("export", ["ckpt_path=a.ckpt"])
    assert (export_cfg.ckpt_path, export_cfg.arch, export_cfg.input_size) == ("a.ckpt", None, None)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("margin=-0.6", "margin=-0.6: must be at least 0."),
        ("detector.min_score=1.5", "detector.min_score=1.5: must be at most 1."),
        ("input_size=50", "input_size=50: input_size must be a multiple of 32"),
        ("precision=fp8", "precision=fp8: choose one of auto, fp32, bf16."),
        ("device=toaster", "device=toaster: not a device name"),
    ],
)
def test_predict_and_serve_give_the_same_answer_to_a_bad_value(
    checkpoint, tmp_path, capsys, override, message
):
    photo = tmp_path / "a.jpg"
    cv2.imwrite(str(photo), astronaut())
    answers = []
    for main, extra in ((predict.main, [f"source={photo}"]), (serve.main, [])):
        status = run_app(main, [f"ckpt_path={checkpoint}", *extra, override])
        err = capsys.readouterr().err
        answers.append((status, err.strip()))
    assert answers[0] == answers[1], answers  # the same status and the same one line
    assert answers[0][0] == 2 and answers[0][1].startswith(f"error: {message}"), answers


# -- mandatory keys, typed paths and junk checkpoints: one line, exit 2, nothing written --------


COMMANDS = {
    "predict": (predict.main, ["source={photo}"]),
    "serve": (serve.main, []),
    "export": (export.main, ["output={tmp}/m.onnx"]),
    "eval": (eval_cli.main, ["data=synthetic", "trainer=cpu"]),
}


def command_args(name: str, tmp_path: Path, photo: Path) -> tuple:
    main, extra = COMMANDS[name]
    args = [a.format(photo=photo, tmp=tmp_path) for a in extra]
    return main, [*args, f"paths.log_dir={tmp_path / 'outputs'}"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_missing_checkpoint_key_is_one_line_and_writes_nothing(name, tmp_path, capsys):
    photo = tmp_path / "a.jpg"
    cv2.imwrite(str(photo), astronaut())
    main, args = command_args(name, tmp_path, photo)
    status = run_app(main, args)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "ckpt_path is required: fer-" in err and "Traceback" not in err
    assert "MissingMandatoryValue" not in err
    assert everything_under(tmp_path / "outputs") == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("junk", ["hello", "truncated"])
def test_junk_checkpoint_bytes_are_one_line_exit_2_for_every_command(
    name, junk, checkpoint, tmp_path, capsys
):
    photo = tmp_path / "a.jpg"
    cv2.imwrite(str(photo), astronaut())
    bad = tmp_path / "x.ckpt"
    data = checkpoint.read_bytes()
    bad.write_bytes(b"hello" if junk == "hello" else data[: len(data) // 3])
    main, args = command_args(name, tmp_path, photo)
    status = run_app(main, [f"ckpt_path={bad}", *args])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and "x.ckpt" in err
    assert everything_under(tmp_path / "outputs") == []
    assert not (tmp_path / "m.onnx").exists()


def test_predict_source_that_is_not_there_writes_no_folder(checkpoint, tmp_path, capsys):
    status = run_app(
        predict.main,
        [f"ckpt_path={checkpoint}", f"source={tmp_path / 'nope'}", f"paths.log_dir={tmp_path}/o"],
    )
    assert status == 2 and "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- --help lists what the command takes ---------------------------------------------------------


TRAINING_GROUPS = ("debug:", "model:", "optimizer:", "trainer:", "callbacks:", "logger:")


@pytest.mark.parametrize(
    ("main", "sweeps"),
    [(predict.main, False), (serve.main, False), (export.main, False), (eval_cli.main, True)],
)
def test_help_lists_only_the_groups_the_command_takes(main, sweeps, capsys):
    assert run_app(main, ["--help"]) == 0
    out = capsys.readouterr().out
    groups = out.split("== Configuration groups")[-1]
    if main is eval_cli.main:
        assert "data:" in groups and "trainer:" in groups and "model:" not in groups
    else:
        assert not [g for g in TRAINING_GROUPS if g in groups], groups
    assert ("-m runs a sweep" in out) == sweeps
    if main in (predict.main, serve.main):
        assert "detector: auto, dlib" in groups
        assert "margin: null" in out and "ckpt_path: ???" in out  # conf/recognizer/ keys


def test_train_help_shows_the_keys_of_its_groups(capsys):
    assert run_app(train.main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert "-m runs a sweep" in out
    for section in ("conf/data/fer2013.yaml", "conf/trainer/default.yaml", "conf/model/"):
        assert section in out
    assert "max_epochs:" in out and "batch_size:" in out
    assert "debug: fast, limit, overfit, profiler" in out


# -- a predict run stopped midway ----------------------------------------------------------------


def predict_into(checkpoint: Path, source: Path, out: Path, *extra: str) -> int:
    args = [f"ckpt_path={checkpoint}", f"source={source}", f"output_dir={out}", *COMMON]
    return run_app(predict.main, [*args, f"input_size={SMALL_INPUT}", *extra])


def test_an_interrupted_run_leaves_the_earlier_run_whole(
    checkpoint, photos, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    assert predict_into(checkpoint, photos, out) == 0
    earlier = digest(out)
    written = []
    original = outputs_module.write_bytes

    def interrupted_after_two(path, data):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        return original(path, data)

    monkeypatch.setattr(predict, "write_image", lambda p, image: interrupted_after_two(p, b"x"))
    status = predict_into(checkpoint, photos, out, "align_faces=false")
    err = capsys.readouterr().err
    assert status == 1 and "keeps its earlier run" in err, err
    assert digest(out) == earlier  # not two images of the new run among the earlier ones
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*"))
    # Into a free folder, what was done is kept and says plainly that it is incomplete.
    written.clear()
    fresh = tmp_path / "fresh"
    assert predict_into(checkpoint, photos, fresh) == 1
    assert "INCOMPLETE.txt" in capsys.readouterr().err
    assert "interrupted" in (fresh / INCOMPLETE_MARKER).read_text()
    assert json.loads((fresh / RUN_MARKER).read_text())["complete"] is False


def test_a_folder_of_other_files_is_refused_and_left_alone(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    status = predict_into(checkpoint, photos, out)
    assert status == 2 and "already holds files" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_staging_left_by_a_dead_run_is_removed_and_a_live_one_kept(
    checkpoint, photos, tmp_path, capsys
):
    import fcntl

    dead = tmp_path / f"{STAGING_PREFIX}dead"
    (dead / "sub").mkdir(parents=True)
    (dead / ".partial-0123456789ab.jpg").write_bytes(b"half")
    (tmp_path / f"{STAGING_PREFIX}dead.lock").write_text("")
    live = tmp_path / f"{STAGING_PREFIX}live"
    live.mkdir()
    with open(tmp_path / f"{STAGING_PREFIX}live.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Another process holds the live lock (flock locks belong to the open file).
        assert predict_into(checkpoint, photos, tmp_path / "out") == 0
        capsys.readouterr()
        assert not dead.exists() and live.is_dir()


@pytest.mark.slow
def test_a_killed_predict_leaves_the_earlier_run_and_the_next_run_cleans_up(checkpoint, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for i in range(400):
        cv2.imwrite(str(source / f"face{i:03d}.jpg"), astronaut())
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "fer_lightning.predict",
        f"ckpt_path={checkpoint}",
        f"source={source}",
        f"output_dir={out}",
        *COMMON,
        f"input_size={SMALL_INPUT}",
        "image_batch=4",
    ]
    assert subprocess.run(args, env=ENV, capture_output=True, timeout=600).returncode == 0
    earlier = digest(out)
    # Run B with another crop setting, killed once it has written some of its images.
    process = subprocess.Popen([*args, "margin=0.3"], env=ENV, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        staged = [p for p in tmp_path.glob(f"{STAGING_PREFIX}*") if p.is_dir()]
        if staged and len(list(staged[0].glob("*.jpg"))) >= 8:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert digest(out) == earlier  # the earlier run, whole, and nothing of B in it
    assert [p for p in tmp_path.glob(f"{STAGING_PREFIX}*") if p.is_dir()]
    # The next run removes what the killed one left (its lock is free) and replaces the folder.
    assert subprocess.run(args, env=ENV, capture_output=True, timeout=600).returncode == 0
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*"))
    assert not list(out.rglob(".partial-*"))


# -- eval ----------------------------------------------------------------------------------------


def test_ensemble_rows_name_the_run_when_files_share_a_name():
    paths = [
        "outputs/train/demo/2026-01-01_10-00-00/checkpoints/last.ckpt",
        "outputs/train/demo/2026-01-02_10-00-00/checkpoints/last.ckpt",
        "elsewhere/best.ckpt",
    ]
    assert eval_cli.member_names(paths) == [
        "demo/2026-01-01_10-00-00/last.ckpt",
        "demo/2026-01-02_10-00-00/last.ckpt",
        "best.ckpt",
    ]


def test_predict_warns_once_about_a_model_trained_on_synthetic_faces(photos, tmp_path, capsys):
    path = save_lightning_checkpoint(tmp_path / "demo.ckpt")
    saved = torch.load(path, weights_only=True)
    saved["hyper_parameters"]["training_data"] = {"dataset": "synthetic", "synthetic": True}
    torch.save(saved, path)
    assert predict_into(path, photos, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert err.count("Caution:") == 1 and "synthetic demo faces" in err, err


@pytest.mark.slow
def test_eval_scores_on_the_data_the_checkpoint_was_trained_on(tmp_path, capsys):
    """No data=: the dataset the checkpoint records (here the synthetic faces), and the log
    says so; data= on the command line still chooses."""
    path = save_lightning_checkpoint(tmp_path / "demo.ckpt")
    saved = torch.load(path, weights_only=True)
    saved["hyper_parameters"]["training_data"] = {"dataset": "synthetic", "synthetic": True}
    torch.save(saved, path)
    common = [
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'outputs'}",
        "trainer=cpu",
        "trainer.limit_test_batches=1",
        "tta=false",
    ]
    status = run_app(eval_cli.main, [f"ckpt_path={path}", *common])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    (results,) = (tmp_path / "outputs").rglob("eval_results.json")
    log = (results.parent / "eval.log").read_text()
    assert "Evaluating on synthetic, the data the checkpoint was trained on" in log
    assert log.count("Caution:") == 1  # the provenance warning, once
    assert json.loads(results.read_text())["dataset"] == "synthetic"
    status = run_app(eval_cli.main, [f"ckpt_path={path}", *common, "data=fer2013"])
    assert status == 2 and "fer2013" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "args", [["--help"], [], ["data=jaffe"]], ids=["help", "missing-fer2013", "missing-jaffe"]
)
def test_train_help_and_refusals_leave_no_folder_when_the_process_ends(args, tmp_path):
    """Hydra may resolve the run folder more than once (for --help, and on a copy of the config
    before the task runs): whatever this process created and left empty is gone when it ends."""
    logs, data = tmp_path / "outputs", tmp_path / "data"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fer_lightning.train",
            *args,
            f"paths.log_dir={logs}",
            f"paths.data_dir={data}",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == (0 if args == ["--help"] else 2), result.stderr[-2000:]
    assert not logs.exists(), everything_under(logs)
