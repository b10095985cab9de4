"""The streaming safetensors path against the torch path and the source: every dtype, views, both byte orders, casts, schemas, fallbacks."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ckpt_migrate.api as api

import ckpt_migrate.model.dtypes as dtypes
from ckpt_migrate.model.checkpoint import ByteSource, StorageRef, TensorRef
import ckpt_migrate.converters.writers.safetensors.plan as stream_plan
import ckpt_migrate.converters.writers.safetensors.stream as stream
from ckpt_migrate.converters.writers.safetensors.writer import write_tensors
from ckpt_migrate.errors import CorruptFileError, UsageError, VerificationError

from conftest import ROOT, run_cli

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
              torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32, torch.uint64,
              torch.bool, torch.complex64]


def bits(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's values in row-major order."""
    flat = tensor.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def assert_same(found: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert found.dtype == expected.dtype, name
    assert tuple(found.shape) == tuple(expected.shape), name
    assert bits(found) == bits(expected), name


def random_of(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Deterministic values covering each dtype's bit patterns (random bytes for floats, NaNs included)."""
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    width = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (int(np.prod(shape)) * width,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape).clone()


def every_dtype_state() -> "OrderedDict[str, torch.Tensor]":
    """One tensor per dtype plus views, offsets, ties, 0-dim and empty tensors."""
    gen = torch.Generator().manual_seed(8)
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for dtype in ALL_DTYPES:
        name = str(dtype).replace("torch.", "")
        base = random_of(dtype, (6, 10), gen)
        state[f"{name}.plain"] = base
        state[f"{name}.transposed"] = base.t()
        state[f"{name}.slice"] = base[1:5, 3:8]
        state[f"{name}.stepped"] = base[::2, 1::3]
        state[f"{name}.scalar"] = random_of(dtype, (), gen)
        state[f"{name}.empty"] = random_of(dtype, (0, 3), gen)
    shared = random_of(torch.float32, (4, 8), gen)
    state["tied.a"] = shared
    state["tied.b"] = shared
    state["tied.row"] = shared[2]
    state["offset.tail"] = random_of(torch.float32, (100,), gen)[37:]
    state["expanded"] = random_of(torch.float32, (1, 5), gen).expand(3, 5)
    return state


def save(state: dict, path: Path, fmt: str) -> Path:
    torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def _swap(data: bytes, dtype: dtypes.DType) -> bytes:
    width = dtype.itemsize // (2 if dtype.kind == "complex" else 1)
    if width == 1:
        return data
    return np.frombuffer(data, f"<u{width}").byteswap().tobytes()


def big_endian_zip(src: Path, dst: Path) -> Path:
    """Rewrite a torch zip file as a big-endian machine would have saved it: ``byteorder`` says big, storages swapped."""
    kinds = {ref.storage.key: ref.storage.dtype for ref in api.load(str(src)).tensors.values()}
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            data = old.read(info)
            folder, _, leaf = info.filename.rpartition("/")
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif folder.endswith("/data") and leaf in kinds:
                data = _swap(data, kinds[leaf])
            new.writestr(info.filename, data)
    return dst


def convert_both(src: Path, tmp: Path, **options) -> tuple[dict, dict, api.ConvertResult, api.ConvertResult]:
    """Convert with the streaming path and with the torch path; return both loaded outputs and results."""
    fast = api.convert(str(src), str(tmp / "fast.safetensors"), force=True, **options)
    slow = api.convert(str(src), str(tmp / "general.safetensors"), force=True, stream=False, **options)
    return load_file(str(tmp / "fast.safetensors")), load_file(str(tmp / "general.safetensors")), fast, slow


@pytest.fixture(scope="module")
def state() -> "OrderedDict[str, torch.Tensor]":
    return every_dtype_state()


@pytest.mark.parametrize("layout", ["zip", "legacy", "zip-big"])
def test_every_dtype_view_and_byte_order_is_bit_identical(tmp_path: Path, state: dict, layout: str) -> None:
    fmt, _, order = layout.partition("-")
    src = save(state, tmp_path / "little.pt", fmt)
    if order == "big":
        src = big_endian_zip(src, tmp_path / "big.pt")
        assert {ref.byteorder for ref in api.load(str(src)).tensors.values()} == {"big"}
    fast, general, fast_result, general_result = convert_both(src, tmp_path)
    assert fast_result.report.details["path"] == "stream"
    assert general_result.report.details["path"] == "general"
    assert set(fast) == set(general) == set(state)
    for name, expected in state.items():
        assert_same(fast[name], expected, name)
        assert_same(general[name], expected, name)
    if fmt == "legacy":
        return
    reference = torch.load(tmp_path / "little.pt", weights_only=True)
    for name, tensor in reference.items():
        assert_same(fast[name], tensor, name)


def test_big_endian_fixture_really_is_big_endian(tmp_path: Path) -> None:
    state = {"x": torch.tensor([1.0, 2.0], dtype=torch.float32)}
    big = big_endian_zip(save(state, tmp_path / "a.pt", "zip"), tmp_path / "b.pt")
    loaded = api.load(str(big))
    assert loaded.meta["byteorder"] == "big"
    assert loaded.tensors["x"].storage.source.read() == struct.pack(">2f", 1.0, 2.0)



def test_legacy_sys_info_byte_order_is_ignored_as_torch_ignores_it(tmp_path: Path) -> None:
    """torch's legacy loader never reads ``sys_info``: a file that says big-endian is read little-endian, as torch does."""
    state = {"x": torch.tensor([1.0, 2.0], dtype=torch.float32)}
    src = save(state, tmp_path / "c.pt", "legacy")
    data = bytearray(src.read_bytes())
    marker = b"little_endianq\x02\x88"
    at = data.find(marker)
    data[at + len(marker) - 1] = 0x89
    flipped = tmp_path / "d.pt"
    flipped.write_bytes(bytes(data))
    reference = torch.load(flipped, weights_only=True)
    ref = api.load(str(flipped)).tensors["x"]
    assert ref.byteorder == "little"
    assert torch.equal(ref.materialize(), reference["x"])


def test_layout_is_aligned_and_ties_are_written_under_every_name(tmp_path: Path, state: dict) -> None:
    src = save(state, tmp_path / "s.pt", "zip")
    api.convert(str(src), str(tmp_path / "o.safetensors"))
    raw = (tmp_path / "o.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert (8 + length) % 8 == 0
    header = json.loads(raw[8: 8 + length])
    metadata = header.pop("__metadata__")
    assert metadata["source"] == src.name and metadata["reader"] == "torch-zip"
    assert metadata["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        assert begin % dtypes.BY_SAFETENSORS[entry["dtype"]].itemsize == 0, name
    assert header["tied.a"]["data_offsets"] != header["tied.b"]["data_offsets"]
    out = load_file(str(tmp_path / "o.safetensors"))
    assert_same(out["tied.a"], out["tied.b"], "tied")


def test_source_sha256_by_default_by_both_paths_and_off_when_asked(tmp_path: Path) -> None:
    src = save({"w": torch.arange(12.0).reshape(3, 4)}, tmp_path / "s.pt", "zip")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    from safetensors import safe_open

    plain = api.convert(str(src), str(tmp_path / "plain.safetensors"), source_hash=False)
    assert plain.checkpoint.meta["source_sha256"] is None
    with safe_open(str(tmp_path / "plain.safetensors"), framework="pt") as handle:
        assert "source_sha256" not in handle.metadata()
    _, _, fast, general = convert_both(src, tmp_path, source_hash=True)
    for result, name in ((fast, "fast"), (general, "general")):
        assert result.source_sha256 == result.report.source_sha256 == digest
        assert result.checkpoint.meta["source_sha256"] is None
        with safe_open(str(tmp_path / f"{name}.safetensors"), framework="pt") as handle:
            assert handle.metadata()["source_sha256"] == digest


SCHEMA = """\
name = "views"
[[rules]]
strip_prefix = "module."
[[rules]]
transpose = { key = "fc.weight", dims = [0, 1] }
[[rules]]
split = { key = "qkv.weight", dim = 0, into = ["q.weight", "k.weight", "v.weight"] }
[[rules]]
reshape = { key = "conv.weight", shape = [8, 18] }
"""


def test_schemas_applied_stream_and_match_torch(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    state = OrderedDict([("module.fc.weight", torch.randn(5, 7, generator=gen)), ("module.qkv.weight", torch.randn(9, 4, generator=gen)),
                         ("module.conv.weight", torch.randn(8, 2, 3, 3, generator=gen)),
                         ("module.bn.num_batches_tracked", torch.tensor(7))])
    src = save(state, tmp_path / "s.pt", "legacy")
    schema = tmp_path / "views.toml"
    schema.write_text(SCHEMA)
    fast, general, result, _ = convert_both(src, tmp_path, schemas=[str(schema)], dtype="bf16")
    assert result.report.details["path"] == "stream"
    expected = {"fc.weight": state["module.fc.weight"].t(), "conv.weight": state["module.conv.weight"].reshape(8, 18),
                "q.weight": state["module.qkv.weight"][:3], "k.weight": state["module.qkv.weight"][3:6],
                "v.weight": state["module.qkv.weight"][6:], "bn.num_batches_tracked": state["module.bn.num_batches_tracked"]}
    assert set(fast) == set(expected)
    for name, tensor in expected.items():
        want = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        assert_same(fast[name], want, name)
        assert_same(general[name], want, name)


def special_floats(dtype: torch.dtype) -> torch.Tensor:
    """Values that stress a cast: ties, subnormals, overflow, infinities, signed zeros, random bit patterns (no NaN)."""
    gen = torch.Generator().manual_seed(5)
    values = torch.tensor([0.0, -0.0, 1.0, -1.0, 65504.0, 65520.0, 65519.99, 1e-8, -6e-8, 3e38, -3e38, 1e-40,
                           float("inf"), float("-inf"), 1.00390625, 1.01171875, 2.0 ** -24, 2.0 ** -25, 3.0 * 2.0 ** -26],
                          dtype=torch.float64).to(dtype)
    noise = random_of(dtype, (4000,), gen)
    noise = noise[~torch.isnan(noise.double())]
    return torch.cat([values, noise])


@pytest.mark.parametrize("source", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("target", ["fp32", "fp16", "bf16"])
def test_chunked_casts_equal_torch(tmp_path: Path, source: torch.dtype, target: str) -> None:
    values = special_floats(source)
    state = {"v": values, "view": values[: 2000].reshape(40, 50).t(), "ints": torch.arange(5, dtype=torch.int32)}
    src = save(state, tmp_path / "s.pt", "zip")
    fast, general, result, _ = convert_both(src, tmp_path, dtype=target)
    want_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[target]
    assert result.report.details["path"] == "stream"
    for name, tensor in state.items():
        want = tensor.to(want_dtype) if tensor.is_floating_point() else tensor
        assert_same(fast[name], want, name)
        assert_same(general[name], want, name)


def test_exhaustive_16_bit_casts_match_torch() -> None:
    every = np.arange(65536, dtype=np.uint16)
    for source, source_name in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        values = torch.from_numpy(every.view(np.int16).copy()).view(source)
        finite = ~torch.isnan(values.float())
        block = every[finite.numpy()]
        for target, target_name in ((torch.float32, "float32"), (torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
            if target == source:
                continue
            found = stream._cast(block, dtypes.get(source_name), dtypes.get(target_name), "x")
            assert found.tobytes() == bits(values[finite].to(target)), (source_name, target_name)


def test_cast_meeting_nan_falls_back_to_torch(tmp_path: Path) -> None:
    values = torch.tensor([1.0, float("nan"), -2.5, float("-nan")], dtype=torch.float32)
    src = save({"v": values}, tmp_path / "s.pt", "zip")
    result = api.convert(str(src), str(tmp_path / "o.safetensors"), dtype="bf16")
    assert result.report.details["path"] == "general"
    assert "NaN" in result.report.details["fallback"]
    assert_same(load_file(str(tmp_path / "o.safetensors"))["v"], values.to(torch.bfloat16), "v")
    assert sorted(os.listdir(tmp_path)) == ["o.safetensors", "s.pt"]


def test_declines_what_it_cannot_stream_exactly(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, generator=gen), torch.randn(4, 3, generator=gen)
    src = save({"a": a, "b": b}, tmp_path / "s.pt", "zip")
    schema = tmp_path / "cat.toml"
    schema.write_text('[[rules]]\nconcat = { keys = ["a", "b"], dim = 0, into = "ab" }\n')
    result = api.convert(str(src), str(tmp_path / "cat.safetensors"), schemas=[str(schema)])
    assert result.report.details["path"] == "general" and "computed" in result.report.details["fallback"]
    assert_same(load_file(str(tmp_path / "cat.safetensors"))["ab"], torch.cat([a, b]), "ab")

    loaded = api.load(str(src))
    ref = loaded.tensors["a"]
    remote = ByteSource("memory://a", ref.storage.source.offset, ref.storage.source.length, opener=lambda: open(src, "rb"))
    storage = StorageRef("0", ref.storage.dtype, ref.storage.numel, "cpu", remote)
    tensors = OrderedDict(a=TensorRef(storage, ref.dtype, ref.shape, ref.stride, ref.offset))
    with pytest.raises(stream_plan.CannotStream, match="not a local file"):
        stream_plan.plan_stream(tensors, {})
    details = write_tensors(tensors, str(tmp_path / "remote.safetensors"), {}, verify=True, source="memory://a")
    assert details["path"] == "general"
    assert_same(load_file(str(tmp_path / "remote.safetensors"))["a"], a, "a")
    with pytest.raises(UsageError, match="cannot stream exactly"):
        write_tensors(tensors, str(tmp_path / "forced.safetensors"), {}, verify=True, source="memory://a", stream=True)

    eight = save({"f8": torch.randn(4, generator=gen).to(torch.float8_e4m3fn)}, tmp_path / "f8.pt", "zip")
    cast = api.convert(str(eight), str(tmp_path / "f8.safetensors"), dtype="fp16")
    assert cast.report.details["path"] == "general" and "float8_e4m3fn" in cast.report.details["fallback"]


def test_forced_stream_refusal_is_a_usage_error_on_the_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ckpt_migrate.cli import main_group

    src = save({"a": torch.ones(2), "b": torch.zeros(3)}, tmp_path / "s.pt", "zip")
    schema = tmp_path / "cat.toml"
    schema.write_text('[[rules]]\nconcat = { keys = ["a", "b"], dim = 0, into = "ab" }\n')
    with pytest.raises(UsageError):
        api.convert(str(src), str(tmp_path / "o.safetensors"), schemas=[str(schema)], stream=True)
    assert not (tmp_path / "o.safetensors").exists()
    result = CliRunner().invoke(main_group, ["convert", str(src), str(tmp_path / "ok.safetensors"), "--json"], prog_name="ckpt-migrate")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["details"]["path"] == "stream"
    again = CliRunner().invoke(main_group, ["convert", str(src), str(tmp_path / "ok.safetensors")], prog_name="ckpt-migrate")
    assert again.exit_code == 1 and "already exists; pass --force" in again.output


@pytest.mark.parametrize("chunk, window", [(64, 256), (8, 24), (4, 4)])
def test_bounded_buffers_gather_every_view(tmp_path: Path, state: dict, monkeypatch: pytest.MonkeyPatch, chunk: int, window: int) -> None:
    monkeypatch.setattr(stream, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(stream, "WINDOW_BYTES", window)
    gen = torch.Generator().manual_seed(2)
    big = torch.randn(30, 20, 6, generator=gen)
    views = {"permuted": big.permute(2, 0, 1), "transposed": big[:, :, 0].t(), "corner": big[3:20:4, ::3, 1:5],
             "column": big[:, 7, 2], "f16": big.to(torch.float16).transpose(0, 2)}
    src = big_endian_zip(save(views, tmp_path / "s.pt", "zip"), tmp_path / "big.pt")
    fast, general, result, _ = convert_both(src, tmp_path, dtype="bf16")
    assert result.report.details["path"] == "stream"
    for name, tensor in views.items():
        assert_same(fast[name], tensor.to(torch.bfloat16), name)
        assert_same(general[name], tensor.to(torch.bfloat16), name)


def test_blocks_respect_their_limits() -> None:
    shape, stride = (30, 20, 6), (1, 180, 30)
    pieces = list(stream._blocks(shape, stride, 5, out_limit=16, window_limit=200))
    assert sum(int(np.prod(piece[2])) for piece in pieces) == 30 * 20 * 6
    assert all(int(np.prod(piece[2])) <= 16 for piece in pieces)
    assert all(count <= 200 or int(np.prod(piece)) == 1 for _, count, piece, _ in pieces)
    assert stream._read_cost((400, 400), (1, 400), 100, 1000) > 2 * 400 * 400


@pytest.mark.parametrize("disabled", [(), ("copy_file_range",), ("copy_file_range", "sendfile")])
@pytest.mark.parametrize("src_offset, dst_offset", [(4096, 8192), (100, 8), (0, 4095)])
@pytest.mark.parametrize("verify", [False, True])
def test_copy_kernel_and_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disabled: tuple[str, ...],
                                  src_offset: int, dst_offset: int, verify: bool) -> None:
    monkeypatch.setattr(stream, "COPY_BUFFER_BYTES", 1000)
    for name in disabled:
        monkeypatch.setitem(stream._kernel_copy_ok, name, False)
    payload = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    (tmp_path / "src").write_bytes(b"s" * src_offset + payload)
    fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        out = stream._Output(fd, str(tmp_path / "dst"), verify, "src")
        with open(tmp_path / "src", "rb") as handle:
            out.copy(handle.fileno(), src_offset, dst_offset, len(payload), "src", "t")
            with pytest.raises(CorruptFileError, match="truncated"):
                out.copy(handle.fileno(), src_offset, 50000, len(payload) + 5, "src", "t")
    finally:
        os.close(fd)
    assert (tmp_path / "dst").read_bytes()[dst_offset: dst_offset + len(payload)] == payload


def test_read_back_names_the_tensor_written_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save({"a": torch.arange(64.0), "b": torch.arange(10.0)}, tmp_path / "s.pt", "zip")
    plan = stream_plan.plan_stream(api.load(str(src)).tensors, {})
    honest = stream._pwrite_all
    target = plan.data_start + next(entry for entry in plan.entries if entry.name == "b").begin + 5

    def sloppy(fd, view, offset):
        honest(fd, view, offset)
        if offset <= target < offset + len(view):
            honest(fd, memoryview(b"\xff"), target)

    monkeypatch.setattr(stream, "_pwrite_all", sloppy)
    with pytest.raises(VerificationError, match="tensor 'b'"):
        stream.write_stream(plan, str(tmp_path / "o.safetensors"), verify_source="s.pt")
    stream.write_stream(plan, str(tmp_path / "unchecked.safetensors"))
    with pytest.raises(VerificationError, match="tensor 'b'"):
        stream.verify_stream(plan, str(tmp_path / "unchecked.safetensors"), "s.pt")


def planned(tmp_path: Path) -> tuple[stream_plan.StreamPlan, Path]:
    src = save({"a": torch.arange(64.0), "b": torch.arange(10.0).reshape(2, 5).t()}, tmp_path / "s.pt", "zip")
    plan = stream_plan.plan_stream(api.load(str(src)).tensors, {"format": "pt"})
    out = tmp_path / "o.safetensors"
    stream.write_stream(plan, str(out), verify_source="s.pt")
    stream.verify_stream(plan, str(out), "s.pt")
    return plan, out


@pytest.mark.parametrize("target", ["a", "b"])
def test_verification_catches_a_flipped_byte(tmp_path: Path, target: str) -> None:
    plan, out = planned(tmp_path)
    entry = next(e for e in plan.entries if e.name == target)
    data = bytearray(out.read_bytes())
    data[plan.data_start + entry.begin + 3] ^= 0x40
    out.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=f"tensor '{target}'"):
        stream.verify_stream(plan, str(out), "s.pt")


def test_verification_catches_header_and_size_damage(tmp_path: Path) -> None:
    plan, out = planned(tmp_path)
    good = out.read_bytes()
    out.write_bytes(good.replace(b'"F32"', b'"I32"', 1))
    with pytest.raises(VerificationError, match="header"):
        stream.verify_stream(plan, str(out), "s.pt")
    out.write_bytes(good + b"\0")
    with pytest.raises(VerificationError, match="bytes"):
        stream.verify_stream(plan, str(out), "s.pt")


def test_source_shorter_than_its_tensors_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "raw.bin"
    path.write_bytes(b"\0" * 16)
    f32 = dtypes.get("float32")
    storage = StorageRef("0", f32, 8, "cpu", ByteSource(str(path), 0, 32))
    with pytest.raises(CorruptFileError, match="truncated"):
        stream_plan.plan_stream({"x": TensorRef(storage, f32, (8,), (1,))}, {})


def test_in_memory_storages_stream(tmp_path: Path) -> None:
    values = torch.arange(12, dtype=torch.int16).reshape(3, 4)
    data = values.numpy().tobytes()
    i16 = dtypes.get("int16")
    storage = StorageRef("0", i16, 12, "cpu", ByteSource("memory", 0, len(data), buffer=data))
    tensors = OrderedDict(plain=TensorRef(storage, i16, (3, 4), (4, 1)), view=TensorRef(storage, i16, (4, 3), (1, 4)))
    assert write_tensors(tensors, str(tmp_path / "m.safetensors"), {}, verify=True, source="memory")["path"] == "stream"
    out = load_file(str(tmp_path / "m.safetensors"))
    assert_same(out["plain"], values, "plain")
    assert_same(out["view"], values.t(), "view")


def _torch_free(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_streaming_conversion_never_imports_torch(tmp_path: Path) -> None:
    src = save({"w": torch.randn(8, 4).t(), "n": torch.tensor(3)}, tmp_path / "s.pt", "legacy")
    code = (f"import sys\nfrom ckpt_migrate import api\n"
            f"r = api.convert({str(src)!r}, {str(tmp_path / 'o.safetensors')!r}, stream=True)\n"
            f"assert r.report.details['path'] == 'stream'\n"
            f"print('torch' in sys.modules)")
    done = _torch_free(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("args", [["--help"], ["formats"], ["formats", "--json"], ["convert", "--help"]])
def test_help_and_formats_never_import_torch(args: list[str]) -> None:
    code = (f"import sys\nfrom ckpt_migrate.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            f"print('TORCH', 'torch' in sys.modules, file=sys.stderr)")
    done = _torch_free(code)
    assert done.returncode == 0, done.stderr
    assert "TORCH False" in done.stderr


def test_cli_streams_and_reports_one_line_errors(tmp_path: Path) -> None:
    src = save({"w": torch.ones(3)}, tmp_path / "s.pt", "zip")
    done = run_cli("convert", str(src), str(tmp_path / "o.safetensors"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["details"]["path"] == "stream"
    missing = run_cli("convert", str(tmp_path / "nope.pt"), str(tmp_path / "x.safetensors"))
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr
    folder = tmp_path / "folder"
    folder.mkdir()
    into_folder = run_cli("convert", str(src), str(folder), "--to", "safetensors", "--force")
    assert into_folder.returncode == 2 and "is a folder" in into_folder.stderr
    assert folder.is_dir()
