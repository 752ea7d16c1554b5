"""The emotion label set shared by every dataset, model and report (FER2013 order)."""

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES: int = len(EMOTIONS)

# Native resolution of every dataset CSV: 48x48 grayscale.
FACE_SIZE: int = 48
