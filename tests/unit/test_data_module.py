"""FERDataModule on the synthetic set and on small generated FER2013/FACES/JAFFE files."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from fer_lightning.data import DatasetError, DatasetNotFoundError, FERDataModule
from fer_lightning.data.synthetic import generate_synthetic_csv
from fer_lightning.faces.transforms import tta_views
from tests.helpers.data import csv_text, paper_augment, random_faces, write

SMALL = {"train_per_class": 6, "val_per_class": 3, "test_per_class": 2, "seed": 3}


@pytest.fixture
def synthetic_dm(tmp_path):
    dm = FERDataModule(
        "synthetic",
        root=str(tmp_path),
        batch_size=10,
        num_workers=0,
        input_size=64,
        synthetic=SMALL,
        augment=paper_augment(),
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_shapes_dtypes_and_labels(synthetic_dm):
    dm = synthetic_dm
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (42, 21, 14)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        seen = []
        for faces, labels in loader:
            assert faces.dtype == torch.uint8 and faces.shape[1:] == (48, 48)
            assert labels.dtype == torch.int64 and labels.shape == (faces.shape[0],)
            seen.append(labels)
            x, y = dm.on_after_batch_transfer((faces, labels), 0)
            assert x.dtype == torch.float32 and x.shape == (faces.shape[0], 3, 64, 64)
            assert x.min() >= 0.0 and x.max() <= 1.0
            assert torch.equal(y, labels)
        labels = torch.cat(seen)
        assert labels.min() >= 0 and labels.max() <= 6
        assert len(labels) == len(loader.dataset)  # every face once, none dropped
    assert dm.num_classes == 7 and dm.label_names[3] == "happy" and dm.input_size == 64


def test_augmentation_changes_train_batches_not_validation(synthetic_dm):
    dm = synthetic_dm
    idx = list(range(10))
    train_a, _ = dm.train_set.__getitems__(idx)
    train_b, _ = dm.train_set.__getitems__(idx)
    assert not torch.equal(train_a, train_b)  # random flips and rotations
    val_a, _ = dm.val_set.__getitems__(idx)
    val_b, _ = dm.val_set.__getitems__(idx)
    assert torch.equal(val_a, val_b)
    # Validation faces are exactly the parsed CSV rows; training faces without augment too.
    plain = FERDataModule("synthetic", root=dm.root, num_workers=0, augment={}, synthetic=SMALL)
    plain.setup("fit")
    raw_train, _ = plain.train_set.__getitems__(idx)
    assert torch.equal(raw_train, plain.train_set.__getitems__(idx)[0])
    assert not torch.equal(train_a, raw_train)
    assert torch.equal(val_a, plain.val_set.__getitems__(idx)[0])


def test_tta_views_of_a_validation_batch(synthetic_dm):
    faces, _ = next(iter(synthetic_dm.val_dataloader()))
    x, _ = synthetic_dm.on_after_batch_transfer((faces, torch.zeros(len(faces))), 0)
    views = tta_views(x)
    assert views.shape == (10, *x.shape)
    assert torch.equal(views[0], x)
    assert torch.allclose(views[5], x.flip(-1), atol=1e-5)  # view 5: angle 0, mirrored


def test_class_counts_and_weights(tmp_path, caplog):
    faces, _ = random_faces(30)
    # Per class: 10 angry, 5 disgust, 0 fear, 5 happy, 5 sad, 3 surprise, 2 neutral.
    labels = np.array([0] * 10 + [1] * 5 + [3] * 5 + [4] * 5 + [5] * 3 + [6] * 2)
    usage = ["Training"] * 30
    usage[-2:] = ["PublicTest", "PrivateTest"]
    write(tmp_path / "fer2013" / "fer2013.csv", csv_text(faces, labels, usage))
    dm = FERDataModule("fer2013", root=str(tmp_path), num_workers=0, input_size=32)
    dm.setup("fit")
    counts = dm.class_counts()
    assert counts.dtype == torch.int64
    assert counts.tolist() == [10, 5, 0, 5, 5, 3, 0]  # last two rows are val/test
    with caplog.at_level(logging.WARNING):
        weights = dm.class_weights()
    assert weights.dtype == torch.float32 and weights.shape == (7,)
    assert weights[2] == 0 and weights[6] == 0 and "fear, neutral" in caplog.text
    present = weights[counts > 0]
    assert present.mean().item() == pytest.approx(1.0)
    assert weights[1] / weights[0] == pytest.approx(2.0)  # inverse frequency


def test_balanced_sampler_evens_out_classes(tmp_path):
    faces, _ = random_faces(120)
    labels = np.array([3] * 100 + [1] * 14 + [0] * 4 + [2, 2])
    usage = ["Training"] * 118 + ["PublicTest", "PrivateTest"]
    write(tmp_path / "fer2013.csv", csv_text(faces, labels, usage))
    dm = FERDataModule(
        "fer2013",
        root=str(tmp_path),
        fer2013="fer2013.csv",
        batch_size=59,
        num_workers=0,
        balanced_sampler=True,
        augment={},
    )
    dm.setup("fit")
    torch.manual_seed(0)
    drawn = torch.cat([y for _ in range(10) for _, y in dm.train_dataloader()])
    share = torch.bincount(drawn, minlength=7)[[0, 1, 3]].float() / len(drawn)
    assert torch.all((share > 0.25) & (share < 0.42)), share  # ~1/3 each, not 100/118 happy


def test_fer2013_faces_jaffe_trains_on_all_three(tmp_path):
    faces, labels = random_faces(12)
    usage = ["Training"] * 6 + ["PublicTest"] * 3 + ["PrivateTest"] * 3
    write(tmp_path / "fer2013" / "fer2013.csv.gz", csv_text(faces, labels, usage), gz=True)
    faces_faces, faces_labels = random_faces(4, seed=1)
    write(
        tmp_path / "faces" / "faces.csv",
        csv_text(faces_faces, faces_labels, None, ("emotion", "pixels")),
    )
    jaffe_faces, jaffe_labels = random_faces(5, seed=2)
    write(
        tmp_path / "jaffe" / "jaffe.csv",
        csv_text(jaffe_faces, jaffe_labels, None, ("emotion", "pixels")),
    )
    dm = FERDataModule("fer2013_faces_jaffe", root=str(tmp_path), num_workers=0, augment={})
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (15, 3, 3)
    got, _ = dm.train_set.__getitems__(list(range(15)))
    expected = np.concatenate([faces[:6], faces_faces, jaffe_faces])
    assert np.array_equal(got.numpy(), expected)
    assert np.array_equal(dm.test_set.__getitems__([0, 1, 2])[0].numpy(), faces[9:])


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("fer2013", ["fer2013.csv", "icml_face_data.csv", "Kaggle"]),
        # Everything FER+ needs in the first message: both files, where from, where they go.
        ("ferplus", ["fer2013new.csv", "github.com/microsoft/FERPlus", "same folder", "Kaggle"]),
        # Each dataset's own message; SRC is said to be the original archive's images.
        ("jaffe", ["JAFFE", "prepare jaffe SRC", "SRC is the folder of the archive's TIFF"]),
        ("faces", ["FACES", "prepare faces SRC", "SRC is the folder of its JPEGs"]),
    ],
)
def test_missing_dataset_messages_say_what_each_dataset_needs(tmp_path, dataset, expected):
    dm = FERDataModule(dataset, root=str(tmp_path / "data"), num_workers=0)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(tmp_path / "data") in message
    for words in expected:
        assert words in message, words
    # The offline hint leads to the few-minute demo, not to data=synthetic's 224 px RMN.
    assert "experiment=demo" in message and "ResNet-18 at 64 px" in message
    if dataset != "jaffe":
        assert "fer2013.csv, icml_face_data.csv, train.csv" not in message  # FER2013's words


def test_missing_extra_datasets_and_label_file_name_themselves(tmp_path):
    write(
        tmp_path / "data" / "fer2013" / "fer2013.csv", csv_text(*random_faces(3), ["Training"] * 3)
    )
    dm = FERDataModule("fer2013_faces_jaffe", root=str(tmp_path / "data"), num_workers=0)
    with pytest.raises(DatasetNotFoundError, match=r"(?s)FACES not found.*prepare faces SRC"):
        dm.setup("fit")
    dm = FERDataModule("ferplus", root=str(tmp_path / "data"), num_workers=0)
    with pytest.raises(DatasetNotFoundError, match=r"(?s)fer2013new.csv.*microsoft/FERPlus"):
        dm.prepare_data()


def test_fer2013_without_validation_rows_is_an_error(tmp_path):
    write(tmp_path / "fer2013.csv", csv_text(*random_faces(3), ["Training"] * 3))
    dm = FERDataModule("fer2013", root=str(tmp_path), fer2013="fer2013.csv", num_workers=0)
    with pytest.raises(ValueError, match="no val split"):
        dm.setup("fit")


def test_setup_twice_pickle_and_workers(synthetic_dm):
    dm = synthetic_dm
    train_set = dm.train_set
    dm.setup("test")
    assert dm.train_set is train_set  # parsed once
    blob = pickle.dumps(dm)
    assert len(blob) < 100_000  # memory-mapped faces travel as a file name (ddp_spawn, workers)
    clone = pickle.loads(blob)
    assert torch.equal(clone.val_set[4][0], dm.val_set[4][0])
    dm.num_workers = 2
    faces, labels = next(iter(dm.val_dataloader()))
    assert faces.shape == (10, 48, 48) and labels.dtype == torch.int64


def test_synthetic_generation_is_deterministic_and_balanced(tmp_path):
    def make(folder, train, seed):
        return generate_synthetic_csv(
            folder, train_per_class=train, val_per_class=1, test_per_class=1, seed=seed
        )

    a = make(tmp_path / "a", 3, seed=5)
    b = make(tmp_path / "b", 3, seed=5)
    c = make(tmp_path / "c", 3, seed=6)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    # Changing the training size leaves the validation images as they were.
    d = make(tmp_path / "d", 4, seed=5)
    val_rows = lambda p: [ln for ln in p.read_text().splitlines() if ",PublicTest," in ln]  # noqa: E731
    assert val_rows(a) == val_rows(d) and len(val_rows(a)) == 7


def test_synthetic_classes_differ_by_expression_not_brightness():
    from fer_lightning.data.synthetic import make_split

    faces, labels = make_split(40, np.random.default_rng(0))
    means = np.array([faces[labels == c].mean() for c in range(7)])
    spread_within = faces.reshape(len(faces), -1).mean(1).std()
    assert means.std() < 0.25 * spread_within  # mean brightness says little about the class
    # ...but the class mean images differ in the mouth region (lower middle of the face).
    mouths = np.array([faces[labels == c][:, 30:42, 14:34].astype(float).mean(0) for c in range(7)])
    assert np.abs(mouths[3] - mouths[4]).max() > 10  # happy vs sad


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": 100}, "multiple of 32"),
        ({"source": "ckplus"}, "data.dataset must be one of"),
        ({"dataset": "fer2013"}, "data.dataset=fer2013, but data.source reads synthetic"),
        ({"fer2031": "x"}, "data.fer2031: not a setting of data=synthetic"),
        ({"on_bad_row": "ignore"}, "on_bad_row"),
        ({"augment": {"Rotate": {"limit": 30, "value": 0}}}, "augment.Rotate"),
        ({"augment": {"Twirl": {}}}, "not an albumentations transform"),
        ({"synthetic": {"train_size": 3}}, "unknown keys"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FERDataModule(**{"source": "synthetic", "root": "unused", "synthetic": SMALL, **kwargs})


def test_hydra_configs_instantiate(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from fer_lightning.cli.config import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for name in ("synthetic", "fer2013", "fer2013_faces_jaffe"):
            cfg = compose(
                "train",
                overrides=[f"data={name}", f"paths.data_dir={tmp_path}", "data.input_size=64"],
            )
            dm = instantiate(cfg.data)
            assert isinstance(dm, FERDataModule) and dm.dataset == name
            assert dm.input_size == 64 and dm.batch_size == 48 and dm.num_workers == 2
            assert str(dm.root) == str(tmp_path)
            assert list(dm.augment_config) == ["HorizontalFlip", "Rotate"]
        cfg = compose(
            "train",
            overrides=[
                "data=synthetic",
                f"paths.data_dir={tmp_path}",
                "data.synthetic.train_per_class=2",
                "data.synthetic.val_per_class=1",
                "data.synthetic.test_per_class=1",
                "data.num_workers=0",
            ],
        )
        dm = instantiate(cfg.data)
        dm.prepare_data()
        dm.setup("fit")
        assert (len(dm.train_set), len(dm.val_set)) == (14, 7)
        assert (tmp_path / "synthetic").is_dir() and (tmp_path / ".cache").is_dir()


class _TinyClassifier(pl.LightningModule):
    """Just enough of a model to run the DataModule through Lightning."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3 * 32 * 32, 7)
        self.sizes: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
        return torch.nn.functional.cross_entropy(self.head(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.head(x.flatten(1)), y)
        self.log("val/loss", loss, sync_dist=True)

    def on_fit_start(self) -> None:
        assert self.trainer.datamodule.class_weights().shape == (7,)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_batch_larger_than_the_training_set_with_drop_last_is_refused(tmp_path):
    dm = FERDataModule(
        "synthetic",
        root=str(tmp_path),
        batch_size=500,
        num_workers=0,
        drop_last=True,
        synthetic=SMALL,
    )
    with pytest.raises(DatasetError, match=r"data.batch_size=500 is larger than the 42 training"):
        dm.setup("fit")


def test_is_synthetic_says_whether_the_faces_are_the_generated_ones(tmp_path):
    """The flag training records: data=synthetic, and the FER+-format synthetic files wherever
    data.fer2013 points; a real-format file is not synthetic."""
    from fer_lightning.data.synthetic import generate_synthetic_ferplus

    assert FERDataModule("synthetic", root=str(tmp_path), synthetic=SMALL).is_synthetic
    generate_synthetic_ferplus(tmp_path / "ferplus_synthetic", **SMALL)
    dm = FERDataModule("ferplus", root=str(tmp_path), fer2013="ferplus_synthetic")
    assert dm.is_synthetic and dm.dataset == "ferplus"
    synthetic_csv = generate_synthetic_csv(tmp_path / "s", **SMALL)
    assert FERDataModule("fer2013", root=str(tmp_path), fer2013=str(synthetic_csv)).is_synthetic
    write(tmp_path / "fer2013" / "fer2013.csv", csv_text(*random_faces(3), ["Training"] * 3))
    assert not FERDataModule("fer2013", root=str(tmp_path)).is_synthetic
