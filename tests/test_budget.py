"""Issue 15 (interpreter side): one resource budget per input file, shared by every pickle it holds.

Each hostile file is built in code and run through ``convert``, ``inspect`` and ``scan`` in a child
process under ``RLIMIT_AS`` = 2 GiB and a 60 s wall-clock kill: each must end with exit 1 and one
clear line naming the limit, write nothing, and print no control character.
"""

from __future__ import annotations

import re
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import payloads as P
from ckpt_migrate.errors import LimitExceededError
from ckpt_migrate.unpickler import Limits, interpret
from ckpt_migrate.unpickler.budget import Budget

ROOT = Path(__file__).resolve().parent.parent
MEMORY = 2 << 30
WALL = 60
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _memo(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def _get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


def bytearrays(count: int = 80) -> bytes:
    """``[bytearray(2**26)] * count`` as separate calls: 5 GiB from a few hundred bytes."""
    one = P.global_op("builtins", "bytearray") + b"(J" + struct.pack("<i", 1 << 26) + b"tR"
    return b"\x80\x02(" + one * count + b"l."


def numpy_from_one_buffer(count: int = 400) -> bytes:
    """``count`` numpy arrays rebuilt from one memoised 8 MiB buffer."""
    buffer = b"B" + struct.pack("<I", 8 << 20) + bytes(8 << 20) + _memo(0) + b"0"
    dtype = P.global_op("numpy", "dtype") + b"(" + P.text("f8", 2) + b"tR" + _memo(1) + b"0"
    array = (P.global_op("numpy.core.multiarray", "_reconstruct") + b"(" + P.global_op("numpy", "ndarray")
             + b"(K\x00tC\x01btR" + b"(K\x01(J" + struct.pack("<i", 1 << 20) + b"t" + _get(1) + b"\x89" + _get(0) + b"tb")
    return b"\x80\x03" + buffer + dtype + b"(" + array * count + b"l."


def sets_of_a_big_list(count: int = 300) -> bytes:
    """``set(L)`` of one memoised 10**6-item list, ``count`` times."""
    items = b"]" + _memo(0) + b"(" + b"K\x01" * 1_000_000 + b"e0"
    return b"\x80\x02" + items + b"(" + (P.global_op("builtins", "set") + b"(" + _get(0) + b"tR") * count + b"l."


def colliding_complex_keys(count: int = 20_000) -> bytes:
    """Dict keys ``complex(1000003*k, -k)``: all hash to the same value."""
    keys = b"".join(P.global_op("builtins", "complex") + b"(" + P.value(1000003 * k, 2) + P.value(-k, 2) + b"tRN"
                    for k in range(1, count))
    return b"\x80\x02}(" + keys + b"u."


def fanned_out_payloads(fan: int = 40, levels: int = 4) -> bytes:
    """``_load_from_bytes`` of a legacy stream whose object does the same, ``fan`` ways over ``levels`` levels."""
    leaf = P.legacy_file(b"\x80\x02(" + b"K\x01" * 200_000 + b"l.")
    payload = leaf
    for _ in range(levels):
        inner = (b"\x80\x02B" + struct.pack("<I", len(payload)) + payload + _memo(0) + b"0("
                 + (P.global_op("torch.storage", "_load_from_bytes") + b"(" + _get(0) + b"tR") * fan + b"l.")
        payload = P.legacy_file(inner)
    return payload


def deflated_storages(count: int = 3, mib: int = 300) -> bytes:
    """A few-MB torch zip whose ``count`` storages are deflated entries of ``mib`` MiB each, inside the expansion-ratio limit."""
    import io
    import zipfile

    numel = (mib << 20) // 4
    tensors = b""
    for key in range(count):
        storage = (b"(" + P.text("storage", 2) + P.global_op("torch", "FloatStorage") + P.text(str(key), 2)
                   + P.text("cpu", 2) + P.value(numel, 2) + b"tQ")
        tensors += (P.text(f"w{key}", 2) + P.global_op("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + P.value(0, 2)
                    + b"(" + P.value(numel, 2) + b"t(K\x01t\x89" + P.global_op("collections", "OrderedDict") + b")RtR")
    data_pkl = b"\x80\x02}(" + tensors + b"u."
    import random

    buffer = io.BytesIO()
    noise = random.Random(0)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", b"little")
        for key in range(count):
            with archive.open(f"archive/data/{key}", "w", force_zip64=True) as entry:
                for _ in range(mib):
                    entry.write(noise.randbytes(2048) + bytes((1 << 20) - 2048))
        archive.writestr("archive/version", b"3\n")
    return buffer.getvalue()


CASES = {
    "deflated-storages": (deflated_storages, "would allocate more than"),
    "bytearrays": (bytearrays, "would allocate more than"),
    "numpy-one-buffer": (numpy_from_one_buffer, "would allocate more than"),
    "sets-of-a-big-list": (sets_of_a_big_list, "per file"),
    "complex-collisions": (colliding_complex_keys, "share a hash"),
    "fanned-out-payloads": (fanned_out_payloads, "opcodes"),
}


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _run(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ckpt_migrate", *args], capture_output=True, text=True, cwd=cwd,
                          preexec_fn=_limit_memory, timeout=WALL, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return proc, time.monotonic() - start


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_stops_at_its_budget(tmp_path: Path, case: str) -> None:
    build, fragment = CASES[case]
    src = tmp_path / f"{case}.pt"
    src.write_bytes(build())
    assert src.stat().st_size < 20 << 20
    out = tmp_path / "out"
    out.mkdir()
    for args in (["convert", str(src), str(out / "x.safetensors")], ["inspect", str(src)], ["scan", str(src)]):
        proc, elapsed = _run(args, tmp_path)
        assert proc.returncode == 1, (args[0], proc.returncode, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and src.name in lines[0], (args[0], lines)
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
        assert not CONTROL.search(proc.stdout + proc.stderr)
        assert elapsed < WALL
    assert list(out.iterdir()) == []


def test_budget_is_shared_by_nested_payloads() -> None:
    """Each nested payload alone fits the opcode limit; together they do not."""
    leaf = P.legacy_file(b"\x80\x02(" + b"K\x01" * 1000 + b"l.")
    outer = (b"\x80\x02B" + struct.pack("<I", len(leaf)) + leaf + _memo(0) + b"0("
             + (P.global_op("torch.storage", "_load_from_bytes") + b"(" + _get(0) + b"tR") * 20 + b"l.")
    from ckpt_migrate.converters.readers.torch_legacy import nested_loader
    from ckpt_migrate.converters.base import ReadOptions

    limits = Limits(max_opcodes=30_000, opcodes_per_input_byte=0)
    options = ReadOptions(limits=limits, budget=Budget(limits))
    with pytest.raises(LimitExceededError, match="opcodes"):
        interpret(outer, path="fan.pkl", limits=limits, budget=options.budget, load_nested=nested_loader("fan.pkl", options, 1))
    result = interpret(outer, path="fan.pkl", load_nested=nested_loader("fan.pkl", ReadOptions(), 1))
    assert len(result.value) == 20 and all(v == [1] * 1000 for v in result.value)


def test_real_sized_structures_fit_the_defaults() -> None:
    """A pickle of a numpy array, a big set and float keys opens with the default limits."""
    import pickle

    data = pickle.dumps({"blob": np.arange(1 << 20, dtype=np.float32), "ids": set(range(200_000)),
                         "lrs": {0.1 * i: i for i in range(5000)}}, protocol=2)
    value = interpret(data, path="ok.pkl").value
    assert np.array_equal(value["blob"], np.arange(1 << 20, dtype=np.float32)) and len(value["ids"]) == 200_000
    assert len(value["lrs"]) == 5000
