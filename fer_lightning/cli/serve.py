"""``fer-serve ckpt_path=PATH`` (``python -m fer_lightning.serve``): emotions over HTTP and in a
browser. Options and their defaults: ``conf/serve.yaml`` (``fer-serve --help``).

Loads the recogniser, then runs :func:`fer_lightning.serve.create_app` under uvicorn on
``host:port`` (127.0.0.1 unless told otherwise). SIGTERM or Ctrl-C stop accepting connections,
let the requests in flight finish (up to ``shutdown_timeout_s``) and exit with status 0; a bad
command or checkpoint exits with 2, a port already in use with 1.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from fer_lightning.cli.config import fail, hydra_entry
from fer_lightning.cli.errors import UserError, config_number
from fer_lightning.cli.recognizer import RecognizerOptions, build_recognizer
from fer_lightning.faces.detectors import FaceDetector
from fer_lightning.inference.recognizer import EmotionRecognizer

EXAMPLE = "fer-serve ckpt_path=best.ckpt (a .ckpt, .pt, .onnx or pretrained:<name>)."
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# The [serve] extra: the app and its server (imported where used, so that --help and a bad
# command get their answer without them).
SERVE_MODULES = ("fastapi", "uvicorn", "multipart")


@dataclass(frozen=True)
class ServeConfig(RecognizerOptions):
    """The options of ``conf/serve.yaml`` as plain values: the recogniser's
    (:class:`RecognizerOptions`) and the server's."""

    host: str
    port: int
    max_body_mb: float
    max_pixels: int
    batch_window_ms: float
    max_batch: int
    detector_workers: int
    body_timeout_s: float
    max_requests: int
    shutdown_timeout_s: int
    header_timeout_s: float
    keep_alive_s: float
    max_connections: int
    working_pixels: int
    pixels_in_flight: int
    access_log: bool
    log_level: str

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> ServeConfig:
        def number(key: str, kind: type, minimum: float = 0, maximum: float | None = None) -> Any:
            return config_number(cfg, key, kind, False, minimum, maximum)

        fields = cls.recognizer_fields(cfg, EXAMPLE)
        log_level = str(cfg.log_level).lower()
        if log_level not in LOG_LEVELS:
            raise UserError(f"log_level={cfg.log_level!r}: choose one of {', '.join(LOG_LEVELS)}.")
        return cls(
            **fields,
            host=str(cfg.host),
            port=number("port", int, maximum=65535),
            max_body_mb=number("max_body_mb", float, minimum=1e-6),
            max_pixels=number("max_pixels", int, minimum=1),
            batch_window_ms=number("batch_window_ms", float),
            max_batch=number("max_batch", int, minimum=1),
            detector_workers=number("detector_workers", int, minimum=1),
            body_timeout_s=number("body_timeout_s", float, minimum=1e-3),
            max_requests=number("max_requests", int, minimum=1),
            shutdown_timeout_s=number("shutdown_timeout_s", int),
            header_timeout_s=number("header_timeout_s", float, minimum=1e-3),
            keep_alive_s=number("keep_alive_s", float, minimum=1e-3),
            max_connections=number("max_connections", int, minimum=1),
            working_pixels=number("working_pixels", int, minimum=1),
            pixels_in_flight=number("pixels_in_flight", int, minimum=1),
            access_log=bool(cfg.access_log),
            log_level=log_level,
        )


def run_task(cfg: DictConfig) -> None:
    """The Hydra task: serves until SIGTERM or Ctrl-C (exit 0); 2 for a bad command."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        config = ServeConfig.from_hydra(cfg)
        missing = [name for name in SERVE_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(
                f"fer-serve needs {', '.join(missing)}: pip install 'fer-lightning[serve]'"
            )
        recognizer, detectors = build_recognizer(
            config, config.max_batch, detectors=config.detector_workers
        )
    except UserError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted", status=1)
    serve(config, recognizer, detectors)


def serve(
    config: ServeConfig, recognizer: EmotionRecognizer, detectors: list[FaceDetector]
) -> None:
    """Run the app (uvicorn, with timeouts and a cap on connections) until a signal stops it;
    exit status 1 when it cannot start (a port in use, for instance)."""
    # The optional [serve] extra (checked by run_task).
    from fer_lightning.serve import BatchPolicy, ConnectionLimits, Limits, create_app, run_server
    from fer_lightning.serve.uploads import MEGABYTE

    limits = Limits(
        max_body_bytes=int(config.max_body_mb * MEGABYTE),
        max_pixels=config.max_pixels,
        body_timeout_s=config.body_timeout_s,
        max_requests=config.max_requests,
        working_pixels=config.working_pixels,
        pixels_in_flight=config.pixels_in_flight,
    )
    app = create_app(
        recognizer,
        limits,
        BatchPolicy(config.batch_window_ms, config.max_batch),
        detectors,
    )
    # uvicorn handles SIGTERM and SIGINT while it runs (graceful shutdown) and then raises the
    # signal again against the handlers it found: these make that a clean exit.
    stopped_by: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: stopped_by.append(number))
    started = run_server(
        app,
        config.host,
        config.port,
        ConnectionLimits(config.header_timeout_s, config.keep_alive_s, config.max_connections),
        log_level=config.log_level,
        access_log=config.access_log,
        shutdown_timeout_s=config.shutdown_timeout_s,
    )
    if not started:
        fail(f"fer-serve could not start on {config.host}:{config.port} (see the log above).", 1)
    if stopped_by:
        print(f"fer-serve: stopped ({signal.Signals(stopped_by[0]).name}).", file=sys.stderr)


main = hydra_entry("serve", run_task)

if __name__ == "__main__":
    main()
