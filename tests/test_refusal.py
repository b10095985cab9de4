"""A file whose pickle calls a non-allowlisted callable is refused with exit 3 and leaves no trace."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from conftest import run_cli


def os_system_pickle(command: str) -> bytes:
    """Protocol-2 opcodes for ``os.system(command)``, written by hand (nothing is pickled or unpickled)."""
    encoded = command.encode()
    return b"\x80\x02cos\nsystem\nX" + len(encoded).to_bytes(4, "little") + encoded + b"\x85R."


def torch_zip_with_payload(path: Path, payload: bytes) -> None:
    """A genuine torch zip file whose data.pkl is replaced by ``payload``."""
    genuine = path.with_suffix(".genuine")
    torch.save({"w": torch.ones(2)}, genuine)
    with zipfile.ZipFile(genuine) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = payload if info.filename.endswith("/data.pkl") else source.read(info)
            target.writestr(info, data)
    genuine.unlink()


@pytest.mark.parametrize("container", ["torch-zip", "plain-pickle"])
def test_os_system_is_refused_without_a_trace(tmp_path: Path, container: str) -> None:
    canary = tmp_path / "canary"
    payload = os_system_pickle(f"touch {canary}")
    src = tmp_path / "evil.pth"
    if container == "torch-zip":
        torch_zip_with_payload(src, payload)
    else:
        src.write_bytes(payload)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = src.read_bytes()
    for args in (["convert", str(src), str(out_dir / "evil.safetensors")], ["inspect", str(src)]):
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "evil.pth" in lines[0] and "os.system" in lines[0]
        assert "Traceback" not in proc.stderr
    assert not canary.exists()
    assert list(out_dir.iterdir()) == []
    assert src.read_bytes() == before
