"""Schemas applied to real checkpoints: lazy tensor operations, ``convert --schema``, ``schema infer/list/show``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from ckpt_migrate.model.layout import resolve_permutation
import ckpt_migrate.model.dtypes as dtypes
from ckpt_migrate.model.checkpoint import ByteSource, Checkpoint, DerivedTensor, StorageRef, TensorRef
from ckpt_migrate.cli import main_group
from ckpt_migrate.errors import SchemaError
from ckpt_migrate.transforms.schemas import CheckpointTensorOps, apply_to_checkpoint, contiguous_strides
from ckpt_migrate.schemas import list_schemas, loads_schema

from conftest import ROOT, run_cli
from helpers_lenet import LeNet, LeNetV2

HERE = Path(__file__).resolve().parent

LENET_SCHEMA = """\
name = "lenet-v1-to-v2"
description = "conv/fc names of the tutorial LeNet to the Sequential layout"

[[rules]]
rename_prefix = { "conv1." = "features.0.", "conv2." = "features.3." }

[[rules]]
rename_prefix = { "fc1." = "classifier.0.", "fc2." = "classifier.2.", "fc3." = "classifier.4." }
"""

V2_KEYS = [f"{m}.{p}" for m in ("features.0", "features.3", "classifier.0", "classifier.2", "classifier.4") for p in ("weight", "bias")]


def cli(*args: str) -> "CliRunner.invoke":
    return CliRunner().invoke(main_group, list(args), catch_exceptions=False, prog_name="ckpt-migrate")


def ref_of(tensor: torch.Tensor, name: str = "memory") -> TensorRef:
    """A lazy reference over an in-memory copy of ``tensor``'s bytes."""
    data = tensor.contiguous().numpy().tobytes()
    dtype = dtypes.get(str(tensor.dtype).replace("torch.", ""))
    storage = StorageRef("0", dtype, tensor.numel(), "cpu", ByteSource(name, 0, len(data), buffer=data))
    return TensorRef(storage, dtype, tuple(tensor.shape), contiguous_strides(tensor.shape))


def lenet_input() -> torch.Tensor:
    return torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(11))


# --- CheckpointTensorOps -------------------------------------------------------------------------


def test_reshape_of_contiguous_ref_is_a_view_on_the_same_storage() -> None:
    base = torch.arange(24, dtype=torch.float32)
    ref = ref_of(base.reshape(4, 6))
    out = CheckpointTensorOps().reshape(ref, (2, 3, 4))
    assert isinstance(out, TensorRef)
    assert out.storage is ref.storage
    assert (out.shape, out.stride, out.offset) == ((2, 3, 4), (12, 4, 1), 0)
    assert torch.equal(out.materialize(), base.reshape(2, 3, 4))


def test_transpose_and_split_are_views_with_new_strides_and_offsets() -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    ref = ref_of(base)
    ops = CheckpointTensorOps()
    swapped = ops.transpose(ref, resolve_permutation(3, (0, 2)))
    assert isinstance(swapped, TensorRef) and swapped.storage is ref.storage
    assert (swapped.shape, swapped.stride) == ((5, 4, 3), (1, 5, 20))
    assert torch.equal(swapped.materialize(), base.transpose(0, 2))
    permuted = ops.transpose(ref, (1, 2, 0))
    assert torch.equal(permuted.materialize(), base.permute(1, 2, 0))
    parts = ops.split(ref, 1, [1, 3])
    assert all(isinstance(p, TensorRef) and p.storage is ref.storage for p in parts)
    assert [p.offset for p in parts] == [0, 5]
    for part, expected in zip(parts, torch.split(base, [1, 3], dim=1)):
        assert torch.equal(part.materialize(), expected)
    inner = ops.split(swapped, 0, [2, 3])
    assert torch.equal(inner[1].materialize(), base.transpose(0, 2)[2:])


