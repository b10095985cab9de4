"""One pass over the source: the sha256 is fed from the copy's own buffers, and the result equals the separate passes.

Outputs, recorded hashes and verification verdicts of the one-pass path are compared with the
separate-pass path (a background thread rereading the source; :func:`stream.verify_stream` as a
full second pass), and the bytes read from the source are counted: each source byte is read once.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ckpt_migrate.api as api
import ckpt_migrate.converters.writers.safetensors.plan as stream_plan
import ckpt_migrate.converters.writers.safetensors.stream as stream
from ckpt_migrate.converters.writers.safetensors.writer import SourceDigest, write_tensors
from ckpt_migrate.errors import VerificationError
from ckpt_migrate.io.hashing import HashThread, SequentialSha256
from ckpt_migrate.options import ConvertOptions

from conftest import run_cli


@pytest.fixture(autouse=True, params=["image", "inline", "threaded"])
def pipeline(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test three times: small outputs are assembled in memory, written and read back whole (forced here for
    every output); middling ones are verified and hashed piece by piece on the writing thread; big ones on threads
    of their own (forced here)."""
    monkeypatch.setattr(stream, "IMAGE_MAX_BYTES", 1 << 40 if request.param == "image" else 0)
    if request.param == "threaded":
        import ckpt_migrate.io.hashing as hashing

        monkeypatch.setattr(stream, "THREAD_MIN_BYTES", 0)
        monkeypatch.setattr(hashing, "THREAD_MIN_BYTES", 0)
    return request.param


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_state(seed: int = 17) -> "OrderedDict[str, torch.Tensor]":
    """Mixed dtypes (so the output order differs from the file's), a view, a tie, a scalar, several buffer-sized tensors."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(64, 48, generator=gen)
    return OrderedDict([
        ("conv.weight", torch.randn(300, 1200, generator=gen)),
        ("bn.running_mean", torch.randn(300, generator=gen)),
        ("bn.num_batches_tracked", torch.tensor(1234, dtype=torch.int64)),
        ("half", torch.randn(700, 900, generator=gen).to(torch.float16)),
        ("fc.weight", shared),
        ("head.weight", shared),
        ("fc.weight_t", shared.t()),
        ("steps", torch.arange(5000, dtype=torch.int64)),
        ("tail.bias", torch.randn(257, 1023, generator=gen)),
    ])


def save(tmp_path: Path, fmt: str, state: dict | None = None) -> Path:
    path = tmp_path / f"src-{fmt}.pt"
    torch.save(state if state is not None else model_state(), path, _use_new_zipfile_serialization=fmt == "zip")
    return path


class SourceReads:
    """Counts the bytes ``os.preadv`` reads from one file (the streaming copy reads through it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.identity = (path.stat().st_dev, path.stat().st_ino)
        self.bytes = 0
        honest = os.preadv

        def counting(fd: int, buffers, offset: int) -> int:
            count = honest(fd, buffers, offset)
            status = os.fstat(fd)
            if (status.st_dev, status.st_ino) == self.identity:
                self.bytes += count
            return count

        monkeypatch.setattr(os, "preadv", counting)


def write_both(src: Path, tmp_path: Path, *, verify: bool = True, dtype: str | None = None):
    """Write ``src`` as safetensors with the one-pass digest and with the separate-pass one; return both paths, digests and fed digests."""
    checkpoint = api.load(str(src), hash_source=False)
    if dtype:
        checkpoint = api.prepare(checkpoint, ConvertOptions.from_kwargs(None, dtype=dtype))
    out = {}
    for one_pass in (True, False):
        digest = SourceDigest(checkpoint, True, one_pass=one_pass)
        assert (digest.feed is not None) == one_pass and (digest.thread is not None) != one_pass
        fed = digest.feed.digest if digest.feed is not None else None
        path = tmp_path / f"{'one' if one_pass else 'separate'}.safetensors"
        details = write_tensors(checkpoint.tensors, str(path), digest.metadata(checkpoint), verify=verify, source=str(src),
                                stream=True, digest=digest if one_pass else None)
        assert details["path"] == "stream"
        digest.finish([str(path)], str(src))
        out[one_pass] = (path, digest.result(), fed)
    return checkpoint, out


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("dtype", [None, "fp16", "bf16"])
def test_one_pass_output_and_hash_equal_the_separate_passes(tmp_path: Path, fmt: str, dtype: str | None) -> None:
    src = save(tmp_path, fmt)
    checkpoint, out = write_both(src, tmp_path, dtype=dtype)
    (one, one_hash, fed), (separate, separate_hash, _) = out[True], out[False]
    assert one.read_bytes() == separate.read_bytes()
    assert one_hash == separate_hash == sha256_of(src)
    with safe_open(str(one), framework="pt") as handle:
        assert handle.metadata()["source_sha256"] == sha256_of(src)
    plan = stream_plan.plan_stream(checkpoint.tensors, json.loads(one.read_bytes()[8:8 + int.from_bytes(one.read_bytes()[:8], "little")])["__metadata__"])
    stream.verify_stream(plan, str(one), str(src))
    reference = torch.load(src, weights_only=True)
    written = load_file(str(one))
    target = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype or "")
    for name, tensor in reference.items():
        expected = tensor.to(target) if target and tensor.is_floating_point() else tensor
        assert written[name].dtype == expected.dtype and torch.equal(written[name], expected), name
    assert fed.fed_bytes + fed.gap_bytes == src.stat().st_size
    tensor_bytes = sum(t.untyped_storage().nbytes() for t in {id(t.untyped_storage()): t for t in reference.values()}.values())
    assert fed.fed_bytes >= tensor_bytes
    assert fed.gap_bytes == src.stat().st_size - fed.fed_bytes < 64 * 1024


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("verify", [True, False])
def test_every_source_byte_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, verify: bool) -> None:
    state = OrderedDict((f"layer{i}.weight", torch.randn(256, 1024, generator=torch.Generator().manual_seed(i))) for i in range(6))
    state["count"] = torch.tensor(7, dtype=torch.int64)
    src = save(tmp_path, fmt, state)
    reads = SourceReads(monkeypatch, src)
    gaps: list[SequentialSha256] = []
    honest = SequentialSha256.__init__

    def recording(self, path: str) -> None:
        honest(self, path)
        gaps.append(self)

    monkeypatch.setattr(SequentialSha256, "__init__", recording)
    result = api.convert(str(src), str(tmp_path / "o.safetensors"), verify=verify)
    assert result.source_sha256 == sha256_of(src)
    assert len(gaps) == 1
    assert reads.bytes + gaps[0].gap_bytes == src.stat().st_size
    assert reads.bytes == sum(t.numel() * t.element_size() for t in state.values())


