"""Work a conversion does once per file, not once per reader or once per output already written.

Folders of thousands of small checkpoints are the common case; what a conversion repeats per
file (parsing a zip directory, listing the output folder) decides how many files a second it
converts. These tests count the repeated work directly.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

import ckpt_migrate.io.atomic as atomic
from ckpt_migrate.api import convert, read_raw


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=generator), "b": torch.randn(4, generator=generator)}


def _open_descriptors_to(path: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found.append(fd)
        except OSError:
            continue
    return found


@pytest.fixture
def zip_parses(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every zip directory parsed from now on (one entry per ``zipfile.ZipFile`` made)."""
    made: list[object] = []
    real_init = zipfile.ZipFile.__init__

    def counting_init(self: zipfile.ZipFile, *args: object, **kwargs: object) -> None:
        made.append(args[0] if args else None)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "__init__", counting_init)
    return made


@pytest.mark.parametrize("kind", ["state_dict", "torchscript"])
def test_sniffing_and_reading_a_torch_zip_parse_its_directory_once(tmp_path: Path, zip_parses: list[object], kind: str) -> None:
    src = tmp_path / "model.pt"
    if kind == "state_dict":
        torch.save(_weights(), src)
    else:
        torch.manual_seed(0)
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 4)), str(src))
    read_raw(str(src))
    zip_parses.clear()
    raw, reader = read_raw(str(src))
    assert reader == ("torch-zip" if kind == "state_dict" else "torchscript")
    assert len(zip_parses) == 1
    assert _open_descriptors_to(src) == []
    assert raw.root is not None


def test_a_zip_that_is_not_a_torch_file_is_still_refused_by_every_reader(tmp_path: Path) -> None:
    src = tmp_path / "notes.pt"
    with zipfile.ZipFile(src, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    from ckpt_migrate.errors import UnsupportedFormatError

    with pytest.raises(UnsupportedFormatError):
        read_raw(str(src))
    assert _open_descriptors_to(src) == []


def test_converting_many_files_into_one_folder_lists_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".m3.safetensors.ckpt-migrate-tmp-4194999-deadbeef"
    dead.write_bytes(b"partial output of a killed run")
    sources = []
    for index in range(6):
        sources.append(tmp_path / f"m{index}.pt")
        torch.save(_weights(index), sources[-1])
    listed: list[str] = []
    real_listdir = os.listdir

    def counting_listdir(path: object = ".") -> list[str]:
        listed.append(os.fspath(path))  # type: ignore[arg-type]
        return real_listdir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic.os, "listdir", counting_listdir)
    for index, src in enumerate(sources):
        convert(src, out / f"m{index}.safetensors")
    assert listed.count(str(out)) == 1
    assert not dead.exists()
    assert sorted(p.name for p in out.iterdir()) == [f"m{index}.safetensors" for index in range(6)]


def test_a_small_source_is_hashed_at_once_and_its_output_never_patched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    import ckpt_migrate.converters.writers.safetensors.writer as writer
    from safetensors import safe_open

    patched: list[str] = []
    real_patch = writer.patch_metadata
    monkeypatch.setattr(writer, "patch_metadata", lambda path, *args: (patched.append(path), real_patch(path, *args)))
    small, large = tmp_path / "small.pt", tmp_path / "large.pt"
    torch.save(_weights(), small)
    torch.save({"w": torch.randn(512, 1024, generator=torch.Generator().manual_seed(1))}, large)
    assert small.stat().st_size <= writer.EAGER_HASH_MAX_BYTES < large.stat().st_size
    for src in (small, large):
        result = convert(src, tmp_path / f"{src.stem}.safetensors")
        expected = hashlib.sha256(src.read_bytes()).hexdigest()
        assert result.source_sha256 == expected
        with safe_open(str(tmp_path / f"{src.stem}.safetensors"), framework="pt") as handle:
            assert handle.metadata()["source_sha256"] == expected
    assert [os.path.basename(path).split(".ckpt-migrate-tmp-")[0] for path in patched] == [".large.safetensors"]
