"""Every limit of the safe interpreter and the readers is a clear error, never a crash, a hang or a huge allocation."""

from __future__ import annotations

import json
import struct
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import payloads as P
import ckpt_migrate.api as api
from ckpt_migrate.converters.base import ReadOptions
from ckpt_migrate.converters.readers.safetensors_file import MAX_HEADER_BYTES, parse_header
from ckpt_migrate.converters.readers.torch_legacy import nested_loader
from ckpt_migrate.errors import CorruptFileError, LimitExceededError, UnsafeFileError
from ckpt_migrate.unpickler import Limits, interpret
from ckpt_migrate.unpickler.vm import check_nesting

MODULUS = sys.hash_info.modulus


def _raises(data: bytes, error: type, fragment: str, limits: Limits | None = None) -> None:
    options = {"limits": limits} if limits else {}
    with pytest.raises(error) as raised:
        interpret(data, path="limits.pkl", **options)
    assert fragment in str(raised.value), str(raised.value)
    assert str(raised.value).startswith("limits.pkl: ")


def _nested_lists(depth: int) -> bytes:
    """A list inside a list ``depth`` deep, built through the memo so no mark nesting is needed."""
    body = b"]q\x00" + b"".join(
        b"]r" + (i + 1).to_bytes(4, "little") + b"j" + i.to_bytes(4, "little") + b"j" + (i + 1).to_bytes(4, "little") + b"a0"
        for i in range(depth - 1))
    return b"\x80\x02" + body + b"h\x00."


def test_opcode_budget() -> None:
    _raises(b"\x80\x02" + b"N0" * 100 + b"N.", LimitExceededError, "exceeds 50 opcodes", Limits(max_opcodes=50, opcodes_per_input_byte=0))
    assert interpret(b"\x80\x02" + b"N0" * 100 + b"N.", path="x").value is None


def test_memo_stack_and_marks() -> None:
    _raises(b"\x80\x04" + b"N\x94" * 20 + b".", LimitExceededError, "memo exceeds 10", Limits(max_memo=10))
    _raises(b"\x80\x02" + b"N" * 20 + b".", LimitExceededError, "stack exceeds 10", Limits(max_stack=10))
    _raises(b"\x80\x02" + b"(" * 10 + b"N.", LimitExceededError, "more than 5 marks", Limits(max_marks=5))


def test_container_depth() -> None:
    assert check_nesting(interpret(_nested_lists(150), path="x").value, 200) == 150
    _raises(_nested_lists(201), LimitExceededError, "containers nested more than 200 deep")


def test_cycles_are_not_depth() -> None:
    cyclic = b"\x80\x02]q\x00h\x00a."
    value = interpret(cyclic, path="x").value
    assert value[0] is value


def test_deep_tuples_are_refused_before_anything_hashes_them() -> None:
    deep_key = b"\x80\x02}" + b")" + b"\x85" * 100_000 + b"Ns."
    _raises(deep_key, LimitExceededError, "tuples nested more than 200 deep")
    deep_frozenset = b"\x80\x04" + b"(" * 300 + b"\x91" * 300 + b"."
    _raises(deep_frozenset, LimitExceededError, "nested more than", Limits(max_marks=1000))


def test_hashing_big_keys_is_charged_to_the_budget() -> None:
    big = b"(" + b"K\x01" * 1000 + b"tq\x00" + b"0"
    inserts = b"}" + b"".join(b"h\x00K" + bytes([i]) + b"s" for i in range(200))
    data = b"\x80\x02" + big + inserts + b"."
    assert len(interpret(data, path="x").value) == 1
    _raises(data, LimitExceededError, "opcodes and hashed elements", Limits(max_opcodes=100_000, opcodes_per_input_byte=0))


def test_exponential_tuple_sharing_is_charged_not_hashed() -> None:
    doubling = b"K\x01\x85q\x000" + b"".join(b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) + b"0" for i in range(60))
    data = b"\x80\x02" + doubling + b"}h\x3cNs."
    assert interpret(b"\x80\x02" + doubling + b"h\x3c.", path="x").value[0][0][0] is not None
    start = time.monotonic()
    _raises(data, LimitExceededError, "hashed elements")
    assert time.monotonic() - start < 5


def test_hash_collision_keys_are_limited() -> None:
    keys = b"".join(b"\x8a\x09" + (k * MODULUS + 1).to_bytes(9, "little", signed=True) + b"N" for k in range(1, 200))
    data = b"\x80\x02}(" + keys + b"u."
    assert len(interpret(data, path="x").value) == 199
    _raises(data, LimitExceededError, "hash-collision", Limits(max_colliding_keys=100))


