"""Every built-in schema, applied to a before fixture, gives its after fixture.

The test is parametrized over ``list_schemas()``: a new built-in file is tested by being shipped,
and fails until it has a fixture here.
"""

from __future__ import annotations

import pytest

from ckpt_migrate.schemas import ListTensor, ListTensorOps, Schema, apply_schemas, list_schemas, resolve_schemas

Case = tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]

DENSE_BEFORE = {
    "features.conv0.weight": (64, 3, 7, 7),
    "features.norm0.weight": (64,),
    "features.denseblock1.denselayer1.norm.1.weight": (64,),
    "features.denseblock1.denselayer1.norm.1.bias": (64,),
    "features.denseblock1.denselayer1.norm.1.running_mean": (64,),
    "features.denseblock1.denselayer1.norm.1.running_var": (64,),
    "features.denseblock1.denselayer1.relu.1.weight": (1,),
    "features.denseblock1.denselayer1.conv.1.weight": (128, 64, 1, 1),
    "features.denseblock1.denselayer1.norm.2.weight": (128,),
    "features.denseblock1.denselayer1.conv.2.weight": (32, 128, 3, 3),
    "features.transition1.norm.weight": (256,),
    "classifier.weight": (1000, 1024),
}

FIXTURES: dict[str, list[Case]] = {
    "strip-wrappers": [
        ({"module.conv.weight": (4, 3), "module.fc.bias": (2,)}, {"conv.weight": (4, 3), "fc.bias": (2,)}),
        ({"module._orig_mod.a": (1,), "module._orig_mod.b": (2,)}, {"a": (1,), "b": (2,)}),
        ({"_orig_mod.module.a": (1,), "_orig_mod.module.b": (2,)}, {"a": (1,), "b": (2,)}),
        ({"_forward_module.model.w": (3,)}, {"model.w": (3,)}),
        ({"module.a": (1,), "b": (2,)}, {"module.a": (1,), "b": (2,)}),
    ],
    "lightning-to-plain": [
        ({"model.conv1.weight": (6, 1, 5, 5), "model.fc.bias": (10,)}, {"conv1.weight": (6, 1, 5, 5), "fc.bias": (10,)}),
        ({"net.0.weight": (3, 2), "net.0.bias": (3,)}, {"0.weight": (3, 2), "0.bias": (3,)}),
        ({"model.a": (1,), "loss.weight": (2,)}, {"model.a": (1,), "loss.weight": (2,)}),
    ],
    "densenet-legacy": [
        (
            DENSE_BEFORE,
            {
                key.replace("norm.1", "norm1").replace("relu.1", "relu1").replace("conv.1", "conv1")
                .replace("norm.2", "norm2").replace("conv.2", "conv2"): shape
                for key, shape in DENSE_BEFORE.items()
            },
        ),
    ],
    "vgg16-fc-to-conv": [
        (
            {
                "features.28.weight": (512, 512, 3, 3),
                "classifier.0.weight": (4096, 25088),
                "classifier.0.bias": (4096,),
                "classifier.3.weight": (4096, 4096),
                "classifier.3.bias": (4096,),
                "classifier.6.weight": (10, 4096),
                "classifier.6.bias": (10,),
            },
            {
                "features.28.weight": (512, 512, 3, 3),
                "classifier.0.weight": (4096, 512, 7, 7),
                "classifier.0.bias": (4096,),
                "classifier.3.weight": (4096, 4096, 1, 1),
                "classifier.3.bias": (4096,),
                "classifier.6.weight": (10, 4096, 1, 1),
                "classifier.6.bias": (10,),
            },
        ),
    ],
}

BUILTINS = [schema for schema in list_schemas() if schema.source.startswith("builtin:")]


class ShapeOps(ListTensorOps):
    """Tensors as bare shapes, so that VGG-sized fixtures cost nothing."""

    def shape(self, t: tuple[int, ...]) -> tuple[int, ...]:
        return t

    def reshape(self, t: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)


def test_the_required_builtins_ship():
    assert {"strip-wrappers", "lightning-to-plain", "densenet-legacy", "vgg16-fc-to-conv"} <= {s.name for s in BUILTINS}


@pytest.mark.parametrize("schema", BUILTINS, ids=lambda s: s.name)
def test_builtin_schema_is_described_and_named_after_its_file(schema: Schema):
    assert schema.source == f"builtin:{schema.name}"
    assert schema.description and schema.rules


@pytest.mark.parametrize("schema", BUILTINS, ids=lambda s: s.name)
def test_builtin_schema_before_after(schema: Schema):
    assert schema.name in FIXTURES, f"built-in schema {schema.name!r} has no before/after fixture in {__file__}"
    for before, after in FIXTURES[schema.name]:
        result = apply_schemas(before, resolve_schemas([schema]), ShapeOps())
        assert list(result.tensors.items()) == list(after.items())


def test_vgg16_reshape_keeps_values_in_order():
    data = {"classifier.6.weight": ListTensor.arange((3, 4096))}
    schema = next(s for s in BUILTINS if s.name == "vgg16-fc-to-conv")
    result = apply_schemas(data, [schema], ListTensorOps())
    assert result.tensors["classifier.6.weight"].shape == (3, 4096, 1, 1)
    assert result.tensors["classifier.6.weight"].data == data["classifier.6.weight"].data
    assert len(result.warnings) == 2
