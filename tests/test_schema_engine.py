"""The schema engine and loader on plain data: every rule kind, order, errors, composition."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from ckpt_migrate.model.layout import resolve_permutation
from ckpt_migrate.errors import SchemaError
from ckpt_migrate.schemas import (
    RULE_KINDS,
    ListTensor,
    ListTensorOps,
    Schema,
    apply_schemas,
    load_schema,
    loads_schema,
    resolve_schemas,
)
import ckpt_migrate.schemas.loader as loader

OPS = ListTensorOps()


def state(*keys: str, shape: tuple[int, ...] = (2,)) -> dict[str, ListTensor]:
    return {key: ListTensor.arange(shape, start=10 * i) for i, key in enumerate(keys)}


def run(toml: str, data, *, strict: bool = False):
    schema = loads_schema(textwrap.dedent(toml), "test.toml")
    return apply_schemas(data, [schema], OPS, strict=strict)


# --- ListTensorOps ---------------------------------------------------------------------------


def test_list_tensor_ops_transpose_split_concat():
    t = ListTensor.arange((2, 3))
    assert OPS.transpose(t, (1, 0)).tolist() == [[0, 3], [1, 4], [2, 5]]
    assert OPS.transpose(ListTensor.arange((2, 3, 4)), (2, 0, 1)).shape == (4, 2, 3)
    assert OPS.transpose(ListTensor.arange((2, 3, 4)), resolve_permutation(3, (0, 2))).tolist() == OPS.transpose(ListTensor.arange((2, 3, 4)), (2, 1, 0)).tolist()
    a, b = OPS.split(t, 1, [1, 2])
    assert a.tolist() == [[0], [3]] and b.tolist() == [[1, 2], [4, 5]]
    assert OPS.concat([a, b], 1) == t
    assert OPS.concat(OPS.split(t, 0, [1, 1]), 0) == t
    with pytest.raises(ValueError):
        ListTensor((1, 2, 3), (2, 2))


# --- every rule kind -------------------------------------------------------------------------


def test_rule_kinds_cover_design():
    assert set(RULE_KINDS) == {
        "strip_prefix", "add_prefix", "rename_prefix", "regex", "rename", "drop", "keep",
        "reshape", "transpose", "split", "concat",
    }


def test_strip_prefix_any_strips_where_present():
    result = run('[[rules]]\nstrip_prefix = ["module.", "_orig_mod."]\n', state("module._orig_mod.a", "b", "module.c"))
    assert list(result.tensors) == ["a", "b", "c"]
    assert result.reports[0].touched == [("module._orig_mod.a", "a"), ("module.c", "c")]


def test_strip_prefix_all_only_when_every_key_has_it():
    toml = '[[rules]]\nstrip_prefix = ["module.", "_orig_mod."]\nwhen = "all"\n'
    assert list(run(toml, state("_orig_mod.module.a", "_orig_mod.module.b")).tensors) == ["a", "b"]
    result = run(toml, state("module.a", "b"))
    assert list(result.tensors) == ["module.a", "b"]
    assert result.warnings and "touched no key" in result.warnings[0]


def test_strip_prefix_common_component():
    toml = "[[rules]]\nstrip_prefix = { common = 1 }\n"
    assert list(run(toml, state("net.conv.weight", "net.fc.bias")).tensors) == ["conv.weight", "fc.bias"]
    assert list(run(toml, state("net.a", "model.b")).tensors) == ["net.a", "model.b"]
    assert list(run(toml, state("net.a", "net")).tensors) == ["net.a", "net"]


def test_add_prefix():
    result = run('[[rules]]\nadd_prefix = "backbone."\n', state("a", "b"))
    assert list(result.tensors) == ["backbone.a", "backbone.b"]


def test_rename_prefix_longest_match_and_simultaneous_swap():
    toml = """
    [[rules]]
    rename_prefix = { "a." = "b.", "b." = "a.", "a.sub." = "x." }
    """
    result = run(toml, state("a.w", "b.w", "a.sub.w", "c.w"))
    assert list(result.tensors) == ["b.w", "a.w", "x.w", "c.w"]
    assert result.tensors["b.w"] == state("a.w")["a.w"]


def test_regex_replace_with_groups():
    toml = r"""
    [[rules]]
    regex = '^fc(\d)\.'
    replace = 'classifier.\1.'
    """
    assert list(run(toml, state("fc1.weight", "conv.weight", "fc3.bias")).tensors) == [
        "classifier.1.weight", "conv.weight", "classifier.3.bias",
    ]


def test_rename_exact_keys_and_missing_warning():
    toml = '[[rules]]\nrename = { "fc3.weight" = "head.weight", "nope" = "x" }\n'
    result = run(toml, state("fc3.weight", "fc3.bias"))
    assert list(result.tensors) == ["head.weight", "fc3.bias"]
    assert any("'nope'" in w for w in result.warnings)
    with pytest.raises(SchemaError, match="nope"):
        run(toml, state("fc3.weight"), strict=True)


def test_drop_and_keep():
    data = state("bn.weight", "bn.num_batches_tracked", "fc.weight")
    result = run("[[rules]]\ndrop = 'num_batches_tracked$'\n", data)
    assert list(result.tensors) == ["bn.weight", "fc.weight"]
    assert result.reports[0].touched == [("bn.num_batches_tracked", None)]
    assert list(run("[[rules]]\nkeep = '^bn\\.'\n", data).tensors) == ["bn.weight", "bn.num_batches_tracked"]
    assert list(run("[[rules]]\nkeep = ['^fc', 'weight$']\n", data).tensors) == ["bn.weight", "fc.weight"]


def test_keep_matching_nothing_is_an_error():
    with pytest.raises(SchemaError, match="drop every key"):
        run("[[rules]]\nkeep = '^nothing'\n", state("a", "b"))


def test_reshape_with_inferred_dim():
    toml = '[[rules]]\nreshape = { key = "w", shape = [-1, 4, 1, 1] }\n'
    result = run(toml, {"w": ListTensor.arange((3, 4)), "b": ListTensor.arange((3,))})
    assert result.tensors["w"].shape == (3, 4, 1, 1)
    assert result.tensors["w"].data == tuple(range(12))
    assert result.reports[0].notes == ["w: [3, 4] -> [3, 4, 1, 1]"]


def test_reshape_numel_mismatch_names_key_and_shapes():
    toml = '[[rules]]\nreshape = { key = "classifier.0.weight", shape = [4096, 512, 7, 7] }\n'
    with pytest.raises(SchemaError) as info:
        run(toml, {"classifier.0.weight": ListTensor.arange((10, 20))})
    message = str(info.value)
    assert "classifier.0.weight" in message and "[10, 20]" in message and "[4096, 512, 7, 7]" in message
    with pytest.raises(SchemaError, match=r"\[3, 4\]"):
        run('[[rules]]\nreshape = { key = "w", shape = [-1, 5] }\n', {"w": ListTensor.arange((3, 4))})


def test_transpose_swap_and_permutation():
    data = {"w": ListTensor.arange((2, 3))}
    swapped = run('[[rules]]\ntranspose = { key = "w", dims = [0, 1] }\n', data).tensors["w"]
    assert swapped.tolist() == [[0, 3], [1, 4], [2, 5]]
    cube = {"w": ListTensor.arange((2, 3, 4))}
    permuted = run('[[rules]]\ntranspose = { key = "w", dims = [2, 0, 1] }\n', cube).tensors["w"]
    assert permuted.shape == (4, 2, 3)
    with pytest.raises(SchemaError, match="permutation"):
        run('[[rules]]\ntranspose = { key = "w", dims = [0, 1, 2, 3] }\n', cube)


def test_split_equal_and_sized_parts_take_the_source_position():
    data = {"a": ListTensor.arange((1,)), "qkv": ListTensor.arange((6, 2)), "z": ListTensor.arange((1,))}
    result = run('[[rules]]\nsplit = { key = "qkv", dim = 0, into = ["q", "k", "v"] }\n', data)
    assert list(result.tensors) == ["a", "q", "k", "v", "z"]
    assert result.tensors["k"].tolist() == [[4, 5], [6, 7]]
    sized = run('[[rules]]\nsplit = { key = "qkv", dim = 0, into = ["q", "kv"], sizes = [2, 4] }\n', data)
    assert sized.tensors["kv"].shape == (4, 2)
    with pytest.raises(SchemaError, match="equal parts"):
        run('[[rules]]\nsplit = { key = "qkv", dim = 0, into = ["a1", "b1", "c1", "d1"] }\n', data)
    with pytest.raises(SchemaError, match="already exist"):
        run('[[rules]]\nsplit = { key = "qkv", into = ["a", "k"] }\n', data)


def test_concat_takes_the_first_input_position():
    data = {"q": ListTensor.arange((2, 2)), "x": ListTensor.arange((1,)), "k": ListTensor.arange((2, 2), start=4)}
    result = run('[[rules]]\nconcat = { keys = ["q", "k"], dim = 0, into = "qk" }\n', data)
    assert list(result.tensors) == ["qk", "x"]
    assert result.tensors["qk"].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert result.reports[0].touched == [("q", "qk"), ("k", "qk")]
    with pytest.raises(SchemaError, match="not found"):
        run('[[rules]]\nconcat = { keys = ["q", "nope"], dim = 0, into = "qk" }\n', data)
    with pytest.raises(SchemaError, match="shapes differ"):
        run('[[rules]]\nconcat = { keys = ["q", "x"], dim = 0, into = "qx" }\n', data)


def test_split_then_concat_round_trips():
    data = {"w": ListTensor.arange((4, 3))}
    toml = """
    [[rules]]
    split = { key = "w", dim = 1, into = ["a", "b", "c"] }
    [[rules]]
    concat = { keys = ["a", "b", "c"], dim = 1, into = "w" }
    """
    assert run(toml, data).tensors == data


# --- order, collisions, no-ops ---------------------------------------------------------------


def test_rules_run_in_order_and_key_order_is_preserved():
    toml = """
    [[rules]]
    strip_prefix = "module."
    [[rules]]
    rename = { "b" = "z" }
    [[rules]]
    add_prefix = "m."
    """
    result = run(toml, state("module.a", "module.b", "module.c"))
    assert list(result.tensors) == ["m.a", "m.z", "m.c"]
    assert [(r.index, r.kind) for r in result.reports] == [(1, "strip_prefix"), (2, "rename"), (3, "add_prefix")]
    assert result.applied == ["test"]


def test_inputs_are_not_modified():
    data = state("module.a")
    run('[[rules]]\nstrip_prefix = "module."\n', data)
    assert list(data) == ["module.a"]


@pytest.mark.parametrize(
    "toml, keys",
    [
        ('[[rules]]\nrename = { "a" = "b" }\n', ("a", "b")),
        ('[[rules]]\nstrip_prefix = "module."\n', ("module.a", "a")),
        ("[[rules]]\nregex = '^(\\w+)\\.\\d+$'\nreplace = '\\1'\n", ("x.1", "x.2")),
        ('[[rules]]\nrename_prefix = { "a." = "c.", "b." = "c." }\n', ("a.w", "b.w")),
    ],
)
def test_two_keys_onto_one_name_is_an_error(toml, keys):
    with pytest.raises(SchemaError, match="would both become"):
        run(toml, state(*keys))


def test_empty_key_is_an_error():
    with pytest.raises(SchemaError, match="empty key"):
        run('[[rules]]\nstrip_prefix = "module."\n', state("module."))


def test_no_op_rule_warns_and_strict_raises():
    toml = '[[rules]]\nstrip_prefix = "module."\n'
    result = run(toml, state("a"))
    assert len(result.warnings) == 1
    assert "rule 1 (strip_prefix)" in result.warnings[0] and "touched no key" in result.warnings[0]
    with pytest.raises(SchemaError, match="touched no key"):
        run(toml, state("a"), strict=True)
    assert run('[[rules]]\nreshape = { key = "nope", shape = [2] }\n', state("a")).warnings


# --- loading and malformed files -------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_load_schema_from_file_defaults_name_to_stem(tmp_path):
    path = write(tmp_path, "lenet-v1-to-v2.toml", '[[rules]]\nrename = { "a" = "b" }\n')
    schema = load_schema(str(path))
    assert schema.name == "lenet-v1-to-v2" and schema.source == str(path) and len(schema.rules) == 1


def test_design_example_loads(tmp_path):
    path = write(tmp_path, "lenet.toml", r"""
        name = "lenet-v1-to-v2"
        description = "conv/fc names of the 2019 LeNet to the Sequential layout"
        [[rules]]
        strip_prefix = "module."
        [[rules]]
        rename_prefix = { "conv1." = "features.0.", "conv2." = "features.3." }
        [[rules]]
        regex = '^fc(\d)\.'
        replace = 'classifier.\1.'
        [[rules]]
        rename = { "fc3.weight" = "head.weight" }
        [[rules]]
        drop = 'num_batches_tracked$'
        [[rules]]
        reshape = { key = "classifier.0.weight", shape = [4096, 512, 7, 7] }
    """)
    schema = load_schema(path)
    assert [r.kind for r in schema.rules] == ["strip_prefix", "rename_prefix", "regex", "rename", "drop", "reshape"]
    assert all(r.describe() for r in schema.rules)


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('[[rules]]\nrename = { "a" = "b" }\n[[rules]]\ndrop = "x"\n[[rules]]\nrenam = { "a" = "b" }\n',
         "rule 3: unknown rule kind 'renam' (did you mean 'rename'?); expected one of"),
        ('[[rules]]\nrename = { "a" = "b" }\ndrop = "x"\n', "rule 1: holds several rule kinds"),
        ("[[rules]]\ndrop = '('\n", "rule 1: drop '(' is not a valid regular expression"),
        ("[[rules]]\nregex = 'a'\n", "rule 1: regex needs 'replace'"),
        ("[[rules]]\nregex = 'a'\nreplace = '\\2'\n", "rule 1: replace '\\\\2' does not fit"),
        ('[[rules]]\nreshape = { key = "w" }\n', "rule 1: reshape needs 'shape'"),
        ('[[rules]]\nreshape = { key = "w", shape = [-1, -1] }\n', "rule 1: reshape.shape"),
        ('[[rules]]\nreshape = { key = "w", shape = [2], dims = [1] }\n', "rule 1: unknown key 'dims' in reshape"),
        ('[[rules]]\nsplit = { key = "w", into = ["a"] }\n', "rule 1: split.into"),
        ('[[rules]]\nsplit = { key = "w", into = ["a", "b"], sizes = [1] }\n', "rule 1: split.sizes"),
        ('[[rules]]\nconcat = { keys = ["a", "a"], into = "b" }\n', "rule 1: concat.keys repeats"),
        ('[[rules]]\ntranspose = { key = "w", dims = [0, 0] }\n', "rule 1: transpose.dims"),
        ('[[rules]]\nrename = { "a" = "c", "b" = "c" }\n', "rule 1: rename maps both 'a' and 'b' to 'c'"),
        ('[[rules]]\nstrip_prefix = "m."\nwhen = "sometimes"\n', "rule 1: when must be"),
        ('[[rules]]\nadd_prefix = 3\n', "rule 1: add_prefix must be a non-empty string"),
        ('[[rules]]\nstrip_prefix = "m."\nreplace = "x"\n', "rule 1: unknown key 'replace' in a strip_prefix rule"),
        ('rule = []\n', "unknown top-level key 'rule' (did you mean 'rules'?)"),
        ('rules = "x"\n', "'rules' must be an array of tables"),
        ('name = "x\n', "not valid TOML"),
    ],
)
def test_malformed_file_is_one_clear_error_naming_file_and_rule(tmp_path, body, fragment):
    path = write(tmp_path, "lenet.toml", body)
    with pytest.raises(SchemaError) as info:
        load_schema(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert fragment in message
    assert "\n" not in message.strip()


def test_missing_file_and_unknown_id():
    with pytest.raises(SchemaError, match="not found"):
        load_schema("no/such/schema.toml")
    with pytest.raises(SchemaError) as info:
        load_schema("strip-wrapper")
    message = str(info.value)
    assert "did you mean 'strip-wrappers'" in message
    for ident in ("strip-wrappers", "lightning-to-plain", "densenet-legacy", "vgg16-fc-to-conv"):
        assert ident in message


# --- composition, extends, entry points ------------------------------------------------------


def test_composition_applies_schemas_in_order(tmp_path):
    a = write(tmp_path, "a.toml", '[[rules]]\nrename = { "x" = "y" }\n')
    b = write(tmp_path, "b.toml", '[[rules]]\nrename = { "y" = "z" }\n')
    schemas = resolve_schemas([str(a), str(b)])
    result = apply_schemas(state("x"), schemas, OPS)
    assert list(result.tensors) == ["z"] and result.applied == ["a", "b"]


def test_extends_expands_bases_first_and_once(tmp_path):
    write(tmp_path, "base.toml", '[[rules]]\nstrip_prefix = "module."\n')
    write(tmp_path, "mid.toml", 'extends = ["base.toml", "strip-wrappers"]\n[[rules]]\nadd_prefix = "m."\n')
    top = write(tmp_path, "top.toml", 'extends = ["mid.toml", "base.toml"]\n[[rules]]\nrename = { "m.a" = "b" }\n')
    schemas = resolve_schemas([str(top), "strip-wrappers"])
    assert [s.name for s in schemas] == ["base", "strip-wrappers", "mid", "top"]
    result = apply_schemas(state("module.module.a"), schemas, OPS)
    assert list(result.tensors) == ["b"]


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.toml", 'extends = "b.toml"\n[[rules]]\nadd_prefix = "a."\n')
    write(tmp_path, "b.toml", 'extends = "a.toml"\n[[rules]]\nadd_prefix = "b."\n')
    with pytest.raises(SchemaError, match="cycle: a -> b -> a"):
        resolve_schemas([str(tmp_path / "a.toml")])


class FakeEntryPoint:
    def __init__(self, name: str, obj: object) -> None:
        self.name, self.value, self._obj = name, f"thirdparty:{name}", obj

    def load(self) -> object:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def test_entry_points_path_schema_and_callable(tmp_path, monkeypatch):
    path = write(tmp_path, "tp.toml", '[[rules]]\nadd_prefix = "tp."\n')
    in_memory = Schema("mem", rules=loads_schema('[[rules]]\nadd_prefix = "mem."\n').rules, source="entrypoint:mem")
    eps = [
        FakeEntryPoint("tp-path", str(path)),
        FakeEntryPoint("tp-schema", in_memory),
        FakeEntryPoint("tp-callable", lambda: Path(path)),
    ]
    monkeypatch.setattr(loader, "_entry_points", lambda: eps)
    assert load_schema("tp-path").rules[0].kind == "add_prefix"
    assert load_schema("tp-schema") is in_memory
    assert load_schema("tp-callable").source == str(path)
    names = [s.name for s in loader.list_schemas()]
    assert names[:4] == ["densenet-legacy", "lightning-to-plain", "strip-wrappers", "vgg16-fc-to-conv"]
    assert set(names[4:]) == {"tp", "mem"}


def test_entry_point_errors(monkeypatch):
    monkeypatch.setattr(loader, "_entry_points", lambda: [FakeEntryPoint("bad", ImportError("gone")), FakeEntryPoint("odd", 42)])
    with pytest.raises(SchemaError, match="entry point bad = thirdparty:bad .*could not be loaded: ImportError: gone"):
        load_schema("bad")
    with pytest.raises(SchemaError, match="gave int"):
        load_schema("odd")
    monkeypatch.setattr(loader, "_entry_points", lambda: [FakeEntryPoint("strip-wrappers", "x.toml")])
    with pytest.raises(SchemaError, match="defined twice"):
        load_schema("strip-wrappers")


def test_engine_and_loader_do_not_import_torch():
    import subprocess

    code = "import sys, ckpt_migrate.schemas as s; s.list_schemas(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
