"""The console scripts work from any folder, and the wheel carries conf/ (installed for real)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.helpers.hydra import ENV

PROJECT = Path(__file__).resolve().parents[2]
COMMANDS = ("fer-train", "fer-eval", "fer-predict", "fer-export", "fer-serve")
# A one-epoch demo on a few synthetic faces.
TINY_DEMO = [
    "experiment=demo",
    "trainer.max_epochs=1",
    "data.num_workers=0",
    "data.synthetic.train_per_class=8",
    "data.synthetic.val_per_class=4",
    "data.synthetic.test_per_class=4",
]


def run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def script(name: str, bin_dir: Path | None = None) -> str:
    path = shutil.which(name, path=str(bin_dir) if bin_dir else None)
    assert path, f"console script {name} is not installed"
    return path


def borrowing_venv(env_dir: Path) -> Path:
    """A new venv whose ``sys.path`` ends with this interpreter's site-packages (its bin folder).

    ``system_site_packages=True`` would borrow the *base* interpreter's packages, which inside a
    venv do not hold the project's dependencies. The folders are listed in a ``.pth`` file as
    plain paths: the ``.pth`` files inside them (this checkout's editable install) are not run,
    so ``fer_lightning`` comes from what is installed into the new venv."""
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    new_site = run(
        [
            str(bin_dir / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        cwd=env_dir,
    ).stdout.strip()
    borrowed = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(new_site) / "borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    return bin_dir


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if n == "fer-predict" else [pytest.mark.slow]) for n in COMMANDS],
)
def test_console_script_help_from_an_empty_folder(name, tmp_path):
    result = run([script(name), "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    config = name.removeprefix("fer-")
    assert f"conf/{config}.yaml (keys, defaults and what they mean)" in result.stdout
    assert "ckpt_path" in result.stdout or config == "train"
    assert not any(tmp_path.iterdir())  # --help writes nothing


def test_predict_help_explains_every_key(tmp_path):
    result = run([script("fer-predict"), "--help"], cwd=tmp_path)
    for key, meaning in [
        ("source: ???", "webcam index"),
        ("batch_size: 32", "Faces per network batch"),
        ("margin: null", "longer side"),
        ("recycle_every: 500", "yunet worker"),
    ]:
        assert key in result.stdout and meaning in result.stdout, key


@pytest.mark.slow
def test_console_script_trains_from_an_empty_folder(tmp_path):
    outputs = tmp_path / "elsewhere"
    result = run(
        [script("fer-train"), *TINY_DEMO, f"paths.log_dir={outputs}", f"paths.data_dir={outputs}"],
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (results,) = outputs.glob("train/demo/*/results.json")
    assert json.loads(results.read_text())["status"] == "completed"


@pytest.mark.slow
def test_wheel_carries_conf_and_its_scripts_work_from_an_empty_folder(tmp_path):
    wheels = tmp_path / "wheels"
    build = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(PROJECT),
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("fer_lightning-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in ("train", "eval", "predict", "export", "serve"):
        assert f"fer_lightning/conf/{config}.yaml" in names
    conf_files = {
        p.relative_to(PROJECT / "conf").as_posix() for p in (PROJECT / "conf").rglob("*.yaml")
    }
    assert {f"fer_lightning/conf/{name}" for name in conf_files} <= names
    assert "fer_lightning/serve/static/index.html" in names
    sources = {p.relative_to(PROJECT).as_posix() for p in (PROJECT / "fer_lightning").rglob("*.py")}
    assert sources <= names, sorted(sources - names)

    # A fresh environment that holds the wheel itself and borrows the dependencies from the
    # environment running the tests (a venv, or the system Python).
    env_dir = tmp_path / "venv"
    bin_dir = borrowing_venv(env_dir)
    install = run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    where = run(
        [str(bin_dir / "python"), "-c", "import fer_lightning; print(fer_lightning.__file__)"],
        cwd=tmp_path,
    )
    assert str(env_dir) in where.stdout, where.stdout  # the wheel, not the checkout

    empty = tmp_path / "empty"
    empty.mkdir()
    job = run([script("fer-train", bin_dir), "--cfg", "job"], cwd=empty)
    assert job.returncode == 0 and "arch: resmasking_dropout1" in job.stdout, job.stderr[-2000:]
    for name in COMMANDS:
        helped = run([script(name, bin_dir), "--help"], cwd=empty)
        assert helped.returncode == 0, helped.stderr[-2000:]
        refused = run([script(name, bin_dir)], cwd=empty)  # no checkpoint, no FER2013
        assert refused.returncode == 2, refused.stderr[-2000:]
        # A wheel keeps runs under the folder it is run from: --help and a refusal leave none.
        assert not any(empty.iterdir()), (name, sorted(empty.rglob("*")))
    trained = run([script("fer-train", bin_dir), *TINY_DEMO], cwd=empty, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    # A wheel keeps its runs and data under the folder it is run from.
    (results,) = empty.glob("outputs/train/demo/*/results.json")
    assert json.loads(results.read_text())["status"] == "completed"
    assert (empty / "data" / "synthetic").is_dir()
    assert os.environ.get("VIRTUAL_ENV") != str(env_dir)
