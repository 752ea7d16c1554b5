"""``fer-serve ckpt_path=PATH`` (``python -m fer_lightning.serve``): emotions over HTTP and in a
browser. Options and their defaults: ``conf/serve.yaml`` (``fer-serve --help``).

Loads the recogniser, then runs :func:`fer_lightning.serve.create_app` under uvicorn on
``host:port`` (127.0.0.1 unless told otherwise). SIGTERM or Ctrl-C stop accepting connections,
let the requests in flight finish (up to ``shutdown_timeout_s``) and exit with status 0; a bad
command or checkpoint exits with 2, a port already in use with 1.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fer_lightning.cli.config import fail, hydra_entry, raw_override
from fer_lightning.cli.errors import UserError, config_number
from fer_lightning.faces.crop import DEFAULT_MARGIN

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass
class ServeConfig:
    """The options of ``conf/serve.yaml`` as plain values."""

    ckpt_path: str
    host: str
    port: int
    detector: str
    detector_model: str | None
    min_score: float | None
    device: str
    precision: str
    arch: str | None
    input_size: int | None
    margin: float | None
    align_faces: bool
    max_body_mb: float
    max_pixels: int
    batch_window_ms: float
    max_batch: int
    detector_workers: int
    body_timeout_s: float
    max_requests: int
    shutdown_timeout_s: int
    access_log: bool
    log_level: str

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> ServeConfig:
        def number(key: str, kind: type, optional: bool = False, minimum: float = 0) -> Any:
            return config_number(cfg, key, kind, optional, minimum)

        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise UserError(
                "ckpt_path is required: fer-serve ckpt_path=best.ckpt (a .ckpt, .pt, .onnx or "
                "pretrained:<name>)."
            )
        model_path = cfg.detector.model_path
        log_level = str(cfg.log_level).lower()
        if log_level not in LOG_LEVELS:
            raise UserError(f"log_level={cfg.log_level!r}: choose one of {', '.join(LOG_LEVELS)}.")
        port = number("port", int)
        if port > 65535:
            raise UserError(f"port={port}: must be at most 65535.")
        return cls(
            ckpt_path=raw_override("ckpt_path", cfg.ckpt_path),
            host=str(cfg.host),
            port=port,
            detector=str(cfg.detector.name),
            detector_model=None
            if model_path is None
            else raw_override("detector.model_path", model_path),
            min_score=number("detector.min_score", float, optional=True),
            device=str(cfg.device),
            precision=str(cfg.precision),
            arch=cfg.arch,
            input_size=number("input_size", int, optional=True),
            margin=number("margin", float, optional=True),
            align_faces=bool(cfg.align_faces),
            max_body_mb=number("max_body_mb", float, minimum=1e-6),
            max_pixels=number("max_pixels", int, minimum=1),
            batch_window_ms=number("batch_window_ms", float),
            max_batch=number("max_batch", int, minimum=1),
            detector_workers=number("detector_workers", int, minimum=1),
            body_timeout_s=number("body_timeout_s", float, minimum=1e-3),
            max_requests=number("max_requests", int, minimum=1),
            shutdown_timeout_s=number("shutdown_timeout_s", int),
            access_log=bool(cfg.access_log),
            log_level=log_level,
        )


def run_task(cfg: DictConfig) -> None:
    """The Hydra task: serves until SIGTERM or Ctrl-C (exit 0); 2 for a bad command."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        config = ServeConfig.from_hydra(cfg)
        recognizer, detectors = build_recognizer(config)
    except UserError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted", status=1)
    serve(config, recognizer, detectors)


def build_recognizer(config: ServeConfig) -> tuple[Any, list[Any]]:
    """The recogniser and ``detector_workers`` detectors (the recogniser's own first);
    :class:`UserError` for the user's mistakes."""
    from fer_lightning.cli.errors import USER_ERRORS
    from fer_lightning.inference import EmotionRecognizer
    from fer_lightning.inference.recognizer import detector_for_recognizer

    options: dict[str, object] = {}
    if config.min_score is not None:
        options["min_score"] = config.min_score
    if config.detector_model is not None:
        options["model_path"] = config.detector_model
    try:
        detectors = [
            detector_for_recognizer(config.detector, **options)
            for _ in range(config.detector_workers)
        ]
        recognizer = EmotionRecognizer.from_checkpoint(
            config.ckpt_path,
            device=config.device,
            detector=detectors[0],
            arch=config.arch,
            precision=config.precision,
            input_size=config.input_size,
            batch_size=config.max_batch,
            margin=DEFAULT_MARGIN if config.margin is None else config.margin,
            align_faces=config.align_faces,
        )
    except (*USER_ERRORS, FileNotFoundError, ImportError, ValueError, RuntimeError) as error:
        # Also unknown detector or device names and unreadable ONNX files.
        raise UserError(str(error)) from None
    return recognizer, detectors


def serve(config: ServeConfig, recognizer: Any, detectors: list[Any]) -> None:
    """Run the app under uvicorn until a signal stops it."""
    import uvicorn

    from fer_lightning.serve import BatchPolicy, Limits, create_app
    from fer_lightning.serve.uploads import MEGABYTE

    limits = Limits(
        max_body_bytes=int(config.max_body_mb * MEGABYTE),
        max_pixels=config.max_pixels,
        body_timeout_s=config.body_timeout_s,
        max_requests=config.max_requests,
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
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=config.access_log,
        timeout_graceful_shutdown=config.shutdown_timeout_s,
    )
    if stopped_by:
        print(f"fer-serve: stopped ({signal.Signals(stopped_by[0]).name}).", file=sys.stderr)


main = hydra_entry("serve", run_task)

if __name__ == "__main__":
    main()
