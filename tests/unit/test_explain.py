"""Attention maps: values in [0, 1], crops laid over the image where they were cut, a face moved
in the frame moves its map, the masking networks give their four masks, checkpoints untouched."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer_lightning.data.synthetic import draw_face, draw_face_parts, draw_face_with_regions
from fer_lightning.faces.crop import crop_face, crop_matrix
from fer_lightning.faces.detectors import Detection, FaceDetector
from fer_lightning.inference import EmotionRecognizer, TorchClassifier
from fer_lightning.inference.explain import HIRESCAM, MASK_NAMES, explain_crops, map_names
from fer_lightning.labels import EMOTIONS
from fer_lightning.models import create_model
from tests.helpers.maps import OFFSET, ZOOM, concentration, framed_faces

FRAME = (160, 200)  # H, W
FACE_SIDE = 64


class FixedBoxes(FaceDetector):
    """Reports the boxes it was given, whatever the image."""

    name = "fixed"

    def __init__(self, boxes: list[tuple[int, int, int, int]]) -> None:
        self.boxes = boxes

    def _detect_bgr(self, image: np.ndarray) -> list[Detection]:
        return [Detection(box, 0.9) for box in self.boxes]


def frame_with_face(x: int, y: int, seed: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A gray BGR frame with one synthetic face, FACE_SIDE square, top-left at (x, y)."""
    face = draw_face(3, np.random.default_rng(seed))
    big = cv2.resize(face, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_LINEAR)
    frame = np.full(FRAME, 128, dtype=np.uint8)
    frame[y : y + FACE_SIDE, x : x + FACE_SIDE] = big
    # The detector's tight box: the crop's margin widens it back to about the face.
    inset = round(FACE_SIDE * 0.1 / 1.2)
    box = (x + inset, y + inset, x + FACE_SIDE - inset, y + FACE_SIDE - inset)
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), box


@pytest.fixture(scope="module")
def resnet() -> TorchClassifier:
    torch.manual_seed(0)
    return TorchClassifier(create_model("resnet18"), "cpu", "fp32", 64)


def centroid(values: np.ndarray) -> np.ndarray:
    ys, xs = np.indices(values.shape)
    total = values.sum()
    return np.array([(xs * values).sum() / total, (ys * values).sum() / total])


@pytest.mark.parametrize(
    "landmarks",
    [None, np.array([[80.0, 70.0], [110.0, 82.0]], dtype=np.float32)],
    ids=["upright", "tilted"],
)
def test_crop_matrix_maps_image_points_to_where_crop_face_puts_them(landmarks):
    height, width = 160, 200
    point = np.array([97.0, 83.0])
    ys, xs = np.indices((height, width))
    blob = 255 * np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * 6.0**2))
    detection = Detection((70, 50, 130, 120), 0.9, landmarks)
    crop = crop_face(blob.astype(np.uint8), detection).astype(np.float64)
    matrix = crop_matrix(detection)
    expected = matrix @ np.array([*point, 1.0])
    assert np.abs(centroid(crop**4) - expected).max() < 0.35


