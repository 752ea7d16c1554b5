"""The Hydra configs compose into what the code expects; module hyperparameters stay plain."""

from __future__ import annotations

import pytest
import torch

from fer_lightning.cli.config import CONFIG_DIR
from fer_lightning.models import list_models
from fer_lightning.training.module import FERClassifier
from tests.helpers.hydra import FAST, compose_train


def test_every_registered_architecture_has_a_model_config():
    configs = {p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")}
    assert configs == set(list_models())


@pytest.mark.parametrize("experiment", ["rmn_paper", "demo"])
def test_experiments_compose(tmp_path, experiment):
    cfg = compose_train(tmp_path, [f"experiment={experiment}"])
    if experiment == "rmn_paper":
        assert cfg.model.arch == "resmasking_dropout1"
        assert cfg.model.pretrained_backbone == "imagenet"
        assert cfg.data.input_size == 224 and cfg.data.batch_size == 48
        assert cfg.optimizer._target_ == "fer_lightning.training.optim.RAdam"
        assert cfg.optimizer.lr == 1e-4
        assert cfg.optimizer.weight_decay == 1e-3
        assert cfg.scheduler.scheduler.patience == 2 and cfg.scheduler.scheduler.min_lr == 1e-6
        assert cfg.trainer.max_epochs == 50 and cfg.callbacks.early_stopping.patience == 8
        assert cfg.tta is True
    else:
        assert cfg.data.input_size == 64
        assert cfg.data._target_ == "fer_lightning.data.FERDataModule"


def test_module_hyperparameters_are_plain_values(tmp_path):
    cfg = compose_train(tmp_path, [*FAST, "model=resnet18", "model.class_weights=auto"])
    import hydra.utils

    module = hydra.utils.instantiate(cfg.model, _recursive_=False)
    hparams = dict(module.hparams)

    def assert_plain(value):
        if isinstance(value, dict):
            for v in value.values():
                assert_plain(v)
        elif isinstance(value, list):
            for v in value:
                assert_plain(v)
        else:
            assert value is None or isinstance(value, str | int | float | bool), type(value)

    assert_plain(hparams)
    assert hparams["optimizer"]["_target_"] == "fer_lightning.training.optim.RAdam"
    assert hparams["scheduler"]["monitor"] == "val/acc"


def test_bad_class_weights_are_refused():
    with pytest.raises(ValueError, match="7 classes"):
        FERClassifier(arch="resnet18", class_weights=[1.0, 2.0])


def test_resmasking50_config_selects_the_resnet50_trunk(tmp_path):
    """1.9 billion parameters do not train on a CI machine; its config and build are checked."""
    cfg = compose_train(tmp_path, [*FAST, "model=resmasking50_dropout1"])
    assert cfg.model.arch == "resmasking50_dropout1"
    with torch.device("meta"):
        module = FERClassifier(arch=cfg.model.arch)
    assert sum(p.numel() for p in module.net.parameters()) == 1_886_897_223


@pytest.mark.parametrize("preset", ["fast", "overfit", "limit", "profiler"])
def test_debug_presets_compose(tmp_path, preset):
    cfg = compose_train(tmp_path, [*FAST, f"debug={preset}"])
    assert cfg.task_name == "debug"
    if preset == "fast":
        assert cfg.trainer.limit_train_batches == 3 and cfg.trainer.limit_test_batches == 2
        assert cfg.trainer.enable_checkpointing is False and cfg.callbacks.model_checkpoint is None
    elif preset == "overfit":
        assert cfg.trainer.overfit_batches == 3 and cfg.data.augment is None
    elif preset == "limit":
        assert cfg.trainer.max_epochs == 3 and cfg.trainer.limit_train_batches == 0.01
    else:
        assert "SimpleProfiler" in cfg.trainer.profiler._target_


def test_every_trainer_loop_limit_can_be_overridden(tmp_path):
    cfg = compose_train(
        tmp_path,
        [
            "trainer.limit_train_batches=5",
            "trainer.limit_val_batches=0.5",
            "trainer.limit_test_batches=2",
        ],
    )
    assert cfg.trainer.limit_train_batches == 5 and cfg.trainer.limit_val_batches == 0.5
    assert cfg.trainer.limit_test_batches == 2


def test_data_configs_share_one_set_of_defaults(tmp_path):
    """The paper's augmentation and the loader settings live in data/common.yaml alone."""
    for data in ("fer2013", "fer2013_faces_jaffe", "synthetic"):
        cfg = compose_train(tmp_path, [f"data={data}"])
        assert cfg.data.dataset == data
        assert cfg.data.augment.Rotate.limit == 30 and cfg.data.augment.HorizontalFlip.p == 0.5
        assert cfg.data.input_size == 224
    for path in (CONFIG_DIR / "data").glob("*.yaml"):
        if path.stem != "common":
            assert "augment" not in path.read_text(), path


@pytest.mark.parametrize(
    ("config_name", "overrides", "expected"),
    [
        ("predict", ["ckpt_path=a.ckpt", "source=in", "detector=dlib"], {"detector.name": "dlib"}),
        ("predict", ["ckpt_path=a.ckpt", "source=in"], {"detector.name": "auto", "batch_size": 32}),
        ("export", ["ckpt_path=a.ckpt"], {"format": "onnx", "opset": 17, "check": True}),
        (
            "eval",
            ["ckpt_path=a.ckpt", "data=synthetic"],
            {"tta": True, "data.dataset": "synthetic"},
        ),
    ],
)
def test_command_configs_compose(config_name, overrides, expected):
    from omegaconf import OmegaConf

    from tests.helpers.hydra import compose_config

    cfg = compose_config(config_name, overrides)
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key


def test_main_command_follows_the_paper_and_synthetic_data_stays_offline(tmp_path):
    main = compose_train(tmp_path, ["model=resmasking_dropout1"])
    assert main.model.pretrained_backbone == "imagenet" and main.data.dataset == "fer2013"
    assert main.trainer.precision == "auto"
    for overrides in (["experiment=demo"], ["data=synthetic"]):
        assert compose_train(tmp_path, overrides).model.pretrained_backbone is None
    chosen = compose_train(tmp_path, ["data=synthetic", "model.pretrained_backbone=imagenet"])
    assert chosen.model.pretrained_backbone == "imagenet"
    assert compose_train(tmp_path, ["experiment=rmn_paper"]).trainer.precision == "32-true"


@pytest.mark.parametrize(
    ("device", "native_bf16", "expected"),
    [
        ("cuda", True, "bf16-mixed"),
        ("cuda", False, "16-mixed"),
        ("cpu", True, "bf16-mixed"),
        ("cpu", False, "32-true"),
    ],
)
def test_precision_auto_chooses_by_capability(monkeypatch, device, native_bf16, expected):
    from fer_lightning import runtime

    monkeypatch.setattr(runtime, "has_native_bf16", lambda _device: native_bf16)
    assert runtime.lightning_precision("auto", torch.device(device)) == expected
    assert runtime.lightning_precision("32-true", torch.device(device)) == "32-true"
    assert runtime.resolve_precision("auto", torch.device(device)) == (
        "bf16" if native_bf16 else "fp32"
    )


def test_offline_imagenet_start_stops_with_what_to_do(tmp_path, monkeypatch, capsys):
    from fer_lightning.cli import train as train_cli
    from tests.helpers.hydra import run_app

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_network)
    status = run_app(
        train_cli.main,
        [
            *FAST,
            "model=resnet18",
            "model.pretrained_backbone=imagenet",
            f"paths.log_dir={tmp_path / 'out'}",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
    )
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "resnet18-f37072fd.pth" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert "model.pretrained_backbone=null" in err
    assert not list((tmp_path / "out").rglob("*.ckpt"))


def _no_network(*args, **kwargs):
    raise OSError("[Errno -2] Name or service not known")
