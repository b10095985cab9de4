"""The torch-free report logic of ``check`` and ``diff``, on plain data (and torch only where values are compared)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from ckpt_migrate.model.layout import resolve_permutation
from ckpt_migrate.model.checkpoint import Checkpoint
from ckpt_migrate.schemas import list_schemas, loads_schema
from ckpt_migrate.reports.check import ShapeOnlyOps, check_report, suggest_schemas
from ckpt_migrate.reports.diff import diff_report, max_abs_difference, pair_renamed

from conftest import ROOT


def test_check_report_sorts_every_key() -> None:
    source = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "fc.weight": (5, 8), "aux.weight": (2,)}
    target = OrderedDict([("conv.weight", (8, 3, 3, 3)), ("conv.bias", (8,)), ("bn.num_batches_tracked", ()),
                          ("bn.weight", (8,)), ("fc.weight", (10, 8))])
    report = check_report(source, target)
    assert report.matched == ["conv.weight", "conv.bias"]
    assert report.missing == ["bn.weight"]
    assert report.optional_missing == ["bn.num_batches_tracked"]
    assert report.unexpected == ["aux.weight"]
    assert report.mismatched == [("fc.weight", (5, 8), (10, 8))]
    assert not report.ok and not report.nothing_matched
    as_json = report.to_json()
    assert as_json["counts"] == {"matched": 2, "missing": 1, "optional_missing": 1, "unexpected": 1, "mismatched": 1}
    assert as_json["mismatched"] == [{"key": "fc.weight", "source": [5, 8], "target": [10, 8]}]


def test_check_report_ok_ignores_optional_buffers_and_nothing_matched_counts_shapes() -> None:
    assert check_report({"a": (1,)}, {"a": [1], "bn.num_batches_tracked": ()}).ok
    mismatched_only = check_report({"a": (2,)}, {"a": (3,)})
    assert mismatched_only.nothing_matched and not mismatched_only.ok
    assert check_report({}, {}).nothing_matched


@dataclass
class FakeRef:
    """A stand-in for a lazy tensor: a dtype, a shape and a value label."""

    dtype: SimpleNamespace
    shape: tuple[int, ...]
    value: str


def fake(dtype: str, shape: tuple[int, ...], value: str) -> FakeRef:
    return FakeRef(SimpleNamespace(name=dtype), shape, value)


def test_diff_report_without_torch() -> None:
    a = Checkpoint(OrderedDict(w=fake("float32", (2,), "x"), b=fake("float32", (2,), "y"), old=fake("float32", (3,), "z"),
                               s=fake("float32", (4,), "p"), h=fake("float16", (2,), "q")), meta={"source": "a.pth"})
    b = Checkpoint(OrderedDict(w=fake("float32", (2,), "x"), b=fake("float32", (2,), "y2"), new=fake("float32", (3,), "z"),
                               s=fake("float32", (5,), "p"), h=fake("float32", (2,), "q")), meta={"source": "b.safetensors"})
    compared: list[tuple[str, str]] = []

    def compare(x: FakeRef, y: FakeRef) -> float:
        compared.append((x.value, y.value))
        return 0.0 if x.value == y.value else 0.25

    report = diff_report(a, b, compare=compare, fingerprint=lambda ref: ref.value)
    assert (report.a, report.b) == ("a.pth", "b.safetensors")
    assert report.only_a == ["old"] and report.only_b == ["new"]
    assert report.renamed == [("old", "new")]
    assert compared == [("x", "x"), ("y", "y2"), ("q", "q")]
    assert [d.key for d in report.value_changes] == ["b"]
    assert [d.key for d in report.shape_changes] == ["s"]
    assert [(d.key, d.dtype_a, d.dtype_b) for d in report.dtype_changes] == [("h", "float16", "float32")]
    assert report.max_abs_diff == 0.25 and not report.identical
    as_json = report.to_json()
    assert as_json["counts"] == {"only_a": 1, "only_b": 1, "common": 4, "dtype_changes": 1, "shape_changes": 1, "value_changes": 1}
    assert as_json["shape_changes"] == [{"key": "s", "dtype": ["float32", "float32"], "shape": [[4], [5]], "max_abs_diff": None}]
    assert as_json["renamed"] == [{"a": "old", "b": "new"}]
    same = diff_report(a, a, compare=compare, fingerprint=lambda ref: ref.value)
    assert same.identical and same.max_abs_diff == 0.0 and same.renamed == []


def test_pair_renamed_refuses_ambiguous_pairs_and_digests_only_plausible_tensors() -> None:
    a = {"a1": fake("float32", (2,), "v"), "a2": fake("float32", (2,), "v"), "a3": fake("float32", (3,), "u"),
         "a4": fake("int64", (9,), "only-here")}
    b = {"b1": fake("float32", (2,), "v"), "b3": fake("float32", (3,), "u"), "b4": fake("float32", (3,), "w")}
    digested: list[str] = []

    def fingerprint(ref: FakeRef) -> str:
        digested.append(ref.value)
        return ref.value

    assert pair_renamed(a, list(a), b, list(b), fingerprint) == [("a3", "b3")]
    assert "only-here" not in digested


def test_max_abs_difference_handles_nan_inf_dtypes_and_empty() -> None:
    def ref(t: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(materialize=lambda: t)

    nan, inf = float("nan"), float("inf")
    assert max_abs_difference(ref(torch.tensor([1.0, nan, inf])), ref(torch.tensor([1.0, nan, inf]))) == 0.0
    assert max_abs_difference(ref(torch.tensor([1.0, inf])), ref(torch.tensor([1.5, inf]))) == 0.5
    assert max_abs_difference(ref(torch.tensor([1.0, 2.0])), ref(torch.tensor([1.0, inf]))) == inf
    assert math.isnan(max_abs_difference(ref(torch.tensor([nan, 1.0])), ref(torch.tensor([1.0, 1.0]))))
    assert max_abs_difference(ref(torch.tensor([1.0, 2.0], dtype=torch.float16)), ref(torch.tensor([1.0, 2.25]))) == 0.25
    assert max_abs_difference(ref(torch.tensor([3, -4])), ref(torch.tensor([3, 6]))) == 10.0
    assert max_abs_difference(ref(torch.tensor([True, False])), ref(torch.tensor([True, True]))) == 1.0
    assert max_abs_difference(ref(torch.tensor([1 + 1j])), ref(torch.tensor([1 + 4j]))) == 3.0
    assert max_abs_difference(ref(torch.zeros(0, 3)), ref(torch.zeros(0, 3))) == 0.0


def test_shape_only_ops_mirror_torch() -> None:
    ops, t = ShapeOnlyOps(), torch.zeros(2, 3, 4)
    assert ops.reshape((2, 3, 4), (6, 4)) == (6, 4)
    assert ops.transpose((2, 3, 4), (2, 0, 1)) == tuple(t.permute(2, 0, 1).shape)
    assert ops.transpose((2, 3, 4), resolve_permutation(3, (0, 2))) == tuple(t.transpose(0, 2).shape)
    assert ops.split((2, 3, 4), -1, [1, 3]) == [tuple(p.shape) for p in torch.split(t, [1, 3], dim=-1)]
    assert ops.concat([(2, 3, 4), (2, 5, 4)], 1) == (2, 8, 4)


def test_suggest_schemas_ranks_what_helps_and_skips_what_fails() -> None:
    target = {"conv.weight": (4, 3), "fc.bias": (2,)}
    wrapped = {"module.conv.weight": (4, 3), "module.fc.bias": (2,)}
    builtins = [s for s in list_schemas() if s.source.startswith("builtin:")]
    assert suggest_schemas(wrapped, target, builtins) == ["lightning-to-plain", "strip-wrappers"]
    compiled = {"_orig_mod.module.conv.weight": (4, 3), "_orig_mod.module.fc.bias": (2,)}
    assert suggest_schemas(compiled, target, builtins) == ["strip-wrappers"]
    failing = loads_schema('name = "bad"\n[[rules]]\nreshape = { key = "conv.weight", shape = [5] }\n')
    assert suggest_schemas(target, target, [failing]) == []


def test_report_modules_import_no_torch() -> None:
    code = "import sys, ckpt_migrate.reports.check, ckpt_migrate.reports.diff, ckpt_migrate.transforms.schemas, ckpt_migrate.architectures.targets; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8, torch.bool])
def test_tensor_digest_matches_equal_values_only(dtype: torch.dtype) -> None:
    from ckpt_migrate.reports.diff import tensor_digest

    base = (torch.arange(6) % 2).to(dtype)
    other = base.clone()
    other[0] = (not bool(base[0])) if dtype == torch.bool else base[0] + 1

    def ref(t: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(materialize=lambda: t)

    assert tensor_digest(ref(base)) == tensor_digest(ref(base.clone()))
    assert tensor_digest(ref(base)) != tensor_digest(ref(other))