@pytest.mark.parametrize(("data", "fragment"), [
    (b"\x80\x02X\xe8\x03\x00\x00abc.", "declares 1000 bytes"),
    (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 63) + b"abc.", "declares"),
    (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.", "frame of"),
    (b"\x80\x02\x8b" + struct.pack("<i", 100_000) + b"\x00" * 8 + b".", "LONG4 of 100000"),
    (b"\x80\x02\x8b" + struct.pack("<i", -5) + b".", "LONG4 of -5"),
    (b"\x80\x02T" + struct.pack("<i", -1) + b".", "declares -1"),
    (b"(S'unterminated", "unterminated"),
    (b"I" + b"9" * 5000 + b"\n.", "too long"),
    (b"\x80\x02N", "without STOP"),
    (b"\x80\x09N.", "protocol 9"),
    (b"\x80\x02h\x05.", "never stored"),
    (b"\x80\x02\x97.", "out-of-band"),
])
def test_declared_lengths_and_malformed_opcodes(data: bytes, fragment: str) -> None:
    _raises(data, CorruptFileError, fragment)


@pytest.mark.parametrize(("call", "fragment", "error"), [
    (P.call("builtins", "bytes", [1 << 40]), "would allocate", LimitExceededError),
    (P.call("builtins", "bytearray", [1 << 40]), "would allocate", LimitExceededError),
    (P.global_op("builtins", "list") + b"(" + P.call("builtins", "range", [10**12]) + b"tR", "not a list", CorruptFileError),
    (P.global_op("builtins", "set") + b"(" + P.call("builtins", "range", [10**12]) + b"tR", "not a list", CorruptFileError),
    (P.global_op("torch", "Size") + b"(" + P.call("builtins", "range", [10**12]) + b"tR", "not a list", CorruptFileError),
    (P.call("fractions", "Fraction", ["1e999999999"]), "Fraction", CorruptFileError),
    (P.call("decimal", "Decimal", ["1e999999999"]), "Decimal", CorruptFileError),
    (P.call("collections", "deque", [[], -1]), "maxlen", CorruptFileError),
])
def test_allocations_and_expensive_constructors(call: bytes, fragment: str, error: type) -> None:
    start = time.monotonic()
    _raises(b"\x80\x02" + call + b".", error, fragment)
    assert time.monotonic() - start < 5


def _tensor_file(tmp_path: Path, size: list[int], stride: list[int], offset: int = 0) -> Path:
    path = tmp_path / "t.pth"
    path.write_bytes(P.torch_zip(P.tensor_pickle(size, stride, offset), {"0": bytes(16)}))
    return path


@pytest.mark.parametrize(("size", "stride", "offset", "fragment"), [
    ([5], [1], 0, "storage holds 4"),
    ([2], [1], 3, "storage holds 4"),
    ([2, 2], [1 << 62, 1], 0, "storage holds 4"),
    ([1 << 63], [1], 0, "outside 0..2**63-1"),
    ([-1], [1], 0, "outside 0..2**63-1"),
    ([2], [-1], 0, "outside 0..2**63-1"),
    ([1 << 30, 1 << 30], [1, 1], 0, "more than 1099511627776 elements"),
    ([1] * 65, [1] * 65, 0, "65 dimensions"),
])
def test_tensor_geometry_is_checked_with_exact_arithmetic(tmp_path: Path, size: list[int], stride: list[int], offset: int, fragment: str) -> None:
    with pytest.raises(CorruptFileError) as raised:
        api.load(_tensor_file(tmp_path, size, stride, offset))
    assert fragment in str(raised.value)


def test_a_valid_tensor_at_the_edge_of_its_storage_opens(tmp_path: Path) -> None:
    checkpoint = api.load(_tensor_file(tmp_path, [2, 2], [2, 1], 0))
    assert checkpoint.tensors["w"].shape == (2, 2)
    checkpoint = api.load(_tensor_file(tmp_path, [0, 1 << 40], [1, 1], 0))
    assert checkpoint.tensors["w"].numel == 0


def test_nested_pickles_are_limited() -> None:
    payload = P.legacy_file(b"\x80\x02N.")
    for _ in range(6):
        payload = P.legacy_file(P.load_from_bytes_pickle(payload))
    with pytest.raises(LimitExceededError) as raised:
        nested_loader("n.pkl", ReadOptions(), 1)(payload)
    assert "nested more than 4 deep" in str(raised.value)
    shallow = P.legacy_file(P.load_from_bytes_pickle(P.legacy_file(b"\x80\x02N.")))
    assert nested_loader("n.pkl", ReadOptions(), 1)(shallow).value is None


