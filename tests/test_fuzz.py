"""Bounded fuzzing (hypothesis, fixed seed) of the interpreter, the readers' in-memory paths and the safetensors header.

The property everywhere: hostile bytes end in a value or in one of our own errors
(:class:`~ckpt_migrate.errors.CkptMigrateError`), never in any other exception, a crash or a hang.
Successful results also go through ``extract`` and ``to_plain``, which every command runs next.
``fuzz/fuzz_interpreter.py`` runs the same targets for much longer.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import payloads as P
from ckpt_migrate.converters.base import ReadOptions
from ckpt_migrate.converters.readers.safetensors_file import parse_header
from ckpt_migrate.converters.readers.torch_legacy import nested_loader
from ckpt_migrate.errors import CkptMigrateError
from ckpt_migrate.bundle.extract import extract
from ckpt_migrate.bundle.plain import to_plain
from ckpt_migrate.unpickler import interpret
from ckpt_migrate.unpickler.static import looks_like_pickle, walk

SEEDS = P.fuzz_seeds()
BUDGET = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
SLOW = 5.0


def only_our_errors(target: Callable[[], Any]) -> Any:
    """Run ``target``; our own errors are fine, anything else fails the test; so does taking longer than SLOW seconds."""
    start = time.monotonic()
    try:
        return target()
    except CkptMigrateError:
        return None
    finally:
        assert time.monotonic() - start < SLOW, "hang: one small input took more than 5 s"


def consume(value: Any) -> None:
    """What every command does with a result next: choose the weights, render extras as plain data."""
    only_our_errors(lambda: extract(value))
    only_our_errors(lambda: json.dumps(to_plain(value), default=str))


def interpret_and_consume(data: bytes) -> None:
    result = only_our_errors(lambda: interpret(data, path="fuzz.pkl", policy=None))
    if result is not None:
        consume(result.value)
    walked = walk(data)
    assert walked.end <= len(data)
    looks_like_pickle(data[:4096])


def nested(data: bytes) -> None:
    found = only_our_errors(lambda: nested_loader("fuzz.pth", ReadOptions(), 1)(data))
    if found is not None:
        consume(found.value)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few random edits: flipped, replaced, inserted or deleted bytes, a truncation, a splice."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "byte", "insert", "delete", "truncate", "splice", "opcode"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos: pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, max(len(other) - 1, 0)))
            data[pos:pos] = other[start: start + draw(st.integers(1, 64))]
        elif kind == "opcode":
            data[pos:pos] = draw(st.sampled_from(SNIPPETS))
    return bytes(data)


SNIPPETS = [
    b"N", b"K\x05", b"J\xff\xff\xff\xff", b"X\x01\x00\x00\x00a", b"\x8c\x01b", b"C\x02ab", b"(", b"t", b"l", b"d", b"}",
    b"]", b")", b"a", b"e", b"s", b"u", b"0", b"1", b"2", b"h\x00", b"h\x01", b"q\x00", b"q\x01", b"\x94", b"\x93", b"R",
    b"b", b"\x81", b"\x92", b"\x85", b"\x86", b"\x87", b"\x8f", b"\x90", b"\x91", b"Q", b"\x88", b"\x89", b"G" + bytes(8),
    b"\x8a\x09" + b"\xff" * 9, b"cos\nsystem\n", b"ccollections\nOrderedDict\n", b"ccollections\ndefaultdict\n",
    b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_parameter\n", b"ctorch\nFloatStorage\n",
    b"cnumpy\ndtype\n", b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", b"c__builtin__\nset\n",
    b"c__builtin__\nfrozenset\n", b"c__builtin__\nbytes\n", b"c__builtin__\nslice\n", b"c_codecs\nencode\n",
    b"ccopy_reg\n_reconstructor\n", b"ccopyreg\n__newobj__\n", b"cargparse\nNamespace\n", b"ctorch\nSize\n",
    b"ctorch.storage\n_load_from_bytes\n", b"cmylib\nThing\n", b"i__main__\nNet\n", b"o", b"\x82\x01", b"\x95" + bytes(8),
    b"\x80\x02", b"\x80\x04", b"I01\n", b"F1.5\n", b"S'x'\n", b"Vx\n", b"\x8e" + struct.pack("<Q", 3) + b"abc",
    b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ",
]


@st.composite
def opcode_soup(draw: st.DrawFn) -> bytes:
    """A pickle assembled from plausible opcodes with arguments, in random order."""
    parts = draw(st.lists(st.sampled_from(SNIPPETS), min_size=1, max_size=40))
    return draw(st.sampled_from([b"", b"\x80\x02", b"\x80\x04"])) + b"".join(parts) + b"."


@BUDGET
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    interpret_and_consume(data)


@BUDGET
@given(mutated(SEEDS["pickle"]))
def test_mutated_pickles(data: bytes) -> None:
    interpret_and_consume(data)


@BUDGET
@given(opcode_soup())
def test_opcode_soup(data: bytes) -> None:
    interpret_and_consume(data)


@settings(BUDGET, max_examples=250)
@given(mutated(SEEDS["legacy"]))
def test_mutated_legacy_files(data: bytes) -> None:
    nested(data)


@settings(BUDGET, max_examples=250)
@given(mutated(SEEDS["zip"]))
def test_mutated_zip_archives(data: bytes) -> None:
    nested(data)


@settings(BUDGET, max_examples=250)
@given(mutated(SEEDS["data_pkl"]))
def test_mutated_data_pkl_inside_a_real_archive(data_pkl: bytes) -> None:
    nested(P.torch_zip(data_pkl, {str(i): bytes(64) for i in range(4)}))


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True),
                         st.text(max_size=8), st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X"]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=12)
ENTRY = st.fixed_dictionaries({}, optional={
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "I64", "U8", "BOOL", "F64", "???"]), JSON_VALUES),
    "shape": st.one_of(st.lists(st.integers(-2, 1 << 40), max_size=4), JSON_VALUES),
    "data_offsets": st.one_of(st.lists(st.integers(-8, 256), min_size=2, max_size=2), JSON_VALUES),
})
HEADERS = st.dictionaries(st.one_of(st.text(max_size=6), st.just("__metadata__")), st.one_of(ENTRY, JSON_VALUES), max_size=5)


@BUDGET
@given(HEADERS, st.integers(0, 300), st.integers(-16, 16), st.binary(max_size=8))
def test_safetensors_headers(header: dict, data_size: int, length_skew: int, tail: bytes) -> None:
    raw = json.dumps(header).encode() + tail
    blob = struct.pack("<Q", max(len(raw) + length_skew, 0)) + raw + bytes(data_size)
    only_our_errors(lambda: parse_header(blob, len(blob), "fuzz.safetensors"))


@BUDGET
@given(mutated(SEEDS["safetensors"]))
def test_mutated_safetensors_files(data: bytes) -> None:
    only_our_errors(lambda: parse_header(data, len(data), "fuzz.safetensors"))


def test_seeds_cover_every_kind() -> None:
    assert all(len(SEEDS[kind]) >= 3 for kind in ("pickle", "legacy", "zip", "data_pkl", "safetensors"))
    for seed in SEEDS["legacy"] + SEEDS["zip"]:
        assert nested_loader("seed", ReadOptions(), 1)(seed).value is not None
