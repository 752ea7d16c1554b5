"""Emotions over HTTP: a FastAPI app over an :class:`EmotionRecognizer`, its web page, and the
batcher that runs the faces of concurrent requests through the network together.

>>> from fer_lightning.inference import EmotionRecognizer
>>> from fer_lightning.serve import create_app
>>> app = create_app(EmotionRecognizer.from_checkpoint("best.ckpt"))
>>> run_server(app, "127.0.0.1", 8000)   # uvicorn, with timeouts and a cap on connections

The command is ``fer-serve`` (:mod:`fer_lightning.cli.serve`, options in ``conf/serve.yaml``).
"""

from fer_lightning.serve.app import BatchPolicy, Limits, create_app
from fer_lightning.serve.batcher import BatchStats, FaceBatcher
from fer_lightning.serve.server import ConnectionLimits, run_server
from fer_lightning.serve.uploads import UploadError

__all__ = [
    "BatchPolicy",
    "BatchStats",
    "ConnectionLimits",
    "FaceBatcher",
    "Limits",
    "UploadError",
    "create_app",
    "run_server",
]
