"""Key alignment and inferred schemas, on key → shape mappings."""

from __future__ import annotations

import pytest

from ckpt_migrate.errors import SchemaError
from ckpt_migrate.schemas import (
    Alignment,
    ListTensor,
    ListTensorOps,
    align_keys,
    apply_schemas,
    load_schema,
    loads_schema,
    schema_from_alignment,
)

LENET = {
    "conv1.weight": (6, 1, 5, 5),
    "conv1.bias": (6,),
    "conv2.weight": (16, 6, 5, 5),
    "conv2.bias": (16,),
    "fc1.weight": (120, 400),
    "fc1.bias": (120,),
    "fc2.weight": (84, 120),
    "fc2.bias": (84,),
    "fc3.weight": (10, 84),
    "fc3.bias": (10,),
}

SEQUENTIAL = {
    "features.0.weight": (6, 1, 5, 5),
    "features.0.bias": (6,),
    "features.3.weight": (16, 6, 5, 5),
    "features.3.bias": (16,),
    "classifier.0.weight": (120, 400),
    "classifier.0.bias": (120,),
    "classifier.2.weight": (84, 120),
    "classifier.2.bias": (84,),
    "classifier.4.weight": (10, 84),
    "classifier.4.bias": (10,),
}


def apply_inferred(text: str, source: dict[str, tuple[int, ...]], tmp_path) -> dict[str, ListTensor]:
    path = tmp_path / "inferred.toml"
    path.write_text(text, encoding="utf-8")
    tensors = {key: ListTensor.arange(shape) for key, shape in source.items()}
    return apply_schemas(tensors, [load_schema(str(path))], ListTensorOps(), strict=True).tensors


def test_lenet_onto_sequential(tmp_path):
    alignment = align_keys(LENET, SEQUENTIAL)
    assert alignment.mapping == dict(zip(LENET, SEQUENTIAL))
    assert not (alignment.unmatched_source or alignment.unmatched_target or alignment.ambiguous)
    text = schema_from_alignment(alignment, "lenet-to-sequential")
    assert '"conv1." = "features.0."' in text and '"fc3." = "classifier.4."' in text
    assert "[rules.rename]" not in text
    assert text.count("# 2 keys (weight, bias): matched by") == 5
    result = apply_inferred(text, LENET, tmp_path)
    assert list(result) == list(SEQUENTIAL)
    assert {k: v.shape for k, v in result.items()} == SEQUENTIAL
    assert result["classifier.0.weight"] == ListTensor.arange((120, 400))


def test_exact_and_suffix_matches():
    source = {"module.backbone.layer1.conv.weight": (8, 3, 3, 3), "head.weight": (10, 8), "step": ()}
    target = {"backbone.layer1.conv.weight": (8, 3, 3, 3), "head.weight": (10, 8)}
    alignment = align_keys(source, target)
    assert alignment.matches == [
        ("module.backbone.layer1.conv.weight", "backbone.layer1.conv.weight", "suffix"),
        ("head.weight", "head.weight", "exact"),
    ]
    assert alignment.unmatched_source == ["step"] and alignment.unmatched_target == []


def test_bare_parameter_name_is_not_a_suffix_match():
    alignment = align_keys({"a.weight": (3,), "b.weight": (4,)}, {"x.weight": (4,), "y.weight": (3,)})
    assert {how for _, _, how in alignment.matches} == {"shape"}
    assert alignment.mapping == {"a.weight": "y.weight", "b.weight": "x.weight"}


def test_module_siblings_follow_a_suffix_match():
    source = {"enc.conv.weight": (4, 4), "enc.conv.bias": (4,)}
    target = {"x.conv.weight": (4, 4), "y.conv.bias": (4,), "x.conv.bias": (4,)}
    alignment = align_keys(source, target)
    assert alignment.matches == [
        ("enc.conv.weight", "x.conv.weight", "suffix"),
        ("enc.conv.bias", "x.conv.bias", "module"),
    ]
    assert alignment.ambiguous == [] and alignment.unmatched_target == ["y.conv.bias"]


def test_same_shape_modules_match_in_order():
    source = {f"blocks.{i}.{leaf}": shape for i in range(3) for leaf, shape in (("weight", (4, 4)), ("bias", (4,)))}
    target = {f"layer{i}.{leaf}": shape for i in "abc" for leaf, shape in (("weight", (4, 4)), ("bias", (4,)))}
    alignment = align_keys(source, target)
    assert alignment.mapping == dict(zip(source, target))
    assert {how for _, _, how in alignment.matches} == {"shape-order"}


