"""EmotionRecognizer: well-formed results, batching, crops, drawing, inputs, checkpoints."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fer_lightning.inference import (
    EmotionRecognizer,
    FacePrediction,
    ImageError,
    TorchClassifier,
    load_image,
    read_image,
)
from fer_lightning.inference.backends import fold_batchnorms
from fer_lightning.inference.samples import ASTRONAUT_PATH, astronaut, mosaic
from fer_lightning.labels import EMOTIONS
from fer_lightning.models import create_model
from tests.helpers.inference import (
    SMALL_INPUT,
    installed_detector,
    png_with_claimed_size,
    save_lightning_checkpoint,
)


@pytest.fixture(scope="module")
def recognizer() -> EmotionRecognizer:
    torch.manual_seed(0)
    classifier = TorchClassifier(create_model("resnet18"), "cpu", "fp32", SMALL_INPUT)
    return EmotionRecognizer(classifier, detector=installed_detector())


def assert_well_formed(face: FacePrediction) -> None:
    assert isinstance(face.box, tuple) and len(face.box) == 4
    assert all(isinstance(v, int) for v in face.box)
    assert list(face.probs) == list(EMOTIONS)
    assert sum(face.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= p <= 1.0 for p in face.probs.values())
    assert face.label == max(face.probs, key=face.probs.get)
    as_dict = face.to_dict()
    assert set(as_dict) == {"box", "score", "label", "probs"} and as_dict["label"] == face.label


def test_predict_path_array_gray_and_pil_agree(recognizer):
    photo = astronaut()
    by_path = recognizer.predict(ASTRONAUT_PATH)
    (face,) = by_path
    assert_well_formed(face)
    by_array = recognizer.predict(photo)
    by_pil = recognizer.predict(Image.open(ASTRONAUT_PATH))
    assert by_array[0].box == face.box == by_pil[0].box
    assert by_array[0].probs == pytest.approx(face.probs, abs=1e-6)
    by_gray = recognizer.predict(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    # The network sees grayscale anyway; only the detector's view differs slightly.
    assert len(by_gray) == 1 and np.abs(np.subtract(by_gray[0].box, face.box)).max() <= 3


def test_no_face_is_an_empty_list(recognizer):
    assert recognizer.predict(np.full((200, 300, 3), 127, np.uint8)) == []


def test_batch_equals_one_by_one(recognizer):
    photo = astronaut()
    images = [photo, mosaic(photo), np.zeros_like(photo), np.roll(photo, 40, axis=1)]
    batched = recognizer.predict_batch(images)
    assert [len(faces) for faces in batched] == [1, 4, 0, 1]
    for image, faces in zip(images, batched, strict=True):
        single = recognizer.predict(image)
        assert [f.box for f in single] == [f.box for f in faces]
        for a, b in zip(single, faces, strict=True):
            np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-5)


def test_batch_size_does_not_change_probabilities():
    torch.manual_seed(1)
    model = create_model("resnet18")
    whole = TorchClassifier(model, "cpu", "fp32", SMALL_INPUT, batch_size=64)
    chunked = TorchClassifier(model, "cpu", "fp32", SMALL_INPUT, batch_size=3)
    crops = np.random.default_rng(0).integers(0, 256, (10, 48, 48), dtype=np.uint8)
    np.testing.assert_allclose(whole(crops), chunked(crops), atol=1e-5)


def test_bf16_agrees_with_fp32():
    torch.manual_seed(2)
    model = create_model("resnet18")
    crops = np.stack([cv2.resize(cv2.cvtColor(astronaut(), cv2.COLOR_BGR2GRAY), (48, 48))] * 2)
    fp32 = TorchClassifier(model, "cpu", "fp32", SMALL_INPUT)(crops)
    bf16 = TorchClassifier(model, "cpu", "bf16", SMALL_INPUT)(crops)
    assert np.abs(fp32 - bf16).max() < 0.02
    assert (fp32.argmax(1) == bf16.argmax(1)).all()


def test_save_faces_writes_the_crops(recognizer, tmp_path):
    faces = recognizer.predict_batch(
        [ASTRONAUT_PATH, mosaic(astronaut())], save_faces=tmp_path / "crops"
    )
    written = sorted(p.name for p in (tmp_path / "crops").iterdir())
    assert written == ["astronaut_face0.png"] + [f"image1_face{j}.png" for j in range(4)]
    crop = cv2.imread(str(tmp_path / "crops" / "astronaut_face0.png"), cv2.IMREAD_UNCHANGED)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8 and crop.std() > 20
    assert len(faces[1]) == 4


def test_draw_marks_each_face(recognizer):
    photo = astronaut()
    faces = recognizer.predict(photo)
    drawn = recognizer.draw(photo, faces)
    assert drawn.shape == photo.shape and drawn.dtype == np.uint8
    x0, y0, x1, _y1 = faces[0].box
    assert (drawn[y0, x0:x1] != photo[y0, x0:x1]).any()  # the box's top edge
    assert (drawn[:, x1 + 5 :] != photo[:, x1 + 5 :]).any()  # the bars beside it
    assert (recognizer.draw(photo, []) == photo).all()


def test_from_lightning_checkpoint_uses_its_input_size(tmp_path):
    path = save_lightning_checkpoint(tmp_path / "last.ckpt", input_size=SMALL_INPUT)
    recognizer = EmotionRecognizer.from_checkpoint(path, device="cpu", detector="none")
    assert recognizer.classifier.input_size == SMALL_INPUT
    (face,) = recognizer.predict(np.full((48, 48), 100, np.uint8))
    assert face.box == (0, 0, 48, 48)
    assert_well_formed(face)


def test_image_inputs_are_converted(tmp_path):
    photo = astronaut()
    cv2.imwrite(str(tmp_path / "deep.png"), photo.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(tmp_path / "gray.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    assert np.abs(read_image(tmp_path / "deep.png").astype(int) - photo).max() <= 1
    assert (read_image(tmp_path / "rgba.png") == photo).all()
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == photo.shape and (gray[..., 0] == gray[..., 2]).all()
    assert load_image(photo.astype(np.float32) / 255).shape == photo.shape
    assert (load_image(cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA)) == photo).all()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: cv2.imwrite(str(p), np.zeros((1, 1, 3), np.uint8)), "too small"),
        (lambda p: p.write_bytes(ASTRONAUT_PATH.read_bytes()[:5000]), "damaged"),
        (lambda p: p.write_text("hello"), "not an image"),
        (lambda p: png_with_claimed_size(p, 20_000, 20_000), "too large"),
        (lambda p: png_with_claimed_size(p, 12_000, 10_000), "120 MP"),
    ],
    ids=["1x1", "truncated", "text", "huge", "over-our-limit"],
)
def test_bad_images_raise_one_clear_error(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError, match=message) as error:
        read_image(path)
    assert str(path) in str(error.value)


def test_missing_file_and_bad_array():
    with pytest.raises(ImageError, match="no such file"):
        read_image(Path("/nonexistent/photo.jpg"))
    with pytest.raises(ImageError, match="expected"):
        load_image(np.zeros((10, 10, 5), np.uint8))


def _randomise_batchnorm_statistics(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def test_batchnorm_folding_keeps_the_logits():
    torch.manual_seed(4)
    model = create_model("resnet18").eval()
    _randomise_batchnorm_statistics(model)
    folded = fold_batchnorms(model, SMALL_INPUT)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 20  # untouched
    x = torch.rand(3, 3, SMALL_INPUT, SMALL_INPUT)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_batchnorm_folding_refuses_a_norm_applied_before_its_conv():
    class NormFirst(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.bn1 = torch.nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv1(self.bn1(x))

    model = NormFirst().eval()
    _randomise_batchnorm_statistics(model)
    assert fold_batchnorms(model, 16) is model
