"""The model zoo: every variant builds, runs, and matches the published architecture exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fer_lightning.models import (
    MaskingBlock,
    ResMaskingNet,
    create_model,
    list_models,
    register_model,
)
from fer_lightning.models.zoo import describe, format_table
from tests.helpers.recipe import load_recipe, recipe_input

PUBLISHED = [
    "resmasking",
    "resmasking_dropout1",
    "resmasking_dropout2",
    "resmasking50_dropout1",
    "resmasking_naive_dropout1",
]
BASELINES = ["resnet18", "resnet34", "resnet50"]
SMALL = [name for name in PUBLISHED + BASELINES if name != "resmasking50_dropout1"]


def test_registry_lists_every_variant():
    assert set(list_models()) == set(PUBLISHED + BASELINES)


def test_every_architecture_has_one_table_entry_and_the_table_is_what_is_read():
    """presets.ARCHITECTURES is the one home of each architecture's facts: it lists exactly the
    registered builders, and the download table and the loaders read it."""
    from fer_lightning.labels import EMOTIONS
    from fer_lightning.models import hub
    from fer_lightning.models.checkpoint_reader import matching_architectures
    from fer_lightning.models.presets import ARCHITECTURES, default_input_size

    assert set(ARCHITECTURES) == set(list_models())
    published = {name: p.published for name, p in ARCHITECTURES.items() if p.published}
    assert {n: f for n, f in hub.PRETRAINED_FILES.items() if f.is_checkpoint} == published
    for name, file in published.items():
        assert file.arch == name
        assert len(ARCHITECTURES[name].labels) == create_model(name).fc[-1].out_features
    assert all(p.labels == EMOTIONS for p in ARCHITECTURES.values())
    assert (
        default_input_size("resmasking_dropout1") == ARCHITECTURES["resmasking_dropout1"].input_size
    )
    # Key twins load as the table's preferred one.
    state = create_model("resmasking_naive_dropout1").state_dict()
    assert matching_architectures(state)[0] == "resmasking_dropout1"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="resmasking_dropout1"):
        create_model("resmasking_dropout3")


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda num_classes=7: nn.Linear(1, 1))


@pytest.mark.parametrize("name", PUBLISHED)
def test_keys_shapes_and_parameter_count_equal_the_manifest(name, manifest):
    with torch.device("meta"):
        model = create_model(name)
    state = model.state_dict()
    expected = manifest[name]["keys"]
    assert list(state) == [e["key"] for e in expected]
    assert [list(t.shape) for t in state.values()] == [e["shape"] for e in expected]
    assert sum(p.numel() for p in model.parameters()) == manifest[name]["parameters"]


@pytest.mark.parametrize("name", PUBLISHED)
def test_shared_shortcuts_are_one_tensor(name, manifest):
    """Keys with one `tensor` number in the manifest are the same tensor in the model."""
    with torch.device("meta"):
        state = create_model(name).state_dict(keep_vars=True)
    by_id: dict[int, torch.Tensor] = {}
    for entry in manifest[name]["keys"]:
        tensor = state[entry["key"]]
        first = by_id.setdefault(entry["tensor"], tensor)
        assert first is tensor, entry["key"]
    assert len(by_id) == manifest[name]["unique_tensors"]


@pytest.mark.parametrize("name", SMALL)
def test_forward_at_64(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_num_classes_is_honoured():
    model = create_model("resmasking_dropout2", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3)
    assert model.fc[-1].out_features == 3


@pytest.mark.parametrize("size", [64, 224])
def test_golden_logits(size, manifest, golden_logits):
    model = load_recipe(
        create_model("resmasking_dropout1"), manifest["resmasking_dropout1"]["keys"]
    )
    with torch.no_grad():
        logits = model(recipe_input(size))
    expected = torch.tensor(golden_logits[str(size)])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_masking_block_outputs_a_channel_softmax(depth):
    block = MaskingBlock(8, depth).eval()
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        mask = block(x)
    assert mask.shape == x.shape
    assert (mask >= 0).all()
    torch.testing.assert_close(mask.sum(dim=1), torch.ones(2, 16, 16))


def test_masking_depth_outside_1_to_4_is_refused():
    with pytest.raises(ValueError, match="between 1 and 4"):
        MaskingBlock(8, 5)


@pytest.mark.parametrize("shape", [(1, 3, 48, 48), (1, 3, 64, 80 + 2), (1, 3, 100, 224)])
def test_sides_not_multiple_of_32_are_refused_clearly(shape):
    model = create_model("resmasking_dropout1").eval()
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.rand(*shape))


def test_grayscale_input_is_refused_clearly():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        create_model("resnet18")(torch.rand(1, 1, 64, 64))


def test_non_square_multiples_of_32_work():
    model = create_model("resmasking").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 96)).shape == (1, 7)


def test_model_table_counts_parameters_and_flops():
    rows = [
        describe(name) for name in ("resnet34", "resmasking_dropout1", "resmasking_naive_dropout1")
    ]
    by_name = {row["name"]: row for row in rows}
    assert by_name["resmasking_dropout1"]["parameters"] == 137_796_423
    # ResNet-34 is the well-known 3.6 GMACs = 7.3 GFLOPs at 224.
    assert by_name["resnet34"]["gflops"] == pytest.approx(7.34, abs=0.05)
    # The naive ablation does the trunk's work only.
    assert by_name["resmasking_naive_dropout1"]["gflops"] == pytest.approx(
        by_name["resnet34"]["gflops"], rel=0.01
    )
    assert by_name["resmasking_dropout1"]["gflops"] > 5 * by_name["resnet34"]["gflops"]
    table = format_table(rows, 224)
    assert "137,796,423" in table and "built, not applied" in table
    assert isinstance(create_model("resmasking"), ResMaskingNet)
