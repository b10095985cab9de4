"""``ckpt-migrate migrate`` to and from S3: a real S3 API served by moto on loopback, through s3fs.

SRC and DST are ``s3://bucket/prefix`` URLs; worker processes reach the server through fsspec's
environment configuration (``FSSPEC_S3_ENDPOINT_URL``), as a user's would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

from ckpt_migrate.io.atomic import is_temp  # noqa: E402
from ckpt_migrate.cli import main_group  # noqa: E402
from ckpt_migrate.batch.manifest import MANIFEST_NAME, parse  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import helpers_migrate_tree as trees  # noqa: E402

BUCKET = "models"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> "s3fs.S3FileSystem":
    import fsspec.config

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "FSSPEC_S3_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    fs.invalidate_cache()
    return fs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("tree")
    expected = trees.build_tree(base / "src", base / "work")
    (base / "src/link_out.pt").unlink()
    return base / "src", expected


def upload_tree(fs: "s3fs.S3FileSystem", local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{prefix}/{path.relative_to(local).as_posix()}")
    fs.invalidate_cache()


def keys(fs: "s3fs.S3FileSystem", prefix: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(path[len(prefix) + 1:] for path in fs.find(prefix))


def run_cli(*args: str) -> object:
    return CliRunner().invoke(main_group, ["migrate", *args, "--checkpoints-only"], catch_exceptions=False)


def test_s3_to_s3_converts_resumes_and_leaves_no_temporaries(s3: "s3fs.S3FileSystem", built: tuple[Path, dict], tmp_path: Path) -> None:
    src_local, expected = built
    upload_tree(s3, src_local, f"{BUCKET}/src")
    source_keys = {key: s3.info(f"{BUCKET}/src/{key}")["ETag"] for key in keys(s3, f"{BUCKET}/src")}
    report_path = tmp_path / "report.json"

    result = run_cli(f"s3://{BUCKET}/src", f"s3://{BUCKET}/dst", "--to", "safetensors", "--jobs", "2", "--report", str(report_path))
    assert result.exit_code == 3, result.output
    report = json.loads(report_path.read_text())
    assert report["counts"] == {"converted": 11, "copied": 0, "up-to-date": 0, "skipped": 3, "failed": 1, "refused": 2}
    written = keys(s3, f"{BUCKET}/dst")
    assert written == sorted([*expected, MANIFEST_NAME])
    assert not [key for key in written if is_temp(key)]
    download = tmp_path / "download"
    for key in expected:
        (download / key).parent.mkdir(parents=True, exist_ok=True)
        s3.get_file(f"{BUCKET}/dst/{key}", str(download / key))
    trees.assert_outputs_exact(download, expected)
    latest, bad = parse(s3.cat_file(f"{BUCKET}/dst/{MANIFEST_NAME}").decode())
    assert bad == 0 and sum(r["status"] == "done" for r in latest.values()) == 11
    assert latest["sd/tiny.pt"]["output_sha256"] == trees.hashlib.sha256((download / "sd/tiny.safetensors").read_bytes()).hexdigest()
    assert {key: s3.info(f"{BUCKET}/src/{key}")["ETag"] for key in keys(s3, f"{BUCKET}/src")} == source_keys

    again = run_cli(f"s3://{BUCKET}/src", f"s3://{BUCKET}/dst", "--to", "safetensors", "--json")
    assert again.exit_code == 3
    counts = json.loads(again.stdout)["counts"]
    assert counts["converted"] == 0 and counts["up-to-date"] == 11


def test_s3_to_local_and_local_to_s3(s3: "s3fs.S3FileSystem", built: tuple[Path, dict], tmp_path: Path) -> None:
    src_local, expected = built
    upload_tree(s3, src_local, f"{BUCKET}/src")
    dry = run_cli(f"s3://{BUCKET}/src", f"s3://{BUCKET}/planned", "--to", "safetensors", "--dry-run", "--json")
    assert dry.exit_code == 0
    assert {e["source"]: e["action"] for e in json.loads(dry.stdout)["files"]}["legacy/old.pth"] == "convert"
    assert keys(s3, f"{BUCKET}/planned") == []

    local_dst = tmp_path / "local"
    result = run_cli(f"s3://{BUCKET}/src", str(local_dst), "--to", "safetensors")
    assert result.exit_code == 3, result.output
    trees.assert_outputs_exact(local_dst, expected)

    copy = tmp_path / "src"
    shutil.copytree(src_local, copy)
    result = run_cli(str(copy), f"s3://{BUCKET}/from-local", "--to", "safetensors")
    assert result.exit_code == 3, result.output
    assert sorted(keys(s3, f"{BUCKET}/from-local")) == sorted([*expected, MANIFEST_NAME])
    assert os.listdir(copy) == os.listdir(src_local)