def test_sharded_output_hashes_in_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = OrderedDict((f"block{i}.weight", torch.randn(128, 512, generator=torch.Generator().manual_seed(i))) for i in range(8))
    state["big.embedding"] = torch.randn(1024, 512, generator=torch.Generator().manual_seed(99))
    src = save(tmp_path, "zip", state)
    reads = SourceReads(monkeypatch, src)
    result = api.convert(str(src), str(tmp_path / "shards"), max_shard_size="600KB")
    assert result.report.details["shards"] > 2
    assert result.source_sha256 == sha256_of(src)
    assert reads.bytes == sum(t.numel() * t.element_size() for t in state.values())
    found = {}
    for path in result.report.outputs:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as handle:
                assert handle.metadata()["source_sha256"] == sha256_of(src)
            found.update(load_file(path))
    assert found.keys() == state.keys()
    assert all(torch.equal(found[name], tensor) for name, tensor in state.items())


def test_corrupted_write_is_caught_by_both_paths_and_no_output_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipeline: str) -> None:
    src = save(tmp_path, "zip")
    checkpoint = api.load(str(src), hash_source=False)
    plan = stream_plan.plan_stream(checkpoint.tensors, {})
    honest = stream._pwrite_all
    victim = next(entry for entry in plan.entries if entry.name == "tail.bias")
    start = plan.data_start + victim.begin + 4096

    def flipping(fd: int, view: memoryview, offset: int) -> None:
        honest(fd, view, offset)
        if offset <= start < offset + len(view):
            honest(fd, memoryview(bytes([view[start - offset] ^ 0x01])), start)

    monkeypatch.setattr(stream, "_pwrite_all", flipping)
    hasher = HashThread(SequentialSha256(str(src)))
    assert (hasher._thread is not None) == (pipeline == "threaded")
    with pytest.raises(VerificationError, match="tensor 'tail.bias'"):
        stream.write_stream(plan, str(tmp_path / "one.safetensors"), verify_source=str(src), hasher=hasher)
    hasher.close()
    stream.write_stream(plan, str(tmp_path / "unchecked.safetensors"))
    with pytest.raises(VerificationError, match="tensor 'tail.bias'"):
        stream.verify_stream(plan, str(tmp_path / "unchecked.safetensors"), str(src))
    with pytest.raises(VerificationError, match="tail.bias"):
        api.convert(str(src), str(tmp_path / "api.safetensors"))
    assert not (tmp_path / "api.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if "api" in p.name] == []
    monkeypatch.setattr(stream, "_pwrite_all", honest)
    assert api.convert(str(src), str(tmp_path / "api.safetensors")).source_sha256 == sha256_of(src)


def test_corrupted_cast_write_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save(tmp_path, "legacy")
    honest = stream._pwrite_all
    flipped = []

    def flipping(fd: int, view: memoryview, offset: int) -> None:
        honest(fd, view, offset)
        if len(view) > 100_000 and not flipped:
            flipped.append(offset)
            honest(fd, memoryview(bytes([view[99] ^ 0x80])), offset + 99)

    monkeypatch.setattr(stream, "_pwrite_all", flipping)
    with pytest.raises(VerificationError, match="differs from the source"):
        api.convert(str(src), str(tmp_path / "o.safetensors"), dtype="fp16")
    assert flipped and not (tmp_path / "o.safetensors").exists()


def test_unverified_unhashed_copy_uses_the_kernel_and_hashed_copy_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = bytes(random.Random(3).getrandbits(8) for _ in range(3 * stream.PAGE + 100))
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    calls = []
    honest = stream._kernel_copy

    def counting(*args):
        calls.append(args)
        return honest(*args)

    monkeypatch.setattr(stream, "_kernel_copy", counting)
    digests = []
    for hashed in (False, True):
        hasher = HashThread(SequentialSha256(str(src))) if hashed else None
        fd = os.open(tmp_path / f"dst{hashed}", os.O_RDWR | os.O_CREAT, 0o644)
        out = stream._Output(fd, "dst", False, "dst", hasher)
        with open(src, "rb") as handle:
            out.copy(handle.fileno(), 0, stream.PAGE, len(payload), "src", "t", hashed=hashed)
        out.close()
        os.close(fd)
        assert (tmp_path / f"dst{hashed}").read_bytes()[stream.PAGE:] == payload
        assert bool(calls) != hashed
        calls.clear()
        if hasher is not None:
            digests.append(hasher.result())
    assert digests == [hashlib.sha256(payload).hexdigest()]


def test_cli_records_the_source_sha256(tmp_path: Path) -> None:
    src = save(tmp_path, "legacy")
    done = run_cli("convert", str(src), str(tmp_path / "o.safetensors"), "--json")
    assert done.returncode == 0, done.stderr
    with safe_open(str(tmp_path / "o.safetensors"), framework="pt") as handle:
        assert handle.metadata()["source_sha256"] == sha256_of(src)
    assert sha256_of(src) in done.stdout


def test_sequential_digest_is_exact_in_any_order(tmp_path: Path) -> None:
    rng = random.Random(5)
    data = bytes(rng.getrandbits(8) for _ in range(300_000))
    path = tmp_path / "blob"
    path.write_bytes(data)
    pieces = []
    for _ in range(60):
        start = rng.randrange(len(data))
        pieces.append((start, data[start: start + rng.randrange(1, 20_000)]))
    rng.shuffle(pieces)
    digest = SequentialSha256(str(path))
    for offset, piece in pieces:
        digest.update(offset, piece)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    ordered = SequentialSha256(str(path))
    for offset in range(0, len(data), 4096):
        ordered.update(offset, data[offset: offset + 4096])
    assert ordered.hexdigest() == hashlib.sha256(data).hexdigest()
    assert ordered.gap_bytes == 0 and ordered.fed_bytes == len(data)


def test_hash_thread_releases_every_buffer_and_reports_a_vanished_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 10_000)
    released = []
    thread = HashThread(SequentialSha256(str(path)), depth=2)
    for offset in range(0, 10_000, 1000):
        thread.submit(offset, b"x" * 1000, lambda: released.append(1))
    assert thread.result() == hashlib.sha256(b"x" * 10_000).hexdigest()
    assert len(released) == 10
    thread = HashThread(SequentialSha256(str(path)))
    path.write_bytes(b"x" * 100)
    thread.submit(5000, b"x" * 1000, lambda: released.append(1))
    with pytest.raises(OSError, match="ended at byte"):
        thread.result()
    assert len(released) == 11


