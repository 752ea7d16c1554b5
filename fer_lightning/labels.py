"""The emotion label sets shared by every dataset, model and report."""

# FER2013's 7 classes, in FER2013's order (also JAFFE's and FACES' after conversion).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES: int = len(EMOTIONS)

# FER+'s 8 classes (the 7 plus contempt), in the order of the vote columns of Microsoft's
# fer2013new.csv, which is also the order of the FER+ models' outputs.
FERPLUS_EMOTIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)

# Native resolution of every dataset CSV: 48x48 grayscale.
FACE_SIZE: int = 48
