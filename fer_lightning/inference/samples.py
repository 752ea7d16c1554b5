"""The bundled sample photo (public domain, see ``assets/README.md``), mosaics of it, and a
synthetic clip of people moving, crossing, leaving and coming back (:func:`people_clip`), with
the truth a face tracker is scored against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_lightning.faces.images import read_image

#: NASA's portrait of astronaut Eileen Collins, 320x320 JPEG, one frontal face.
ASTRONAUT_PATH: Path = Path(__file__).parent / "assets" / "astronaut.jpg"
#: The face in it, as yunet finds it (x0, y0, x1, y1), and the square around it the people clip
#: shows (the face about half its side).
ASTRONAUT_FACE = (112, 39, 167, 107)
HEAD_CROP = (75, 8, 205, 138)


def astronaut() -> np.ndarray:
    """The bundled astronaut portrait as (320, 320, 3) BGR uint8."""
    return read_image(ASTRONAUT_PATH)


def mosaic(image: np.ndarray, rows: int = 2, cols: int = 2) -> np.ndarray:
    """``image`` (H, W, C) tiled ``rows`` x ``cols`` times: (rows*H, cols*W, C)."""
    return np.ascontiguousarray(np.tile(image, (rows, cols, 1)))


@dataclass(frozen=True)
class PeopleClip:
    """A synthetic clip with known people: ``frames`` (T, H, W, 3) BGR uint8 and, per frame,
    ``truth[t]``: person id -> face box ``(x0, y0, x1, y1)`` of each person in view and not
    hidden (more than half of the face showing). ``person_ids[t]`` are the ids a tracker should
    give: the person's, except that a person away for more than ``max_missed`` frames counts as
    new (``100 * k + person`` for the k-th return)."""

    frames: np.ndarray
    truth: list[dict[int, tuple[int, int, int, int]]]
    person_ids: list[dict[int, int]]
    fps: float

    def write(self, path: Path) -> Path:
        """The frames as a Motion-JPEG video at ``path`` (an .avi every OpenCV build writes)."""
        height, width = self.frames.shape[1:3]
        codec = cv2.VideoWriter_fourcc(*"MJPG")
        writer = cv2.VideoWriter(str(path), codec, self.fps, (width, height))
        for frame in self.frames:
            writer.write(frame)
        writer.release()
        return path


def people_clip(
    frames: int = 150,
    size: int = 120,
    max_missed: int = 30,
    fps: float = 25.0,
    noise: float = 0.0,
) -> PeopleClip:
    """Three copies of the astronaut's head (as is; mirrored and blue-tinted; red-tinted) on a
    640x360 grey background: person 1 walks right and person 2 walks left, crossing in front
    of 1 (whose face is hidden for 18 frames); person 3 stands still top right, leaves for 15
    frames (within ``max_missed``), comes back, then leaves for 40 frames (more than
    ``max_missed``, so a tracker must give a new id) and comes back top left at frame 120.
    Deterministic; ``size`` is the side of each head image in pixels (the face about half of
    it), ``frames`` at least 120; ``noise`` the standard deviation of the Gaussian noise added
    to every pixel of every frame, as a camera's (seeded)."""
    rng = np.random.default_rng(0)
    height, width = 360, 640
    x0, y0, x1, y1 = HEAD_CROP
    face = cv2.resize(astronaut()[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
    scale = size / (x1 - x0)
    fx0, fy0, fx1, fy1 = (
        round((v - o) * scale) for v, o in zip(ASTRONAUT_FACE, (x0, y0, x0, y0), strict=True)
    )
    in_tile = {
        1: (fx0, fy0, fx1, fy1),
        2: (size - fx1, fy0, size - fx0, fy1),
        3: (fx0, fy0, fx1, fy1),
    }
    blue = np.clip(face[:, ::-1].astype(int) + np.array([40, 0, -30]), 0, 255).astype(np.uint8)
    red = np.clip(face.astype(int) + np.array([-30, -10, 45]), 0, 255).astype(np.uint8)
    looks = {1: face, 2: blue, 3: red}
    away_3 = set(range(40, 55)) | set(range(80, 120))
    video = np.empty((frames, height, width, 3), np.uint8)
    truth: list[dict[int, tuple[int, int, int, int]]] = []
    person_ids: list[dict[int, int]] = []
    returns, last_seen = {1: 0, 2: 0, 3: 0}, {1: -1, 2: -1, 3: -1}
    for t in range(frames):
        canvas = np.full((height, width, 3), 110, np.uint8)
        places: dict[int, tuple[int, int]] = {
            1: (10 + round(t * (width - size - 20) / max(1, frames - 1)), 130),
            2: (width - size - 10 - round(t * (width - size - 20) / max(1, frames - 1)), 150),
        }
        if t not in away_3:
            places[3] = (width - size - 20, 10) if t < 80 else (30, 10)
        tiles = {p: (x, y, x + size, y + size) for p, (x, y) in places.items()}
        boxes = {
            p: (x + in_tile[p][0], y + in_tile[p][1], x + in_tile[p][2], y + in_tile[p][3])
            for p, (x, y) in places.items()
        }
        for person in (1, 3, 2):  # 2 is drawn last: in front of 1 where they cross
            if person in places:
                x, y = places[person]
                canvas[y : y + size, x : x + size] = looks[person]
        shown = {}
        for person, box in boxes.items():
            hidden = 0.0
            if person == 1:
                hidden = _overlap_share(box, tiles[2])
            if hidden <= 0.5:
                shown[person] = box
        ids = {}
        for person in shown:
            if last_seen[person] >= 0 and t - last_seen[person] - 1 > max_missed:
                returns[person] += 1
            last_seen[person] = t
            ids[person] = 100 * returns[person] + person
        if noise > 0:
            canvas = np.clip(canvas + rng.normal(0, noise, canvas.shape), 0, 255).astype(np.uint8)
        video[t] = canvas
        truth.append(shown)
        person_ids.append(ids)
    return PeopleClip(video, truth, person_ids, fps)


def _overlap_share(box: tuple[int, ...], cover: tuple[int, ...]) -> float:
    """The share of ``box``'s area that ``cover`` hides."""
    w = max(0, min(box[2], cover[2]) - max(box[0], cover[0]))
    h = max(0, min(box[3], cover[3]) - max(box[1], cover[1]))
    return w * h / ((box[2] - box[0]) * (box[3] - box[1]))
