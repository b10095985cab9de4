"""The real-world corpus: every weight-bearing file converts; the others get one clear line.

The files are untrusted: they are opened only by ckpt-migrate and, where the manifest says torch's
restricted loader accepts them, by ``torch.load(weights_only=True)`` as a reference.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckpt_migrate.api import convert, load
from ckpt_migrate.model.equality import same_tensor as bytes_equal
from ckpt_migrate.errors import CkptMigrateError, SelectionError

from conftest import CORPUS, WEIGHT_KINDS, check_corpus_present, corpus_manifest, corpus_mark, run_cli





ROWS = corpus_manifest(CORPUS)
pytestmark = corpus_mark(CORPUS)


def test_corpus_is_present() -> None:
    check_corpus_present(CORPUS / "manifest.tsv")


def _flat_reference(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj.int_repr() if obj.is_quantized else obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_flat_reference(value, f"{prefix}{key}."))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            out.update(_flat_reference(value, f"{prefix}{index}."))
    return out


@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] in WEIGHT_KINDS], ids=lambda r: r["file"])
def test_weight_bearing_file_converts(row: dict[str, str], tmp_path: Path) -> None:
    src = CORPUS / "files" / row["file"]
    dst = tmp_path / "out.safetensors"
    try:
        result = convert(src, dst)
    except SelectionError as error:
        sets = re.search(r"several weight sets in one file \(([^)]*)\)", error.message)
        assert sets, error.message
        assert not dst.exists()
        result = convert(src, dst, select=sets.group(1).split(", ")[0])
    written = load_file(str(dst))
    assert written, "no tensors written"
    assert result.report.verified
    if row["weights_only"] == "ok":
        reference = _flat_reference(torch.load(src, weights_only=True, map_location="cpu"))
        for name, tensor in written.items():
            candidates = [reference[k] for k in reference if k == name or k.endswith("." + name)]
            assert candidates, f"{name} not in the reference"
            assert any(bytes_equal(tensor, c.contiguous()) for c in candidates), name


@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] not in WEIGHT_KINDS], ids=lambda r: r["file"])
def test_other_files_get_one_clear_line(row: dict[str, str], tmp_path: Path) -> None:
    src = CORPUS / "files" / row["file"]
    if row["format"] == "torchscript":
        assert load(src).format == "torchscript"
        return
    with pytest.raises(CkptMigrateError) as caught:
        load(src)
    assert row["file"] in str(caught.value)
    proc = run_cli("convert", str(src), str(tmp_path / "x.safetensors"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and row["file"] in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.safetensors").exists()