def test_reshape_of_strided_view_and_concat_are_derived() -> None:
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    ops = CheckpointTensorOps()
    transposed = ops.transpose(ref_of(base), (1, 0))
    flat = ops.reshape(transposed, (12,))
    assert isinstance(flat, DerivedTensor) and flat.shape == (12,)
    assert torch.equal(flat.materialize(), base.t().reshape(12))
    other = ref_of(torch.full((2, 4), -1.0, dtype=torch.float64))
    joined = ops.concat([ref_of(base), other], 0)
    assert isinstance(joined, DerivedTensor) and joined.shape == (5, 4) and joined.dtype.name == "float64"
    assert torch.equal(joined.materialize(), torch.cat([base, torch.full((2, 4), -1.0, dtype=torch.float64)]))
    again = ops.split(joined, 1, [1, 3])
    assert all(isinstance(p, DerivedTensor) for p in again)
    assert torch.equal(again[1].materialize(), joined.materialize()[:, 1:])
    back = ops.transpose(again[0], (1, 0))
    assert torch.equal(back.materialize(), joined.materialize()[:, :1].t())


def test_concat_refuses_mixed_dtypes_and_per_channel_quantized_tensors_refuse_views() -> None:
    ops = CheckpointTensorOps()
    with pytest.raises(SchemaError, match="different dtypes"):
        ops.concat([ref_of(torch.zeros(2)), ref_of(torch.zeros(2, dtype=torch.float64))], 0)
    ref = ref_of(torch.zeros(2, 3))
    ref.quantization = {"scheme": "per_channel_affine", "params": []}
    with pytest.raises(SchemaError, match="per-channel quantized"):
        ops.transpose(ref, (1, 0))