def test_nested_plain_pickle_is_interpreted_not_just_rejected() -> None:
    refused = nested_loader("n.pkl", ReadOptions(), 1)(P.call_pickle("os", "system", ["x"]))
    assert [u.verdict for u in refused.globals.values()] == ["refused"]
    with pytest.raises(CorruptFileError) as raised:
        nested_loader("n.pkl", ReadOptions(), 1)(b"\x80\x02N.")
    assert "not a torch legacy stream or zip archive" in str(raised.value)


# ---------------------------------------------------------------- safetensors headers


def _header(header: object, data: bytes = b"", declared: int | None = None) -> tuple[bytes, int]:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    blob = struct.pack("<Q", len(raw) if declared is None else declared) + raw + data
    return blob, len(blob)


@pytest.mark.parametrize(("header", "data", "declared", "fragment"), [
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), MAX_HEADER_BYTES + 1, "over the"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), 10_000, "but the file holds"),
    (b'{"a": ' + b"1" * 5000 + b"}", b"", None, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, b"", None, "not valid JSON"),
    ({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, bytes(4), None, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4), None, "invalid shape"),
    ({"a": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 4]}}, bytes(4), None, "needs"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, bytes(4), None, "offsets"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8), None, "no entry covers"),
    ({"__metadata__": {"k": 1}}, b"", None, "strings to strings"),
    ([], b"", None, "not a JSON object"),
])
def test_safetensors_header_limits(header: object, data: bytes, declared: int | None, fragment: str) -> None:
    blob, size = _header(header, data, declared)
    with pytest.raises(CorruptFileError) as raised:
        parse_header(blob, size, "h.safetensors")
    assert fragment in str(raised.value)


# ---------------------------------------------------------------- zip archives


def _central_records(data: bytes) -> list[int]:
    return [i for i in range(len(data)) if data.startswith(b"PK\x01\x02", i)]


def _patch_central(data: bytes, name: str, offset: int, value: bytes) -> bytes:
    """Overwrite a field (at ``offset`` within the central-directory record) of entry ``name``."""
    out = bytearray(data)
    for start in _central_records(data):
        name_len = struct.unpack("<H", data[start + 28: start + 30])[0]
        if data[start + 46: start + 46 + name_len].decode() == name:
            out[start + offset: start + offset + len(value)] = value
            return bytes(out)
    raise KeyError(name)


def _genuine(tmp_path: Path) -> bytes:
    torch.save({"w": torch.ones(4)}, tmp_path / "g.pth")
    return (tmp_path / "g.pth").read_bytes()


def _read(tmp_path: Path, data: bytes, limits: Limits | None = None) -> None:
    path = tmp_path / "z.pth"
    path.write_bytes(data)
    if limits is None:
        api.load(path)
    else:
        api.read_raw(str(path), limits=limits)


def test_zip_pickle_size_limit(tmp_path: Path) -> None:
    with pytest.raises(LimitExceededError) as raised:
        _read(tmp_path, _genuine(tmp_path), Limits(max_pickle_bytes=50))
    assert "over the limit of 50" in str(raised.value)


def test_zip_decompression_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    buffer = __import__("io").BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02N.")
    data = _patch_central(buffer.getvalue(), "archive/data.pkl", 24, struct.pack("<I", 1_000_000_000))
    with pytest.raises(LimitExceededError) as raised:
        _read(tmp_path, data)
    assert "decompression bomb" in str(raised.value)


def test_zip_stored_entry_with_two_sizes(tmp_path: Path) -> None:
    genuine = _genuine(tmp_path)
    data = _patch_central(genuine, "g/data/0", 24, struct.pack("<I", 10**6))
    with pytest.raises(CorruptFileError) as raised:
        _read(tmp_path, data)
    assert "two different sizes" in str(raised.value)


def test_zip_local_header_must_match_the_directory(tmp_path: Path) -> None:
    genuine = _genuine(tmp_path)
    info = zipfile.ZipFile(__import__("io").BytesIO(genuine)).getinfo("g/data/0")
    renamed = bytearray(genuine)
    renamed[info.header_offset + 30: info.header_offset + 30 + len("g/data/0")] = b"g/data/9"
    with pytest.raises(CorruptFileError) as raised:
        _read(tmp_path, bytes(renamed))
    assert "does not match its local header" in str(raised.value)
    method = bytearray(genuine)
    method[info.header_offset + 8: info.header_offset + 10] = struct.pack("<H", 8)
    with pytest.raises(CorruptFileError) as raised:
        _read(tmp_path, bytes(method))
    assert "local header says compression 8" in str(raised.value)