@pytest.mark.parametrize(
    "source, target",
    [
        ({"enc.weight": (4, 4)}, {"a.weight": (4, 4), "b.weight": (4, 4)}),
        ({"x.weight": (4, 4), "y.weight": (4, 4)}, {"a.weight": (4, 4), "b.weight": (4, 4), "c.weight": (4, 4)}),
        ({"p.enc.conv.weight": (2, 2), "q.enc.conv.weight": (2, 2)}, {"enc.conv.weight": (2, 2)}),
    ],
)
def test_ambiguity_is_reported_not_guessed(source, target, tmp_path):
    alignment = align_keys(source, target)
    assert alignment.matches == []
    assert alignment.ambiguous == list(source)
    for key in source:
        assert sorted(alignment.candidates[key]) == sorted(target)
    text = schema_from_alignment(alignment, "ambiguous")
    assert "# ambiguous: source" in text
    for key in list(source) + list(target):
        assert key in text
    schema = loads_schema(text)
    assert schema.rules == []


def test_unmatched_and_shape_mismatch_are_listed(tmp_path):
    source = {"fc.weight": (10, 84), "conv.weight": (6, 1, 5, 5), "extra.scale": (1,)}
    target = {"fc.weight": (5, 84), "features.0.weight": (6, 1, 5, 5), "head.bias": (5,)}
    alignment = align_keys(source, target)
    assert alignment.mapping == {"fc.weight": "fc.weight", "conv.weight": "features.0.weight"}
    assert alignment.shape_mismatches == [("fc.weight", (10, 84), (5, 84))]
    assert alignment.unmatched_source == ["extra.scale"] and alignment.unmatched_target == ["head.bias"]
    text = schema_from_alignment(alignment, "partial")
    assert "# unmatched source extra.scale [1]" in text
    assert "# unmatched target head.bias [5]" in text
    assert "# shape differs: fc.weight is [10, 84] in the source, [5, 84] in the target" in text
    result = apply_inferred(text, source, tmp_path)
    assert list(result) == ["fc.weight", "features.0.weight", "extra.scale"]


def test_single_key_module_becomes_rename(tmp_path):
    source = {"stem.weight": (8, 3, 3, 3), "body.conv.weight": (8, 8), "body.conv.bias": (8,)}
    target = {"features.0.weight": (8, 3, 3, 3), "trunk.conv.weight": (8, 8), "trunk.conv.bias": (8,)}
    text = schema_from_alignment(align_keys(source, target), "mixed")
    assert '"body." = "trunk."' in text and '"stem.weight" = "features.0.weight"' in text
    assert list(apply_inferred(text, source, tmp_path)) == list(target)


def test_whole_wrapper_prefix_becomes_one_rule(tmp_path):
    source = {"model.conv.weight": (4, 3), "model.conv.bias": (4,), "model.fc.weight": (2, 4)}
    target = {key.removeprefix("model."): shape for key, shape in source.items()}
    text = schema_from_alignment(align_keys(source, target), "unwrap")
    assert '"model." = ""' in text
    assert list(apply_inferred(text, source, tmp_path)) == list(target)
    back = schema_from_alignment(align_keys(target, source), "wrap")
    assert 'add_prefix = "model."' in back
    assert list(apply_inferred(back, target, tmp_path)) == list(source)


def test_swapped_names_still_apply(tmp_path):
    source = {"a.weight": (2, 3), "a.bias": (2,), "b.weight": (3, 2), "b.bias": (3,)}
    target = {"b.weight": (2, 3), "b.bias": (2,), "a.weight": (3, 2), "a.bias": (3,)}
    alignment = Alignment(
        matches=[("a.weight", "b.weight", "shape"), ("a.bias", "b.bias", "shape"),
                 ("b.weight", "a.weight", "shape"), ("b.bias", "a.bias", "shape")],
        source_shapes=source,
        target_shapes=target,
    )
    text = schema_from_alignment(alignment, "swap")
    result = apply_inferred(text, source, tmp_path)
    assert {k: v.shape for k, v in result.items()} == target


def test_keys_needing_escapes_round_trip(tmp_path):
    source = {'odd"key\\.weight': (3,), "x.y": (2,)}
    target = {'new"key\\.weight': (3,), "x.y": (2,)}
    alignment = Alignment(matches=[('odd"key\\.weight', 'new"key\\.weight', "shape"), ("x.y", "x.y", "exact")], source_shapes=source, target_shapes=target)
    text = schema_from_alignment(alignment, 'quote"name')
    assert loads_schema(text).name == 'quote"name'
    assert list(apply_inferred(text, source, tmp_path)) == list(target)


def test_alignment_with_doubled_target_is_refused():
    alignment = Alignment(matches=[("a", "t", "shape"), ("b", "t", "shape")])
    with pytest.raises(SchemaError, match="several source keys"):
        schema_from_alignment(alignment, "bad")