def test_lazy_operations_import_no_torch(tmp_path: Path) -> None:
    script = """
import array, sys
from collections import OrderedDict
import ckpt_migrate.model.dtypes as dtypes
from ckpt_migrate.model.checkpoint import ByteSource, Checkpoint, StorageRef, TensorRef
from ckpt_migrate.transforms.schemas import apply_to_checkpoint
data = array.array("f", range(24)).tobytes()
f32 = dtypes.get("float32")
storage = StorageRef("0", f32, 24, "cpu", ByteSource("mem", 0, len(data), buffer=data))
ckpt = Checkpoint(OrderedDict(w=TensorRef(storage, f32, (4, 6), (6, 1)), v=TensorRef(storage, f32, (6,), (1,))), meta={"source": "mem"})
out = apply_to_checkpoint(ckpt, [sys.argv[1]])
print(sorted(out.tensors), out.tensors["q"].shape, out.tensors["k"].offset, "torch" in sys.modules)
"""
    schema = tmp_path / "views.toml"
    schema.write_text('[[rules]]\nreshape = { key = "w", shape = [2, 12] }\n[[rules]]\ntranspose = { key = "w", dims = [1, 0] }\n'
                      '[[rules]]\nsplit = { key = "w", dim = 1, into = ["q", "k"] }\n')
    done = subprocess.run([sys.executable, "-c", script, str(schema)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['k',", "'q',", "'v']", "(12,", "1)", "12", "False"]


# --- apply_to_checkpoint -------------------------------------------------------------------------


def small_checkpoint(source: str = "model.pth") -> Checkpoint:
    tensors = OrderedDict((key, ref_of(torch.full((2,), float(i)))) for i, key in enumerate(["module.a", "module.b"]))
    return Checkpoint(tensors=tensors, meta={"source": source, "warnings": ["earlier"]})


def test_apply_records_schemas_and_warnings_and_leaves_the_input_alone(tmp_path: Path) -> None:
    extra = tmp_path / "extra.toml"
    extra.write_text('name = "extra"\n[[rules]]\nrename = { "a" = "alpha", "zzz" = "never" }\n[[rules]]\ndrop = "nothing-here"\n')
    ckpt = small_checkpoint()
    out = apply_to_checkpoint(ckpt, ["strip-wrappers", str(extra)])
    assert list(out.tensors) == ["alpha", "b"]
    assert out.tensors["alpha"] is ckpt.tensors["module.a"]
    assert out.meta["schemas"] == ["strip-wrappers", "extra"]
    assert out.meta["warnings"][0] == "earlier"
    assert out.meta["warnings"][1:] == [
        f"schema 'extra' ({extra}), rule 1 (rename): key(s) not found: 'zzz'",
        f"schema 'extra' ({extra}), rule 2 (drop): touched no key",
    ]
    assert [r["touched"] for r in out.meta["schema_reports"]] == [2, 1, 0]
    assert list(ckpt.tensors) == ["module.a", "module.b"] and "schemas" not in ckpt.meta


def test_apply_errors_name_the_checkpoint_or_the_schema_file(tmp_path: Path) -> None:
    collide = tmp_path / "collide.toml"
    collide.write_text('[[rules]]\nregex = "^module\\\\.[ab]$"\nreplace = "same"\n')
    with pytest.raises(SchemaError) as caught:
        apply_to_checkpoint(small_checkpoint("/data/old.pth"), [str(collide)])
    assert str(caught.value) == (f"/data/old.pth: schema 'collide' ({collide}), rule 1 (regex): "
                                 "'module.a' and 'module.b' would both become 'same'")
    broken = tmp_path / "broken.toml"
    broken.write_text('[[rules]]\nrenam = { "a" = "b" }\n')
    with pytest.raises(SchemaError) as caught:
        apply_to_checkpoint(small_checkpoint("/data/old.pth"), [str(broken)])
    assert str(caught.value).startswith(f"{broken}: rule 1: unknown rule kind 'renam' (did you mean 'rename'?)")
    with pytest.raises(SchemaError, match=r"^/data/old.pth: .*touched no key \(an error in strict mode\)"):
        apply_to_checkpoint(small_checkpoint("/data/old.pth"), ["lightning-to-plain", "strip-wrappers"], strict=True)


# --- the LeNet story: a hand-written schema, then an inferred one ----------------------------------


def convert_with(src: Path, dst: Path, *schemas: str) -> dict:
    args = ["convert", str(src), str(dst), "--json"]
    for schema in schemas:
        args += ["--schema", schema]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def load_v2_strict(path: Path) -> LeNetV2:
    model = LeNetV2()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def test_lenet_migrated_by_a_schema_file_loads_strictly_into_the_sequential_layout(fixture_dir: Path, tmp_path: Path) -> None:
    old = fixture_dir / "models" / "lenet_state_dict.pth"
    schema = tmp_path / "lenet.toml"
    schema.write_text(LENET_SCHEMA)
    report = convert_with(old, tmp_path / "new.safetensors", str(schema))
    assert report["schemas"] == ["lenet-v1-to-v2"] and report["verified"] is True
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["schemas"]) == ["lenet-v1-to-v2"]
        assert sorted(handle.keys()) == sorted(V2_KEYS)
    expected = load_file(str(fixture_dir / "expected" / "lenet_state_dict.pth.safetensors"))
    migrated = load_file(str(tmp_path / "new.safetensors"))
    renames = {"conv1": "features.0", "conv2": "features.3", "fc1": "classifier.0", "fc2": "classifier.2", "fc3": "classifier.4"}
    for key, tensor in expected.items():
        module, leaf = key.split(".")
        assert torch.equal(migrated[f"{renames[module]}.{leaf}"], tensor), key
    old_model = LeNet()
    old_model.load_state_dict(expected, strict=True)
    with torch.no_grad():
        assert torch.equal(load_v2_strict(tmp_path / "new.safetensors")(lenet_input()), old_model.eval()(lenet_input()))


def test_schema_infer_finds_the_same_migration(fixture_dir: Path, tmp_path: Path) -> None:
    old = fixture_dir / "models" / "lenet_state_dict.pth"
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    inferred = tmp_path / "inferred.toml"
    done = run_cli("schema", "infer", str(old), "--target", "helpers_lenet:LeNetV2", "-o", str(inferred), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines()[0] == "matched 10 of 10 source keys to helpers_lenet:LeNetV2 (10 renamed, 0 unchanged)"
    assert "with this schema: loads strictly" in done.stdout
    text = inferred.read_text()
    assert '"conv1." = "features.0."' in text and '"fc3." = "classifier.4."' in text
    assert loads_schema(text).name == "inferred"

    hand_written = tmp_path / "lenet.toml"
    hand_written.write_text(LENET_SCHEMA)
    convert_with(old, tmp_path / "by_hand.safetensors", str(hand_written))
    report = convert_with(old, tmp_path / "inferred.safetensors", str(inferred))
    assert report["schemas"] == ["inferred"]
    by_hand, by_inference = load_file(str(tmp_path / "by_hand.safetensors")), load_file(str(tmp_path / "inferred.safetensors"))
    assert sorted(by_inference) == sorted(by_hand) == sorted(V2_KEYS)
    assert all(torch.equal(by_inference[k], by_hand[k]) for k in by_hand)
    load_v2_strict(tmp_path / "inferred.safetensors")

    again = CliRunner().invoke(main_group, ["schema", "infer", str(old), "--target", "helpers_lenet:LeNetV2", "-o", str(inferred)])
    assert again.exit_code == 1
    assert again.stderr == f"ckpt-migrate: error: {inferred}: already exists; pass --force to overwrite it\n"
    inferred.write_text("# edited by hand\n")
    forced = cli("schema", "infer", str(old), "--target", "helpers_lenet:LeNetV2", "-o", str(inferred), "--force", "--name", "lenet")
    assert forced.exit_code == 0 and loads_schema(inferred.read_text()).name == "lenet"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_schema_infer_reports_ambiguity_and_refuses_when_nothing_matches(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    torch.save(OrderedDict([("a.weight", torch.randn(4, 4, generator=g)), ("b.weight", torch.randn(4, 4, generator=g)),
                            ("head.weight", torch.randn(2, 4, generator=g))]), tmp_path / "src.pth")
    torch.save(OrderedDict([("x.weight", torch.zeros(4, 4)), ("y.weight", torch.zeros(4, 4)), ("z.weight", torch.zeros(4, 4)),
                            ("head.weight", torch.zeros(2, 4))]), tmp_path / "ref.pth")
    out = tmp_path / "amb.toml"
    result = cli("schema", "infer", str(tmp_path / "src.pth"), "--target", str(tmp_path / "ref.pth"), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "matched 1 of 3 source keys" in result.stdout
    assert "ambiguous: a.weight fits several targets equally: x.weight, y.weight, z.weight" in result.stdout
    assert "unmatched target (3): x.weight, y.weight, z.weight" in result.stdout
    assert "# ambiguous: source a.weight [4, 4] fits several targets equally: x.weight, y.weight, z.weight" in out.read_text()

    torch.save({"q": torch.zeros(3)}, tmp_path / "other.pth")
    nothing = tmp_path / "nothing.toml"
    result = cli("schema", "infer", str(tmp_path / "src.pth"), "--target", str(tmp_path / "other.pth"), "-o", str(nothing))
    assert result.exit_code == 1
    assert result.stderr == (f"ckpt-migrate: error: {tmp_path / 'src.pth'}: no key matches {tmp_path / 'other.pth'} by name, "
                             f"suffix or shape; nothing written to {nothing}\n")
    assert not nothing.exists()


def test_schema_list_and_show() -> None:
    listed = cli("schema", "list", "--json")
    assert listed.exit_code == 0
    ids = [s["id"] for s in json.loads(listed.stdout)["schemas"]]
    assert {"strip-wrappers", "lightning-to-plain", "densenet-legacy", "vgg16-fc-to-conv"} <= set(ids)
    table = cli("schema", "list")
    assert all(name in table.stdout for name in ids)
    shown = cli("schema", "show", "vgg16-fc-to-conv")
    assert shown.exit_code == 0
    assert "  1. reshape 'classifier.0.weight' to [4096, 512, 7, 7]" in shown.stdout.splitlines()
    as_json = json.loads(cli("schema", "show", "strip-wrappers", "--json").stdout)
    assert as_json["id"] == "strip-wrappers" and as_json["rules"][0]["kind"] == "strip_prefix"
    missing = CliRunner().invoke(main_group, ["schema", "show", "strip-wrapper"])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("ckpt-migrate: error: unknown schema 'strip-wrapper' (did you mean 'strip-wrappers'?)")


@pytest.mark.parametrize("args", [["schema", "--help"], ["schema", "list", "--help"], ["schema", "show", "--help"],
                                  ["schema", "infer", "--help"]])
def test_schema_help(args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: ckpt-migrate {' '.join(args[:-1])} [OPTIONS]")


# --- every built-in schema through ``convert --schema`` on a real checkpoint ------------------------


def _strict_load(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    model.load_state_dict(load_file(str(path)), strict=True)
    return model


def case_strip_wrappers(fixture_dir: Path, tmp_path: Path) -> None:
    src = fixture_dir / "models" / "dataparallel_state_dict.pth"
    convert_with(src, tmp_path / "out.safetensors", "strip-wrappers")
    expected = load_file(str(fixture_dir / "expected" / "dataparallel_state_dict.pth.safetensors"))
    model = _strict_load(LeNet(), tmp_path / "out.safetensors")
    assert all(torch.equal(model.state_dict()[k.removeprefix("module.")], v) for k, v in expected.items())


def case_lightning_to_plain(fixture_dir: Path, tmp_path: Path) -> None:
    src = fixture_dir / "models" / "lightning.ckpt"
    convert_with(src, tmp_path / "out.safetensors", "lightning-to-plain")
    expected = load_file(str(fixture_dir / "expected" / "lenet_state_dict.pth.safetensors"))
    model = _strict_load(LeNet(), tmp_path / "out.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def case_densenet_legacy(fixture_dir: Path, tmp_path: Path) -> None:
    """Keys as torchvision's pre-0.4 DenseNet files have them (no num_batches_tracked buffers)."""
    from torchvision.models.densenet import DenseNet

    def tiny() -> DenseNet:
        return DenseNet(growth_rate=4, block_config=(2, 1), num_init_features=8, bn_size=2, num_classes=3)

    torch.manual_seed(8)
    model = tiny()
    legacy = OrderedDict()
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        for new, old in (("norm1", "norm.1"), ("relu1", "relu.1"), ("conv1", "conv.1"), ("norm2", "norm.2"), ("conv2", "conv.2")):
            if ".denselayer" in key:
                key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, tmp_path / "densenet_legacy.pth")
    convert_with(tmp_path / "densenet_legacy.pth", tmp_path / "out.safetensors", "densenet-legacy")
    rebuilt = _strict_load(tiny(), tmp_path / "out.safetensors").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def case_vgg16_fc_to_conv(fixture_dir: Path, tmp_path: Path) -> None:
    """The one VGG-sized test: the classifier (about 480 MB in fp32) reshaped, checked against the linear head."""
    import torchvision
    from torch import nn

    torch.manual_seed(6)
    classifier = torchvision.models.vgg16(weights=None, num_classes=3).classifier.eval()
    torch.save(OrderedDict((f"classifier.{k}", v) for k, v in classifier.state_dict().items()), tmp_path / "vgg_head.pth")
    features = torch.randn(2, 512, 7, 7, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        linear = classifier(torch.flatten(features, 1))
    del classifier
    report = convert_with(tmp_path / "vgg_head.pth", tmp_path / "out.safetensors", "vgg16-fc-to-conv")
    assert report["schemas"] == ["vgg16-fc-to-conv"]
    weights = load_file(str(tmp_path / "out.safetensors"))
    assert weights["classifier.0.weight"].shape == (4096, 512, 7, 7)
    assert weights["classifier.6.weight"].shape == (3, 4096, 1, 1)
    with torch.device("meta"):
        conv_head = nn.Sequential(nn.Conv2d(512, 4096, 7), nn.ReLU(), nn.Conv2d(4096, 4096, 1), nn.ReLU(), nn.Conv2d(4096, 3, 1))
    conv_head.load_state_dict({f"{i}.{leaf}": weights[f"classifier.{j}.{leaf}"] for i, j in ((0, 0), (2, 3), (4, 6))
                               for leaf in ("weight", "bias")}, strict=True, assign=True)
    conv_head.eval()
    del weights
    with torch.no_grad():
        conv = conv_head(features).flatten(1)
    assert conv.shape == linear.shape == (2, 3)
    torch.testing.assert_close(conv, linear, rtol=0, atol=1e-5)


BUILTIN_CASES = {
    "strip-wrappers": case_strip_wrappers,
    "lightning-to-plain": case_lightning_to_plain,
    "densenet-legacy": case_densenet_legacy,
    "vgg16-fc-to-conv": case_vgg16_fc_to_conv,
}


@pytest.mark.parametrize("schema_id", [s.name for s in list_schemas() if s.source.startswith("builtin:")])
def test_every_builtin_schema_through_convert(schema_id: str, fixture_dir: Path, tmp_path: Path) -> None:
    assert schema_id in BUILTIN_CASES, f"built-in schema {schema_id!r} has no convert case in {__file__}"
    BUILTIN_CASES[schema_id](fixture_dir, tmp_path)


def test_convert_with_a_broken_schema_exits_1_with_one_line_and_writes_nothing(fixture_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nreshape = { key = "fc1.weight", shape = [7, 7] }\n')
    dst = tmp_path / "out.safetensors"
    src = fixture_dir / "models" / "lenet_state_dict.pth"
    done = run_cli("convert", str(src), str(dst), "--schema", str(bad))
    assert done.returncode == 1
    assert done.stderr == (f"ckpt-migrate: error: {src}: schema 'bad' ({bad}), rule 1 (reshape): cannot reshape 'fc1.weight' "
                           "from [120, 400] (48000 elements) to [7, 7] (49 elements)\n")
    assert not dst.exists() and list(tmp_path.iterdir()) == [bad]


def test_every_value_rule_through_convert_matches_torch(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(12)
    state = OrderedDict([("qkv.weight", torch.randn(6, 4, generator=g)), ("a.bias", torch.randn(3, generator=g)),
                         ("b.bias", torch.randn(2, generator=g)), ("fc.weight", torch.randn(5, 8, generator=g)),
                         ("emb.weight", torch.randn(2, 3, 4, generator=g)), ("count", torch.tensor(7))])
    torch.save(state, tmp_path / "src.pth")
    schema = tmp_path / "values.toml"
    schema.write_text("""
[[rules]]
split = { key = "qkv.weight", dim = 0, into = ["q.weight", "k.weight", "v.weight"] }
[[rules]]
concat = { keys = ["a.bias", "b.bias"], dim = 0, into = "ab.bias" }
[[rules]]
transpose = { key = "fc.weight", dims = [1, 0] }
[[rules]]
reshape = { key = "fc.weight", shape = [2, -1] }
[[rules]]
transpose = { key = "emb.weight", dims = [2, 0, 1] }
""")
    for dst in (tmp_path / "out.safetensors", tmp_path / "out.pt"):
        report = convert_with(tmp_path / "src.pth", dst, str(schema))
        assert report["verified"] is True and report["schemas"] == ["values"]
        out = load_file(str(dst)) if dst.suffix == ".safetensors" else torch.load(dst, weights_only=True)["model_state_dict"]
        expected = {
            "q.weight": state["qkv.weight"][:2], "k.weight": state["qkv.weight"][2:4], "v.weight": state["qkv.weight"][4:],
            "ab.bias": torch.cat([state["a.bias"], state["b.bias"]]),
            "fc.weight": state["fc.weight"].t().reshape(2, -1),
            "emb.weight": state["emb.weight"].permute(2, 0, 1),
            "count": state["count"],
        }
        assert sorted(out) == sorted(expected)
        for key, value in expected.items():
            assert out[key].dtype == value.dtype and torch.equal(out[key], value), (dst.name, key)
