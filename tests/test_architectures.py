"""Signature index, identification and rebuilding of torchvision architectures."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import list_models

from ckpt_migrate.architectures import (
    ArchSpec,
    build_model,
    identify,
    index_failures,
    indexed_builders,
    load_weights_strict,
    parse_arch_spec,
)
from ckpt_migrate.architectures.build_index import build_meta, write_index
from ckpt_migrate.errors import ArchitectureError

HERE = Path(__file__).resolve().parent
CLASSIFICATION = list_models(module=torchvision.models)


def meta_shapes(name: str, prefix: str = "", **kwargs: object) -> dict[str, tuple[int, ...]]:
    model = build_meta(name, **kwargs)
    return {prefix + key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_index_covers_every_builder() -> None:
    failures = index_failures()
    print(f"indexed {len(indexed_builders())} builders; could not index: {failures or 'none'}")
    assert set(indexed_builders()) | set(failures) == set(list_models())
    assert not set(indexed_builders()) & set(failures)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_identifies_every_classification_builder(name: str) -> None:
    found = identify(meta_shapes(name))
    assert found.found, found.describe()
    assert found.builder == name, found.describe()
    assert found.kwargs == {}
    assert found.prefix == ""


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("vgg16", {"num_classes": 2}),
        ("resnet18", {"num_classes": 7}),
        ("mobilenet_v3_small", {"num_classes": 10}),
        ("vit_b_16", {"num_classes": 3}),
        ("inception_v3", {"aux_logits": False, "num_classes": 5}),
        ("googlenet", {"aux_logits": False}),
        ("deeplabv3_resnet50", {"aux_loss": True, "num_classes": 4}),
        ("keypointrcnn_resnet50_fpn", {"num_keypoints": 9}),
    ],
)
def test_identifies_changed_kwargs(name: str, kwargs: dict) -> None:
    found = identify(meta_shapes(name, **kwargs))
    assert found.builder == name, found.describe()
    assert found.kwargs == kwargs
    assert found.describe().startswith(found.exact[0].label())


def test_describe_names_builder_and_kwargs() -> None:
    assert identify(meta_shapes("vgg16", num_classes=7)).describe() == "vgg16 (num_classes=7)"


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "backbone.", "_orig_mod.module."])
def test_tolerates_wrapper_prefixes(prefix: str) -> None:
    found = identify(meta_shapes("resnet18", prefix, num_classes=7))
    assert found.builder == "resnet18"
    assert found.kwargs == {"num_classes": 7}
    assert found.prefix == prefix
    assert prefix in found.describe()


def test_identifies_detection_model() -> None:
    shapes = meta_shapes("fasterrcnn_mobilenet_v3_large_fpn", num_classes=5)
    found = identify(shapes)
    assert found.builder == "fasterrcnn_mobilenet_v3_large_fpn", found.describe()
    assert found.kwargs == {"num_classes": 5}
    frozen_bn = {k: v for k, v in shapes.items() if not k.endswith("num_batches_tracked")}
    assert identify(frozen_bn).builder == "fasterrcnn_mobilenet_v3_large_fpn"


def test_nearest_candidates_when_a_key_is_missing() -> None:
    shapes = meta_shapes("vgg16", num_classes=2)
    del shapes["classifier.6.bias"]
    shapes["classifier.0.weight"] = (4096, 100)
    found = identify(shapes)
    assert not found.found and found.builder is None
    nearest = found.candidates[0]
    assert nearest.builder == "vgg16"
    assert nearest.variables == {"num_classes": 2}
    assert nearest.missing == ("classifier.6.bias",)
    assert nearest.unexpected == ()
    assert [(m.key, m.expected, m.actual) for m in nearest.mismatched] == [
        ("classifier.0.weight", (4096, 25088), (4096, 100))
    ]
    text = found.describe()
    assert "nearest" in text and "classifier.6.bias" in text and "[4096, 25088]" in text
    doc = json.loads(json.dumps(found.to_json()))
    assert doc["found"] is False and doc["candidates"][0]["missing"] == ["classifier.6.bias"]


def test_unrelated_keys_have_no_candidates() -> None:
    found = identify({"foo.weight": (3, 3), "bar": (1,)})
    assert not found.found and not found.candidates
    assert "no torchvision architecture" in found.describe()


def test_identify_does_not_import_torch() -> None:
    code = (
        "import sys; from ckpt_migrate.architectures import identify;"
        "r = identify({'features.0.weight': (64, 3, 11, 11)});"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=HERE.parent)


def test_identification_time_resnet50() -> None:
    shapes = meta_shapes("resnet50", "module.")
    start = time.perf_counter()
    found = identify(shapes)
    first = time.perf_counter() - start
    start = time.perf_counter()
    identify(shapes)
    warm = time.perf_counter() - start
    print(f"identify(resnet50, {len(shapes)} keys): first call {first * 1000:.1f} ms, warm {warm * 1000:.1f} ms")
    assert found.builder == "resnet50"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vgg16", ArchSpec("torchvision", "vgg16")),
        ("torchvision:resnet50", ArchSpec("torchvision", "resnet50")),
        ("auto", ArchSpec("auto", "auto")),
        ("pkg.models:Net", ArchSpec("user", "pkg.models:Net", "pkg.models", "Net")),
        ("pkg.models.Net", ArchSpec("user", "pkg.models:Net", "pkg.models", "Net")),
        ("src/net.py:Net", ArchSpec("user", "src/net.py:Net", "src/net.py", "Net")),
    ],
)
def test_parse_arch_spec(text: str, expected: ArchSpec) -> None:
    assert parse_arch_spec(text) == expected


@pytest.mark.parametrize("text", ["", "torchvision:", "a b", "pkg:1x", "torchvision:vgg-16"])
def test_parse_arch_spec_rejects(text: str) -> None:
    with pytest.raises(ArchitectureError):
        parse_arch_spec(text)


def _seeded_resnet18() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    for buffer_name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            buffer.uniform_(0.5, 1.5)
    return model.state_dict()


@pytest.mark.parametrize("spec", ["auto", "resnet18", "torchvision:resnet18"])
def test_build_and_load_round_trip(spec: str) -> None:
    state = {"module." + k: v for k, v in _seeded_resnet18().items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    model, builder, kwargs = build_model(spec, shapes, None)
    assert builder == "resnet18"
    assert kwargs == {"num_classes": 3}
    load_weights_strict(model, state)
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key.removeprefix("module.")], value), key
    model.eval()
    torch.manual_seed(1)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_arch_kwargs_override_inferred() -> None:
    shapes = meta_shapes("resnet18", num_classes=3)
    model, _, kwargs = build_model("resnet18", shapes, {"num_classes": 5})
    assert kwargs == {"num_classes": 5}
    assert model.fc.out_features == 5
    with pytest.raises(ArchitectureError, match="fc.weight: weights \\[3, 512\\], model \\[5, 512\\]"):
        load_weights_strict(model, {k: torch.zeros(s) for k, s in shapes.items()})


def test_load_weights_strict_says_what_did_not_fit() -> None:
    state = dict(_seeded_resnet18())
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(2)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ArchitectureError) as caught:
        load_weights_strict(model, state)
    message = str(caught.value)
    assert "1 missing (layer1.0.conv1.weight)" in message
    assert "1 unexpected (extra.weight)" in message
    assert "conv1.weight: weights [64, 1, 7, 7], model [64, 3, 7, 7]" in message
    assert caught.value.missing == ["layer1.0.conv1.weight"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_num_batches_tracked_is_tolerated() -> None:
    state = {k: v for k, v in _seeded_resnet18().items() if not k.endswith("num_batches_tracked")}
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    load_weights_strict(model, state)
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_build_model_errors() -> None:
    with pytest.raises(ArchitectureError, match="did you mean resnet18"):
        build_model("resnet19", None, None)
    with pytest.raises(ArchitectureError, match="no torchvision architecture"):
        build_model("auto", {"foo.weight": (3, 3)}, None)
    with pytest.raises(ArchitectureError, match="pretrained"):
        build_model("resnet18", None, {"weights": "DEFAULT"})
    with pytest.raises(ArchitectureError, match="cannot build torchvision resnet18"):
        build_model("resnet18", None, {"no_such_kwarg": 1})


@pytest.mark.parametrize("form", ["module", "file"])
def test_user_code_path(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    spec = "helpers_user_model:TinyNet" if form == "module" else f"{HERE / 'helpers_user_model.py'}:TinyNet"
    torch.manual_seed(0)
    source, _, _ = build_model(spec, None, {"num_classes": 5, "width": 6})
    state = source.state_dict()
    model, name, kwargs = build_model(spec, {k: tuple(v.shape) for k, v in state.items()}, {"num_classes": 5, "width": 6})
    assert name == spec and kwargs == {"num_classes": 5, "width": 6}
    load_weights_strict(model, {"model." + k: v for k, v in state.items()})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_user_code_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    with pytest.raises(ArchitectureError, match="cannot import"):
        build_model("no_such_package_xyz.models:Net", None, None)
    with pytest.raises(ArchitectureError, match="no attribute"):
        build_model("helpers_user_model:Missing", None, None)
    with pytest.raises(ArchitectureError, match="--arch-kwargs"):
        build_model("helpers_user_model:TinyNet", None, {"bogus": 1})


def test_write_index_is_deterministic(tmp_path: Path) -> None:
    index = {"builders": {"b": {"variants": []}, "a": {"variants": []}}, "failed": {}}
    write_index(index, tmp_path / "one.json.gz")
    write_index(dict(reversed(list(index.items()))), tmp_path / "two.json.gz")
    assert (tmp_path / "one.json.gz").read_bytes() == (tmp_path / "two.json.gz").read_bytes()
