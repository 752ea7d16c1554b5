"""Emotions over HTTP: a FastAPI app over an :class:`EmotionRecognizer`, its web page, and the
batcher that runs the faces of concurrent requests through the network together.

>>> from fer_lightning.inference import EmotionRecognizer
>>> from fer_lightning.serve import create_app
>>> app = create_app(EmotionRecognizer.from_checkpoint("best.ckpt"))   # uvicorn.run(app)

The command is ``fer-serve`` (:mod:`fer_lightning.cli.serve`, options in ``conf/serve.yaml``).
"""

from fer_lightning.serve.app import BatchPolicy, Limits, create_app
from fer_lightning.serve.batcher import BatchStats, FaceBatcher
from fer_lightning.serve.uploads import UploadError

__all__ = ["BatchPolicy", "BatchStats", "FaceBatcher", "Limits", "UploadError", "create_app"]
