"""The Python API behaves like a library: typed and documented parameters, TypeError on unknown keywords, dataclass results with to_dict()."""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import ckpt_migrate
from conftest import run_cli

PUBLIC = ("load", "convert", "inspect", "scan", "diff", "check", "migrate")


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    a, b = src_dir / "a.pt", tmp_path / "b.pt"
    torch.save({"fc.weight": torch.randn(4, 3), "fc.bias": torch.randn(4)}, a)
    torch.save({"fc.weight": torch.randn(4, 3), "fc.bias": torch.randn(4), "extra": torch.ones(2)}, b)
    return {"a": a, "b": b, "src_dir": src_dir, "dst_dir": tmp_path / "dst", "out": tmp_path / "a.safetensors"}


def _section(doc: str, name: str) -> str:
    match = re.search(rf"^\s*{name}:\n(.*?)(?=^\s*(Args|Returns|Raises):|\Z)", doc, re.S | re.M)
    return match.group(1) if match else ""


@pytest.mark.parametrize("name", PUBLIC)
def test_every_parameter_is_typed_and_documented(name: str) -> None:
    func = getattr(ckpt_migrate, name)
    doc = pyinspect.getdoc(func) or ""
    args, returns, raises = (_section(doc, part) for part in ("Args", "Returns", "Raises"))
    assert args and returns and raises, f"{name}: Args/Returns/Raises missing in\n{doc}"
    signature = pyinspect.signature(func)
    assert signature.return_annotation is not pyinspect.Signature.empty, name
    for param in signature.parameters.values():
        assert param.annotation is not pyinspect.Parameter.empty, f"{name}({param.name}) has no type"
        if param.kind is not pyinspect.Parameter.VAR_KEYWORD:
            assert re.search(rf"^\s+{param.name}:", args, re.M), f"{name}: parameter {param.name} is not documented"
    assert "TypeError" in raises, f"{name}: says nothing of unknown keywords"


CALLS: dict[str, Callable[[dict[str, Path]], tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "load": lambda f: ((f["a"],), {}),
    "convert": lambda f: ((f["a"], f["out"]), {}),
    "inspect": lambda f: ((f["a"],), {}),
    "scan": lambda f: ((f["a"],), {}),
    "diff": lambda f: ((f["a"], f["b"]), {}),
    "check": lambda f: ((f["a"], str(f["b"])), {}),
    "migrate": lambda f: ((f["src_dir"], f["dst_dir"]), {}),
}


@pytest.mark.parametrize("name", PUBLIC)
def test_unknown_keyword_is_a_type_error_and_nothing_is_written(name: str, files: dict[str, Path]) -> None:
    args, kwargs = CALLS[name](files)
    with pytest.raises(TypeError, match="inputshape"):
        getattr(ckpt_migrate, name)(*args, inputshape=(1, 3, 8, 8), **kwargs)
    assert not files["out"].exists() and not files["dst_dir"].exists()


@pytest.mark.parametrize("name", [n for n in PUBLIC if n != "load"])
def test_results_are_dataclasses_with_to_dict(name: str, files: dict[str, Path]) -> None:
    args, kwargs = CALLS[name](files)
    result = getattr(ckpt_migrate, name)(*args, **kwargs)
    assert dataclasses.is_dataclass(result) and not isinstance(result, type)
    document = result.to_dict()
    assert isinstance(document, dict)
    assert json.loads(json.dumps(document)) == document
    if hasattr(result, "to_json"):
        assert result.to_json() == document


def test_inspect_report_fields_and_cli_json_agree(files: dict[str, Path]) -> None:
    report = ckpt_migrate.inspect(files["b"])
    assert type(report).__name__ == "InspectReport"
    assert (report.kind, report.verdict, report.format) == ("state_dict", "clean", "torch-zip")
    assert [t["name"] for t in report.tensors] == ["fc.weight", "fc.bias", "extra"]
    assert report.total_bytes == 4 * 3 * 4 + 4 * 4 + 2 * 4
    assert report.storages is not None and report.storages["summary"].startswith("3 storages: 3 written")
    run = run_cli("inspect", str(files["b"]), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == json.loads(json.dumps(report.to_dict()))
    assert list(json.loads(run.stdout)) == ["file", "format", "reader", "globals", "verdict", "meta", "kind", "selected", "classes",
                                            "tensors", "total_bytes", "extras", "epoch", "storages", "architecture"]


def test_inspect_human_output_shows_the_storage_account(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    src = tmp_path / "bundle.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(), "epoch": 3}, src)
    run = run_cli("inspect", str(src))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "  storages: 4, 2 written (32 B)" in lines
    assert any(line.startswith("  left out: 2 ") and line.endswith(" (32 B)") for line in lines), run.stdout
