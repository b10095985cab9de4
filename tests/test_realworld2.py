"""Real-world set 2 (files of widely used frameworks): every weight-bearing file converts, every other gets one line.

The files are untrusted: only ckpt-migrate opens them, plus ``torch.load(weights_only=True)`` as a
reference where the manifest says ``ok``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckpt_migrate.api import convert
from ckpt_migrate.model.equality import same_tensor as bytes_equal

from conftest import SHARED_CORPUS, WEIGHT_KINDS, check_corpus_present, corpus_manifest, corpus_mark, run_cli

CORPUS2 = SHARED_CORPUS / "realworld2"
pytestmark = corpus_mark(CORPUS2)




ROWS = corpus_manifest(CORPUS2)


def _weight_bearing(row: dict[str, str]) -> bool:
    return row["kind"] in WEIGHT_KINDS or row["format"] == "torchscript"


def _flat(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_flat(value, f"{prefix}{key}."))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            out.update(_flat(value, f"{prefix}{index}."))
    return out


def test_corpus_is_present() -> None:
    check_corpus_present(CORPUS2 / "manifest.tsv")
    assert len(ROWS) == 10


@pytest.mark.parametrize("row", [r for r in ROWS if _weight_bearing(r)], ids=lambda r: r["file"])
def test_weight_bearing_file_converts(row: dict[str, str], tmp_path: Path) -> None:
    src = CORPUS2 / "files" / row["file"]
    dst = tmp_path / "out.safetensors"
    result = convert(src, dst)
    written = load_file(str(dst))
    assert written and result.report.verified
    assert not result.checkpoint.account.unexplained
    if row["weights_only"] == "ok":
        reference = _flat(torch.load(src, weights_only=True, map_location="cpu"))
        chosen = result.checkpoint.meta["selected"]
        prefix = f"{chosen[0]}." if chosen else ""
        assert sorted(written) == sorted(k[len(prefix):] for k in reference if k.startswith(prefix))
        for name, tensor in written.items():
            assert bytes_equal(tensor, reference[prefix + name].contiguous()), name


def test_quantized_gru_of_the_scripted_model_is_written(tmp_path: Path) -> None:
    src = CORPUS2 / "files" / "143_model_scripted.pt"
    dst = tmp_path / "kws.safetensors"
    result = convert(src, dst)
    written = load_file(str(dst))
    for layer in (0, 1):
        for gate in ("ih", "hh"):
            assert written[f"base_model.gru.weight_{gate}_l{layer}"].dtype == torch.int8
            assert f"base_model.gru.bias_{gate}_l{layer}" in written
    assert not any(k.startswith("frame_buffer") for k in written)
    reasons = result.checkpoint.account.reasons()
    assert list(reasons) == ["runtime attribute of a scripted module (not in its state_dict)"]


@pytest.mark.parametrize("row", [r for r in ROWS if not _weight_bearing(r)], ids=lambda r: r["file"])
def test_other_files_get_one_line_never_unsafe(row: dict[str, str], tmp_path: Path) -> None:
    src = CORPUS2 / "files" / row["file"]
    out = tmp_path / "x.safetensors"
    proc = run_cli("convert", str(src), str(out))
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.strip().splitlines() if "error:" in line]
    assert len(errors) == 1 and row["file"] in errors[0], proc.stderr
    assert "unsafe" not in proc.stderr and "refused" not in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