@pytest.mark.skipif(sys.platform != "linux", reason="counts open descriptors through /proc")
def test_failed_writes_leave_no_hash_thread_or_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    src = save(tmp_path, "zip")
    api.convert(str(src), str(tmp_path / "warm.safetensors"))
    before_fds, before_threads = len(os.listdir("/proc/self/fd")), threading.active_count()

    def failing(*args, **kwargs):
        raise VerificationError("synthetic failure", path=str(src))

    monkeypatch.setattr(stream, "_check_file", failing)
    for index in range(3):
        with pytest.raises(VerificationError):
            api.convert(str(src), str(tmp_path / f"o{index}.safetensors"))
    assert len(os.listdir("/proc/self/fd")) == before_fds
    assert threading.active_count() == before_threads


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_hugging_face_weights_record_the_source_sha256_in_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool) -> None:
    import helpers_hf as hf

    src = tmp_path / "gpt2"
    hf.save_bin_folder(hf.gpt2(), src, legacy=legacy)
    weights = src / "pytorch_model.bin"
    reads = SourceReads(monkeypatch, weights)
    result = api.convert(str(weights), str(tmp_path / "model.safetensors"), hf_layout=True)
    assert result.source_sha256 == result.report.details["metadata"]["source_sha256"] == sha256_of(weights)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata()["source_sha256"] == sha256_of(weights)
        assert handle.metadata()["lm_head.weight"] == "transformer.wte.weight"
    state = torch.load(weights, weights_only=True)
    unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state.values()}
    assert reads.bytes == sum(unique.values())


@pytest.mark.parametrize("verify", [True, False])
def test_big_outputs_start_their_write_back_as_they_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipeline: str, verify: bool) -> None:
    import ckpt_migrate.io.durability as durability

    src = save(tmp_path, "zip")
    started: list[int] = []

    def counting(fd: int) -> None:
        started.append(os.fstat(fd).st_size)
        durability.start_writeback(fd)

    monkeypatch.setattr(stream, "WRITEBACK_BYTES", 64 << 10)
    monkeypatch.setattr(stream, "start_writeback", counting)
    result = api.convert(str(src), str(tmp_path / "o.safetensors"), verify=verify, source_hash=verify)
    written = load_file(str(tmp_path / "o.safetensors"))
    reference = torch.load(src, weights_only=True)
    assert all(torch.equal(written[name], tensor) for name, tensor in reference.items())
    if pipeline == "image":
        assert started == []
    else:
        assert len(started) >= 3 and started == sorted(started) and started[-1] <= result.report.bytes
