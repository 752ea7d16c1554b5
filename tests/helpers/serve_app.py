"""``python -m tests.helpers.serve_app PORT [KEY=VALUE ...]``: the app over a small fresh
network (detector none: the whole image is one face) under :func:`run_server`, for the tests
of connection limits, shutdown and memory without loading a checkpoint or a detector.

Keys: ``header_timeout_s``, ``keep_alive_s``, ``max_connections`` (:class:`ConnectionLimits`),
``shutdown_timeout_s``, ``body_timeout_s``, ``max_pixels``, ``max_body_mb``,
``working_pixels``, ``pixels_in_flight`` (:class:`Limits`), ``synthetic`` (1: the model says it
was trained on synthetic faces), ``temperature`` (the model carries this fitted temperature,
from 420 validation faces), ``detector`` (a detector's name instead of none).
"""

from __future__ import annotations

import logging
import sys

import torch

from fer_lightning.inference import EmotionRecognizer, TorchClassifier
from fer_lightning.models import create_model
from fer_lightning.models.calibration import Calibration
from fer_lightning.models.provenance import TRAINED_HERE, ModelProvenance
from fer_lightning.serve import Limits, create_app
from fer_lightning.serve.server import ConnectionLimits, run_server
from fer_lightning.serve.uploads import MEGABYTE
from tests.helpers.inference import SMALL_ARCH, SMALL_INPUT

CONNECTION_KEYS = ("header_timeout_s", "keep_alive_s", "max_connections")
LIMIT_KEYS = ("body_timeout_s", "max_pixels", "working_pixels", "pixels_in_flight")


def small_recognizer(
    synthetic: bool = False, detector: str = "none", temperature: float | None = None
) -> EmotionRecognizer:
    torch.manual_seed(0)
    net = create_model(SMALL_ARCH)
    if temperature is not None:
        net.calibration = Calibration(temperature=temperature, fitted_on=420)
    if synthetic:
        net.provenance = ModelProvenance(
            SMALL_ARCH, TRAINED_HERE, {"dataset": "synthetic", "synthetic": True}, "demo/model.pt"
        )
    classifier = TorchClassifier(net, "cpu", "fp32", SMALL_INPUT, fold_batchnorm=False)
    return EmotionRecognizer(classifier, detector=detector)


def main(argv: list[str]) -> None:
    port, options = int(argv[0]), dict(item.split("=", 1) for item in argv[1:])
    detector = options.pop("detector", "none")
    number = {key: float(value) for key, value in options.items()}
    connections = ConnectionLimits(
        **{
            key: int(number[key]) if key == "max_connections" else number[key]
            for key in CONNECTION_KEYS
            if key in number
        }
    )
    limits = Limits(
        max_body_bytes=int(number.get("max_body_mb", 20) * MEGABYTE),
        **{
            key: number[key] if key == "body_timeout_s" else int(number[key])
            for key in LIMIT_KEYS
            if key in number
        },
    )
    temperature = number.pop("temperature", None)
    recognizer = small_recognizer(bool(number.get("synthetic", 0)), detector, temperature)
    app = create_app(recognizer, limits)
    logging.basicConfig(level=logging.INFO)
    started = run_server(
        app,
        "127.0.0.1",
        port,
        connections,
        log_level="info",
        access_log=False,
        shutdown_timeout_s=number.get("shutdown_timeout_s", 30),
    )
    sys.exit(0 if started else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
