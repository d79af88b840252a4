"""VGG feature extractor: torchvision-layout weights round-trip, clear errors, frozen outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.inpaint.vgg import VGGFeatures, layer_names, load_vgg_features

# torchvision's `features` indices of the convolutions and their (out, in) channels, written out by
# hand so the test checks the layout rather than re-deriving it from the module under test.
VGG19_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
               14: (256, 256), 16: (256, 256), 19: (512, 256), 21: (512, 512), 23: (512, 512),
               25: (512, 512), 28: (512, 512), 30: (512, 512), 32: (512, 512), 34: (512, 512)}  # fmt: skip
VGG16_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
               14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
               26: (512, 512), 28: (512, 512)}  # fmt: skip


def _state(convs: dict[int, tuple[int, int]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for i, (out_c, in_c) in convs.items():
        state[f"features.{i}.weight"] = torch.randn(out_c, in_c, 3, 3, generator=gen) * 0.05
        state[f"features.{i}.bias"] = torch.randn(out_c, generator=gen) * 0.05
    state["classifier.0.weight"] = torch.randn(8, 8, generator=gen)  # must be ignored
    return state


@pytest.fixture
def vgg19_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = _state(VGG19_CONVS)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    return path, state


def test_layer_tables_match_torchvision_lengths():
    assert len(layer_names("vgg19")) == 37 and len(layer_names("vgg16")) == 31
    assert layer_names("vgg19")[35] == "relu5_4" and layer_names("vgg16")[15] == "relu3_3"


def test_weights_round_trip_through_a_file(vgg19_file):
    path, state = vgg19_file
    vgg = VGGFeatures("vgg19", ("relu5_4",), weights=path)
    convs = [m for m in vgg.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(VGG19_CONVS)
    for conv, index in zip(convs, VGG19_CONVS):
        assert torch.equal(conv.weight, state[f"features.{index}.weight"])
        assert torch.equal(conv.bias, state[f"features.{index}.bias"])
    assert vgg.describe() == f"file({path.resolve()})"


def test_vgg16_layout_loads_and_returns_named_layers(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(_state(VGG16_CONVS, seed=1), path)
    vgg = VGGFeatures("vgg16", ("relu1_2", "relu2_2", "relu3_3"), weights=path)
    out = vgg(torch.rand(2, 3, 16, 24))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "relu1_2": (2, 64, 16, 24), "relu2_2": (2, 128, 8, 12), "relu3_3": (2, 256, 4, 6)}  # fmt: skip
    assert all((v >= 0).all() for v in out.values())


def test_imagenet_normalisation_happens_inside(vgg19_file):
    path, state = vgg19_file
    x = torch.rand(1, 3, 8, 8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = F.conv2d((x - mean) / std, state["features.0.weight"], state["features.0.bias"], padding=1)
    got = VGGFeatures("vgg19", ("conv1_1",), weights=path)(x)["conv1_1"]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "corrupt, needle",
    [
        (lambda s: s.pop("features.34.weight"), "missing keys ['features.34.weight']"),
        (lambda s: s.__setitem__("features.1.weight", torch.zeros(1)), "unexpected keys ['features.1.weight']"),
        (lambda s: s.__setitem__("features.2.weight", torch.zeros(64, 64, 5, 5)), "features.2.weight has shape"),
    ],
)
def test_bad_weights_name_the_file(tmp_path, corrupt, needle):
    state = _state(VGG19_CONVS)
    corrupt(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(InputError) as err:
        VGGFeatures("vgg19", ("relu1_1",), weights=path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_vgg16_file_is_not_a_vgg19(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(_state(VGG16_CONVS), path)
    with pytest.raises(InputError, match="not a torchvision vgg19 state dict"):
        VGGFeatures("vgg19", ("relu3_4",), weights=path)


def test_unreadable_or_absent_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="cannot read"):
        VGGFeatures(weights=junk)
    with pytest.raises(InputError, match="not found"):
        VGGFeatures(weights=tmp_path / "absent.pth")


def test_no_weights_refuses_with_instructions(monkeypatch):
    monkeypatch.delenv("VILOCAL_VGG19_WEIGHTS", raising=False)
    with pytest.raises(ConfigError) as err:
        VGGFeatures("vgg19", ("relu3_4",))
    assert "VILOCAL_VGG19_WEIGHTS" in str(err.value) and "random_vgg" in str(err.value)


def test_environment_variable_names_the_file(monkeypatch, vgg19_file):
    path, state = vgg19_file
    monkeypatch.setenv("VILOCAL_VGG19_WEIGHTS", str(path))
    vgg = VGGFeatures("vgg19", ("relu1_1",))
    assert torch.equal(vgg.features.conv1_1.weight, state["features.0.weight"])


def test_random_vgg_is_fixed_by_seed_frozen_and_labelled():
    a = VGGFeatures("vgg19", ("relu2_1",), random_seed=0)
    b = VGGFeatures("vgg19", ("relu2_1",), random_seed=0)
    c = VGGFeatures("vgg19", ("relu2_1",), random_seed=1)
    assert torch.equal(a.features.conv2_1.weight, b.features.conv2_1.weight)
    assert not torch.equal(a.features.conv2_1.weight, c.features.conv2_1.weight)
    assert a.describe() == "random(seed=0)"
    assert not any(p.requires_grad for p in a.parameters())
    assert not a.train().training
    assert len(a.features) == layer_names("vgg19").index("relu2_1") + 1  # truncated after the deepest layer


def test_unknown_layer_or_arch():
    with pytest.raises(ConfigError, match="relu3_4"):
        VGGFeatures("vgg16", ("relu3_4",), random_seed=0)  # VGG-16 has no relu3_4
    with pytest.raises(ConfigError, match="unknown VGG architecture"):
        VGGFeatures("vgg11", ("relu1_1",), random_seed=0)


def test_shared_instance_is_built_once(vgg19_file):
    path, _ = vgg19_file
    a = load_vgg_features("vgg19", weights=path, layers=("relu3_4",))
    assert load_vgg_features("vgg19", weights=str(path), layers=("relu3_4",)) is a
    assert load_vgg_features("vgg19", random_seed=0, layers=("relu3_4",)) is not a
