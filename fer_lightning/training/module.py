"""The LightningModule: one registered architecture, its loss, optimiser, schedule and metrics.

Every constructor argument is a plain value (strings, numbers, lists, dicts), so the saved
hyperparameters load under ``torch.load(weights_only=True)`` and any checkpoint can rebuild its
network with :func:`fer_lightning.models.create_model` alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import hydra.utils
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fer_lightning.labels import EMOTIONS, NUM_CLASSES
from fer_lightning.models import create_model
from fer_lightning.models.cpu_convs import use_cpu_convs
from fer_lightning.models.presets import check_input_size, default_input_size
from fer_lightning.runtime import resolve_cpu_convs
from fer_lightning.training.scoring import Predictions, metrics, tta_probabilities


def is_soft(y: Tensor) -> bool:
    """Whether a batch's targets are (N, C) label distributions rather than (N,) labels."""
    return y.dim() == 2 and y.is_floating_point()


def hard_labels(y: Tensor) -> Tensor:
    """(N,) int64 labels: ``y`` itself, or the largest class of each label distribution."""
    return y.argmax(dim=1) if is_soft(y) else y


def _label_names(names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    """The names to save: as given (one per class), FER2013's for 7 classes, else None."""
    if names is None:
        return list(EMOTIONS) if num_classes == len(EMOTIONS) else None
    names = [str(name) for name in names]
    if len(names) != num_classes:
        raise ValueError(f"label_names has {len(names)} names for {num_classes} classes.")
    return names


def _class_weights(value: Any, num_classes: int) -> str | list[float] | None:
    """``class_weights`` checked: null, ``"auto"`` or one weight per class."""
    if isinstance(value, str) and value != "auto":
        raise ValueError(f"class_weights must be null, 'auto' or a list, not {value!r}.")
    if isinstance(value, list) and len(value) != num_classes:
        raise ValueError(f"class_weights has {len(value)} values for {num_classes} classes.")
    return value


def _training_data(value: Any) -> dict[str, Any] | None:
    """The training-data record as plain values: ``{"dataset": str, "synthetic": bool}``."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("synthetic"), bool):
        raise ValueError(
            f"training_data must be {{'dataset': name, 'synthetic': true/false}}, not {value!r}."
        )
    return {"dataset": str(value.get("dataset")), "synthetic": value["synthetic"]}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stops, earlier checkpoints stay."""


def plain(value: Any) -> Any:
    """OmegaConf containers -> built-in dicts and lists (checkpoint-safe hyperparameters)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class FERClassifier(pl.LightningModule):
    """Train, validate and test one architecture of the zoo on 48x48 faces.

    Batches arrive as ``(x, y)`` with ``x`` the model input (N, 3, S, S) float in [0, 1] (the
    DataModule resizes on the device) and ``y`` either (N,) int64 labels or (N, C) float label
    distributions (FER+'s soft targets): the loss is then the cross-entropy against the
    distribution, and accuracy counts the distribution's largest class as the label.

    Args:
        arch: registered architecture name (``fer_lightning.models.list_models()``).
        num_classes: size of the classifier head.
        label_names: the class names, saved in checkpoints (``load_model`` sets
            ``model.label_names`` from them); default: FER2013's 7 emotions for 7 classes.
        pretrained_backbone: ``None``, ``"imagenet"`` or a path to torchvision ResNet weights.
        input_size: side of the network input; recorded so that checkpoints know it
            (default: the architecture's preset, 224).
        optimizer: ``{"_target_": "torch.optim.AdamW", "lr": ..., ...}``; ``params`` are added.
            Needed to train (``conf/optimizer/`` holds the choices; the paper's is ``radam``).
        scheduler: ``None`` or ``{"scheduler": {"_target_": ..., ...}, "monitor": "val/acc",
            "interval": "epoch", "frequency": 1}``; ``optimizer`` is added to the scheduler.
        class_weights: ``None``, ``"auto"`` (inverse frequency of the training labels, from the
            DataModule's ``class_weights()``) or one weight per class.
        label_smoothing: cross-entropy label smoothing.
        channels_last: store activations NHWC (faster convolutions on many CPUs and GPUs).
        cpu_convs: on the CPU, run fp32 3x3 convolutions with 128+ channels by Winograd's
            method and those on tiny maps as one matrix product
            (:mod:`fer_lightning.models.cpu_convs`; the same numbers to fp32 rounding);
            ``"auto"``: only where they are faster than oneDNN (AVX2 CPUs,
            :func:`fer_lightning.runtime.cpu_convs_pay_off`). Not applied to a ``network``
            passed in.
        compile: wrap the network in ``torch.compile``.
        tta: also report test accuracy over the 10 test-time augmentation views.
        training_data: what the network learns from, ``{"dataset": "synthetic", "synthetic":
            True}`` (fer-train fills it in); saved in checkpoints so that a model says what it
            is (:class:`fer_lightning.models.provenance.ModelProvenance`).
        network: an already built network to wrap instead of a fresh one (evaluating a loaded
            checkpoint); not a hyperparameter.

    The test path collects the softmax outputs of the whole split in ``test_predictions``
    (:class:`~fer_lightning.training.scoring.Predictions`) and their scores in
    ``test_results``. It is meant for one process: every test image is counted once.
    """

    def __init__(
        self,
        arch: str = "resmasking_dropout1",
        num_classes: int = NUM_CLASSES,
        label_names: Sequence[str] | None = None,
        pretrained_backbone: str | None = None,
        input_size: int | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        class_weights: str | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        cpu_convs: bool | str = "auto",
        compile: bool = False,
        tta: bool = True,
        training_data: Mapping[str, Any] | None = None,
        network: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "arch": arch,
                "num_classes": num_classes,
                "label_names": _label_names(plain(label_names), num_classes),
                "pretrained_backbone": pretrained_backbone,
                "input_size": check_input_size(
                    int(input_size or default_input_size(arch)), name="model.input_size"
                ),
                "optimizer": plain(optimizer),
                "scheduler": plain(scheduler),
                "class_weights": _class_weights(plain(class_weights), num_classes),
                "label_smoothing": label_smoothing,
                "channels_last": channels_last,
                "cpu_convs": cpu_convs if isinstance(cpu_convs, bool) else str(cpu_convs),
                "compile": compile,
                "tta": tta,
                "training_data": _training_data(plain(training_data)),
            }
        )
        self.net = self._network(network)
        # Not a buffer: the weights are derived from the data and kept out of the state dict,
        # so that checkpoints hold exactly the network's keys.
        weights = self.hparams.class_weights
        self.loss_weights: Tensor | None = (
            torch.tensor(weights, dtype=torch.float32) if isinstance(weights, list) else None
        )
        self._make_metrics(num_classes)
        # Filled by ``test``: the split's softmax outputs and their scores (plain values).
        self._test_outputs: dict[str, list[Tensor]] = {}
        self.test_predictions: Predictions | None = None
        self.test_results: dict[str, Any] = {}

    def _network(self, network: nn.Module | None) -> nn.Module:
        """``network``, or a fresh one of the architecture; in the memory format and compiled
        as the hyperparameters say."""
        hp = self.hparams
        if network is None:
            network = create_model(
                hp.arch, num_classes=hp.num_classes, pretrained_backbone=hp.pretrained_backbone
            )
            if resolve_cpu_convs(hp.cpu_convs):
                use_cpu_convs(network)
        if hp.channels_last:
            network = network.to(memory_format=torch.channels_last)
        if hp.compile:
            # In place, so that the state-dict keys stay those of the plain network.
            network.compile()
        return network

    def _make_metrics(self, num_classes: int) -> None:
        """Running training and validation metrics, and the best validation accuracy."""
        self.train_metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro")}, prefix="train/"
        )
        self.val_metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            },
            prefix="val/",
        )
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints, so that a resumed run remembers its best validation accuracy.
        self.val_acc_best.persistent(True)

    # -- set-up ---------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if self.hparams.class_weights == "auto" and self.loss_weights is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "class_weights"):
                raise ValueError(
                    "class_weights=auto needs a DataModule with class_weights() (the training "
                    "labels); pass a list of weights instead."
                )
            if stage == "fit":
                self.loss_weights = datamodule.class_weights().float()

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, S, S) in [0, 1] -> logits (N, num_classes)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _loss(self, logits: Tensor, y: Tensor, weighted: bool) -> Tensor:
        """Cross-entropy against (N,) labels or (N, C) label distributions."""
        weight = (
            self.loss_weights.to(logits.device)
            if weighted and self.loss_weights is not None
            else None
        )
        target = y.float() if is_soft(y) else y
        return F.cross_entropy(
            logits.float(), target, weight=weight, label_smoothing=self.hparams.label_smoothing
        )

    # -- steps ----------------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y, weighted=True)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"The training loss became {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}). Training stopped; the last "
                "good checkpoint is the newest one in the run's checkpoints/ folder. Lower the "
                "learning rate, or use 32-true precision if this happened under 16-mixed."
            )
        self.train_loss(loss.detach())
        self.train_metrics.update(logits.detach(), hard_labels(y))
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_loss(self._loss(logits, y, weighted=False))
        self.val_metrics.update(logits, hard_labels(y))
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict(values, prog_bar=True, sync_dist=True)
        if self.trainer.sanity_checking:  # a few untrained batches are no "best"
            return
        self.val_acc_best(values["val/acc"])
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self._test_outputs = {"probs": [], "probs_tta": [], "labels": [], "logits": []}

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x).float()
        self._test_outputs["logits"].append(logits.cpu())
        self._test_outputs["probs"].append(torch.softmax(logits, dim=1).cpu())
        if self.hparams.tta:
            self._test_outputs["probs_tta"].append(tta_probabilities(self, x).cpu())
        self._test_outputs["labels"].append(hard_labels(y).cpu())

    def on_test_epoch_end(self) -> None:
        outputs = self._test_outputs
        if not outputs["labels"]:
            return  # limit_test_batches=0
        self.test_predictions = Predictions(
            probs=torch.cat(outputs["probs"]),
            labels=torch.cat(outputs["labels"]),
            probs_tta=torch.cat(outputs["probs_tta"]) if outputs["probs_tta"] else None,
            logits=torch.cat(outputs["logits"]),
        )
        self._test_outputs = {}
        label_names = (
            getattr(getattr(self.trainer, "datamodule", None), "label_names", None)
            or self.hparams.label_names
        )
        self.test_results = metrics(self.test_predictions, labels=label_names)
        scalars = {k: v for k, v in self.test_results.items() if isinstance(v, float)}
        self.log_dict(scalars)

    # -- optimisation ---------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        if not self.hparams.optimizer:
            raise ValueError(
                "FERClassifier needs optimizer={'_target_': ..., 'lr': ...} to train; the "
                "choices are in conf/optimizer/ (the paper's: radam)."
            )
        optimizer = hydra.utils.instantiate(self.hparams.optimizer, params=self.parameters())
        scheduler_cfg = self.hparams.scheduler
        if not scheduler_cfg:
            return optimizer
        scheduler = hydra.utils.instantiate(scheduler_cfg["scheduler"], optimizer=optimizer)
        lr_scheduler = {"scheduler": scheduler}
        for key in ("monitor", "interval", "frequency"):
            if scheduler_cfg.get(key) is not None:
                lr_scheduler[key] = scheduler_cfg[key]
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}
