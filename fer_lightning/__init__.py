"""fer-lightning: facial emotion recognition with the Residual Masking Network.

PyTorch Lightning + Hydra reimplementation of Pham, Vu & Tran, "Facial Expression Recognition
using Residual Masking Network" (ICPR 2020).
"""

from fer_lightning.labels import EMOTIONS, NUM_CLASSES

__version__ = "0.1.0"

__all__ = ["EMOTIONS", "NUM_CLASSES", "__version__"]