def test_maps_are_in_unit_range_and_aligned_with_the_face(resnet):
    frame, box = frame_with_face(30, 40)
    recognizer = EmotionRecognizer(resnet, detector=FixedBoxes([box]))
    (face,) = recognizer.explain(frame)
    assert face.box == box and list(face.probs) == list(EMOTIONS)
    assert sum(face.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert face.target == face.label == max(face.probs, key=face.probs.get)
    assert set(face.crop_maps) == {"gradcam"}
    crop_map = face.crop_maps["gradcam"]
    assert crop_map.shape == (48, 48) and crop_map.dtype == np.float32
    image_map = face.image_map()
    assert image_map.shape == FRAME and image_map.dtype == np.float32
    for values in (crop_map, image_map):
        assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.5
    # Nothing off the crop's square (the box widened by the margin).
    x0, y0, x1, y1 = box
    pad = round((x1 - x0) * 0.1) + 2
    outside = image_map.copy()
    outside[y0 - pad : y1 + pad, x0 - pad : x1 + pad] = 0
    assert outside.max() == 0.0
    as_dict = face.to_dict()
    assert np.array(as_dict["maps"]["gradcam"]).shape == (48, 48)


def test_a_face_moved_in_the_frame_moves_its_map(resnet):
    moves = [(20, 30), (120, 70)]
    maps = []
    for x, y in moves:
        frame, box = frame_with_face(x, y)
        (face,) = EmotionRecognizer(resnet, detector=FixedBoxes([box])).explain(frame)
        maps.append(face.image_map())
    dx, dy = moves[1][0] - moves[0][0], moves[1][1] - moves[0][1]
    np.testing.assert_allclose(centroid(maps[1]) - centroid(maps[0]), [dx, dy], atol=0.05)
    shifted = np.roll(maps[0], (dy, dx), axis=(0, 1))
    np.testing.assert_allclose(maps[1], shifted, atol=1e-4)


def test_two_faces_each_get_their_own_map_and_a_chosen_target(resnet):
    frame, box_a = frame_with_face(10, 20)
    other, box_b = frame_with_face(120, 80, seed=1)
    frame[80:144, 120:184] = other[80:144, 120:184]
    recognizer = EmotionRecognizer(resnet, detector=FixedBoxes([box_a, box_b]))
    faces = recognizer.explain(frame, target="sad")
    assert [f.box for f in faces] == [box_a, box_b]
    assert all(f.target == "sad" for f in faces)
    a, b = (f.image_map() for f in faces)
    assert a[80:144, 120:184].max() == 0.0 and b[20:84, 10:74].max() == 0.0
    (batched,) = recognizer.explain_batch([frame], target=EMOTIONS.index("sad"))
    np.testing.assert_allclose(batched[1].crop_maps["gradcam"], faces[1].crop_maps["gradcam"])
    with pytest.raises(ValueError, match="Unknown target"):
        recognizer.explain(frame, target="bored")


def test_resmasking_gives_four_masks_and_keeps_its_state_dict_keys():
    torch.manual_seed(0)
    model = create_model("resmasking_dropout1").eval()
    keys = list(model.state_dict())
    faces = np.stack([draw_face(c, np.random.default_rng(c)) for c in range(2)])
    assert map_names(model) == ("gradcam", *MASK_NAMES, "masks")
    probs, maps = explain_crops(model, faces, 64)
    assert probs.shape == (2, len(EMOTIONS))
    for name in map_names(model):
        assert maps[name].shape == (2, 48, 48)
        assert maps[name].min() >= 0.0 and maps[name].max() <= 1.0
        assert maps[name].max() > 0.5
    # The hooks are gone and the keys unchanged: published checkpoints still load strictly.
    assert list(model.state_dict()) == keys
    assert not any(m._forward_hooks for m in model.modules())
    naive = create_model("resmasking_naive_dropout1").eval()
    assert map_names(naive) == ("gradcam",)


def test_regions_of_a_synthetic_face_match_its_drawing():
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    face, regions = draw_face_with_regions(4, rng_a)
    np.testing.assert_array_equal(face, draw_face(4, rng_b))
    assert rng_a.random() == rng_b.random()
    assert regions.dtype == bool and regions.shape == (48, 48)
    assert 0.04 < regions.mean() < 0.25
    # The features are darker than the skin just around them.
    ring = cv2.dilate(regions.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~regions
    assert face[regions].mean() < face[ring].mean() - 10


def test_hirescam_at_an_earlier_stage_is_finer_and_unknown_choices_are_refused(resnet):
    faces = np.stack([draw_face(c, np.random.default_rng(c)) for c in range(2)])
    model = resnet.model
    _, maps = explain_crops(model, faces, 64, layer="layer2", method=HIRESCAM)
    assert set(maps) == {HIRESCAM} and maps[HIRESCAM].shape == (2, 48, 48)
    assert maps[HIRESCAM].min() >= 0.0 and maps[HIRESCAM].max() <= 1.0
    with pytest.raises(ValueError, match="Unknown layer"):
        explain_crops(model, faces, 64, layer="fc")
    with pytest.raises(ValueError, match="Unknown method"):
        explain_crops(model, faces, 64, method="saliency")


def best_map(regions: np.ndarray, cells: int) -> np.ndarray:
    """The best a map of ``cells`` x ``cells`` can do: the regions (N, 48, 48) averaged into
    the cells, sharpened, and up-sampled as explain_crops up-samples."""
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(regions.astype(np.float32))[:, None], cells)
    return F.interpolate(pooled**4, size=(48, 48), mode="bilinear")[:, 0].numpy()


def test_no_2x2_map_can_concentrate_twice_on_the_features():
    """Why the mass test does not use the demo's 64 px: there the last stage is a 2x2 grid,
    and even the best 2x2 map puts well under twice the features' share of the area on them;
    8x8 cells can."""
    rng = np.random.default_rng(5)
    regions = np.stack([draw_face_with_regions(i % 7, rng)[1] for i in range(70)])
    assert concentration(best_map(regions, 2), regions) < 1.5
    assert concentration(best_map(regions, 8), regions) > 4.0


def test_framed_faces_let_region_mass_see_flips_and_the_head():
    """The mass test's framing (tests/helpers/maps.py) makes its wrong maps fail for the
    right reason: the best 4x4 map (the last stage at 128 px) is well over twice the
    features' share, and the same map flipped up-down, mirrored or transposed is under it, as
    is a map that is the head itself (though not by much). Centred faces could not tell a
    flipped map apart."""
    _, regions, heads, _ = framed_faces(70, np.random.default_rng(5))
    best = best_map(regions, 4)
    assert concentration(best, regions) > 2.5
    for wrong in (best[:, ::-1], best[:, :, ::-1], best.transpose(0, 2, 1)):
        assert concentration(wrong, regions) < 1.5
    # Knowing only where the head is gets close (about 1.85): the 2x bar is not a high one.
    assert concentration(heads, regions) < 2.0
    # The masks lie on the dark strokes, inside the head; the framing keeps most of the
    # features in the crop (the same face drawn at the centre, same zoom, for comparison).
    for index in range(14):
        label, side = index % len(EMOTIONS), (-1.0, 1.0)[index % 2]
        offset = (side * OFFSET[0], -side * OFFSET[1])
        framed = draw_face_parts(label, np.random.default_rng(index), offset=offset, zoom=ZOOM)
        centred = draw_face_parts(label, np.random.default_rng(index), zoom=ZOOM)
        assert framed.regions.sum() > 0.75 * centred.regions.sum()
        assert (framed.regions & ~framed.head).mean() < 0.005
        ring = cv2.dilate(framed.regions.astype(np.uint8), np.ones((5, 5), np.uint8))
        ring = ring.astype(bool) & ~framed.regions
        assert framed.face[framed.regions].mean() < framed.face[ring].mean() - 10
    centred = np.stack(
        [draw_face_with_regions(i % 7, np.random.default_rng(i))[1] for i in range(70)]
    )
    centred_best = best_map(centred, 4)
    assert concentration(centred_best[:, ::-1], centred) > 2.0