def test_zip_duplicate_entries(tmp_path: Path) -> None:
    genuine = zipfile.ZipFile(__import__("io").BytesIO(_genuine(tmp_path)))
    entries = [(i.filename, genuine.read(i)) for i in genuine.infolist()]
    buffer = __import__("io").BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning):
        for name, raw in entries + [("g/data.pkl", P.call_pickle("os", "system", ["x"]))]:
            archive.writestr(name, raw)
    with pytest.raises(CorruptFileError) as raised:
        _read(tmp_path, buffer.getvalue())
    assert "appears more than once" in str(raised.value)


@pytest.mark.parametrize("name", ["../evil", "g/../../evil", "/abs/evil", "C:/evil", "g\\..\\..\\evil"])
def test_zip_slip_names(tmp_path: Path, name: str) -> None:
    genuine = zipfile.ZipFile(__import__("io").BytesIO(_genuine(tmp_path)))
    entries = {i.filename: genuine.read(i) for i in genuine.infolist()}
    entries[name] = b"pwned"
    with pytest.raises(CorruptFileError) as raised:
        _read(tmp_path, P.zip_with(entries))
    assert "climbs out" in str(raised.value)
    assert not (tmp_path.parent / "evil").exists()


# ---------------------------------------------------------------- legacy layout


def test_legacy_first_pickle_must_be_the_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "fake.pth"
    path.write_bytes(b"\x80\x03B\x0a\x00\x00\x00" + P.MAGIC_BYTES + b"." + b"\x80\x02N.")
    with pytest.raises(CorruptFileError) as raised:
        api.load(path)
    assert "not torch's magic number" in str(raised.value)


def test_legacy_payload_before_the_magic_number_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.pth"
    path.write_bytes(b"\x80\x02" + P.global_op("os", "system") + b"(X\x0a\x00\x00\x00" + P.MAGIC_BYTES + b"tR.")
    with pytest.raises(UnsafeFileError):
        api.load(path)


def test_legacy_storage_larger_than_the_file(tmp_path: Path) -> None:
    storage = b"(" + P.text("storage", 2) + P.global_op("torch", "FloatStorage") + P.text("0", 2) + P.text("cpu", 2)
    obj = b"\x80\x02" + storage + b"\x8a\x08" + (1 << 50).to_bytes(8, "little") + b"NtQ."
    path = tmp_path / "big.pth"
    path.write_bytes(P.legacy_file(obj, b"\x80\x02]" + P.text("0", 2) + b"a."))
    with pytest.raises(CorruptFileError) as raised:
        api.load(path)
    assert "more than the file holds" in str(raised.value)


def test_legacy_view_outside_its_root(tmp_path: Path) -> None:
    storage = b"(" + P.text("storage", 2) + P.global_op("torch", "FloatStorage") + P.text("0", 2) + P.text("cpu", 2) + b"K\x04"
    view = b"(" + P.text("v", 2) + b"K\x03K\x05t" + b"tQ."
    path = tmp_path / "view.pth"
    path.write_bytes(P.legacy_file(b"\x80\x02" + storage + view, b"\x80\x02]" + P.text("0", 2) + b"a.",
                                   struct.pack("<q", 4) + bytes(16)))
    with pytest.raises(CorruptFileError) as raised:
        api.load(path)
    assert "exceeds its root storage" in str(raised.value)


@pytest.mark.parametrize("position", ["magic", "version"])
def test_legacy_header_values_of_any_type_are_a_clean_error(position: str) -> None:
    """Found by the long fuzz run: a numpy array where torch's magic number or protocol version belongs."""
    import pickle

    import numpy as np

    array = pickle.dumps(np.arange(3), protocol=2)
    magic = b"\x80\x02\x8a\x0a" + P.MAGIC_BYTES + b"."
    head = (magic + array) if position == "version" else (b"\x80\x02\x8a\x0a" + P.MAGIC_BYTES + b"0" + array[2:])
    with pytest.raises(CorruptFileError) as raised:
        nested_loader("n.pth", ReadOptions(), 1)(head + b"\x80\x02}.\x80\x02N.\x80\x02].")
    assert "magic number" in str(raised.value) or "protocol version" in str(raised.value)
