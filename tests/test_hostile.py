"""Hostile and malformed files: refused with a reason, never executed, never a crash; benign look-alikes open.

Every hostile file would leave a trace if its payload ran: a canary file created, a victim file or
folder deleted, a process started. Each is run through ``convert``, ``inspect`` and ``scan`` in one
child process under ``sys.addaudithook`` (see ``payloads.harness_main``), which records any command
run, process started, file opened for writing or removed, code compiled from a string, or payload
module imported.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import random
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file

import payloads as P
import ckpt_migrate.api as api
from ckpt_migrate.errors import CkptMigrateError, CorruptFileError, UnsafeFileError
from ckpt_migrate.reports.scan import scan

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    """One file and what every command must say about it."""

    id: str
    path: Path
    code: int
    expect: str


@dataclass
class Corpus:
    base: Path
    out: Path
    canary: Path
    victim: Path
    victim_dir: Path
    cases: dict[str, Case]
    digests: dict[str, str]
    results: dict[str, dict]


def _genuine_zip(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _genuine_legacy(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def _safetensors_bytes() -> bytes:
    buffer = io.BytesIO()
    from safetensors.torch import save

    buffer.write(save({"a": torch.arange(4, dtype=torch.float32), "b": torch.ones(2, 2)}))
    return buffer.getvalue()


def _with_header(header: dict | bytes, data: bytes, declared: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else __import__("json").dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


def _hostile_files(canary: Path, victim: Path, victim_dir: Path, script: Path) -> dict[str, tuple[bytes, str]]:
    """id -> (file bytes, refused global)."""
    files: dict[str, tuple[bytes, str]] = {}
    for payload in P.direct_calls(canary, victim, victim_dir, script) + P.encodings(canary):
        files[f"pickle-{payload.id}"] = (payload.data, payload.refused)
    genuine = _genuine_zip({"w": torch.ones(2)})
    touch = f"touch {canary}"
    for payload in P.direct_calls(canary, victim, victim_dir, script) + P.encodings(canary):
        if payload.id in ("os.system", "builtins.eval", "subprocess.Popen", "runpy.run_path", "shutil.rmtree", "protocol-4",
                          "stack-global-from-memo", "inst", "newobj-ex", "dotted-reexport", "__builtin__-eval"):
            files[f"zip-{payload.id}"] = (P.replace_data_pkl(genuine, payload.data), payload.refused)
        if payload.id in ("os.system", "builtins.exec", "subprocess.Popen", "protocol-0", "obj"):
            files[f"legacy-{payload.id}"] = (P.legacy_file(payload.data), payload.refused)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    bundle = {"state_dict": model.state_dict(), "epoch": 3, "extra": {"note": P.Marker()}}
    files["bundle-value-zip"] = (P.inject_into_zip(_genuine_zip(bundle), "os", "system", touch), "os.system")
    files["bundle-value-legacy"] = (P.inject(_genuine_legacy(bundle), "subprocess", "getoutput", touch), "subprocess.getoutput")
    model.evil = P.Marker()
    files["model-attribute-zip"] = (P.inject_into_zip(_genuine_zip(model), "builtins", "exec", f"open({str(canary)!r},'w')"), "builtins.exec")
    files["model-attribute-legacy"] = (P.inject(_genuine_legacy(model), "os", "system", touch), "os.system")
    nested_zip = P.torch_zip(P.call_pickle("os", "system", [touch]))
    files["nested-zip-payload"] = (P.load_from_bytes_pickle(nested_zip), "os.system")
    files["nested-in-legacy"] = (P.legacy_file(P.load_from_bytes_pickle(P.call_pickle("posix", "system", [touch]))), "posix.system")
    semantic = b"\x80\x02" + P.call("numpy", "dtype", ["not-a-dtype"]) + b"0" + P.call("os", "system", [touch]) + b"."
    files["payload-after-malformed-value"] = (semantic, "os.system")
    return files


def _malformed_files(genuine: bytes) -> dict[str, tuple[bytes, str]]:
    """id -> (file bytes, a fragment the one-line error must contain)."""
    rng = random.Random(1234)
    st = _safetensors_bytes()
    length = struct.unpack("<Q", st[:8])[0]
    header = __import__("json").loads(st[8: 8 + length])
    data = st[8 + length:]

    def lie(**changes: object) -> dict:
        out = __import__("json").loads(__import__("json").dumps(header))
        for key, value in changes.items():
            out["a"][key] = value
        return out

    lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 44739242\n"
    storage_pid = b"(" + P.text("storage", 2) + P.global_op("torch", "FloatStorage") + P.text("0", 2) + P.text("cpu", 2)
    huge_legacy = P.legacy_file(b"\x80\x02" + storage_pid + b"\x8a\x08" + (1 << 50).to_bytes(8, "little") + b"NtQ.",
                                b"\x80\x02]" + P.text("0", 2) + b"a.")
    slip = zipfile.ZipFile(io.BytesIO(genuine))
    entries = {i.filename: slip.read(i) for i in slip.infolist()}
    deep_list = b"\x80\x02]q\x00" + b"".join(
        b"]r" + (i + 1).to_bytes(4, "little") + b"j" + i.to_bytes(4, "little") + b"j" + (i + 1).to_bytes(4, "little") + b"a0"
        for i in range(2000)) + b"h\x00."
    deep_key = b"\x80\x02}" + b")" + b"\x85" * 100_000 + b"Ns."
    return {
        "truncated-zip": (genuine[: len(genuine) // 2], "truncated"),
        "random-bytes": (rng.randbytes(4096), "unrecognised"),
        "empty-file": (b"", "empty"),
        "git-lfs-pointer": (lfs, "Git LFS pointer"),
        "safetensors-length-lies": (_with_header(header, data, declared=len(st) * 4), "header declares"),
        "safetensors-offsets-lie": (_with_header(lie(data_offsets=[0, len(data) + 64]), data), "offsets"),
        "safetensors-overlap": (_with_header(lie(data_offsets=[0, 16]) | {"b": {**header["b"], "data_offsets": [8, 24]}}, data), "overlaps"),
        "safetensors-dtype-lies": (_with_header(lie(dtype="F99"), data), "unknown dtype"),
        "safetensors-shape-lies": (_with_header(lie(shape=[5]), data), "needs"),
        "safetensors-json-lies": (_with_header(b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]', data), "not valid JSON"),
        "safetensors-duplicate-key": (_with_header(b'{"a": {"dtype":"F32","shape":[4],"data_offsets":[0,16]}, "a": {"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', data[:16]), "twice"),
        "shape-larger-than-storage": (P.torch_zip(P.tensor_pickle([100], [1]), {"0": bytes(16)}), "storage holds 4"),
        "stride-overflow": (P.torch_zip(P.tensor_pickle([2, 2], [1 << 62, 1 << 62]), {"0": bytes(16)}), "storage holds 4"),
        "offset-out-of-range": (P.torch_zip(P.tensor_pickle([4], [1], offset=1 << 40), {"0": bytes(16)}), "storage holds 4"),
        "zip-slip-dotdot": (P.zip_with({**entries, "../escaped.txt": b"pwned"}), "climbs out"),
        "zip-slip-nested": (P.zip_with({**entries, "archive/../../escaped.txt": b"pwned"}), "climbs out"),
        "zip-slip-absolute": (P.zip_with({**entries, "/tmp/escaped.txt": b"pwned"}), "climbs out"),
        "huge-legacy-storage": (huge_legacy, "more than the file holds"),
        "huge-zip-storage": (P.torch_zip(P.tensor_pickle([4], [1], numel=1 << 40), {"0": bytes(16)}), "holds 16 bytes"),
        "huge-bytes-call": (P.call_pickle("builtins", "bytes", [1 << 40]), "would allocate"),
        "huge-binbytes8": (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"abc.", "declares"),
        "huge-numpy-array": (b"\x80\x02" + P.global_op("numpy.core.multiarray", "_reconstruct") + b"(" + P.global_op("numpy", "ndarray")
                             + b"K\x00\x85" + P.text("b", 2) + b"tR" + b"(K\x01" + b"(\x8a\x05" + (10**12).to_bytes(5, "little") + b"t"
                             + P.call("numpy", "dtype", ["f8"]) + b"\x89" + P.text("abc", 2) + b"tb.", "needs"),
        "nesting-too-deep": (deep_list, "nested more than"),
        "deep-tuple-key": (deep_key, "tuples nested more than"),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    base = tmp_path_factory.mktemp("hostile")
    canary = base / "canary"
    victim = base / "victim.txt"
    victim.write_text("keep me")
    victim_dir = base / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "inside.txt").write_text("keep me too")
    script = base / "script.py"
    script.write_text(f"open({str(canary)!r}, 'w').close()\n")
    files = base / "files"
    files.mkdir()
    out = base / "out"
    out.mkdir()
    cases: dict[str, Case] = {}
    for case_id, (data, refused) in _hostile_files(canary, victim, victim_dir, script).items():
        path = files / f"{case_id}.pth"
        path.write_bytes(data)
        cases[case_id] = Case(case_id, path, 3, refused)
    for case_id, (data, fragment) in _malformed_files(_genuine_zip({"w": torch.ones(4)})).items():
        path = files / f"{case_id}.pth"
        path.write_bytes(data)
        cases[case_id] = Case(case_id, path, 1, fragment)
    digests = {cid: hashlib.sha256(c.path.read_bytes()).hexdigest() for cid, c in cases.items()}
    benign = base / "benign.pth"
    torch.save({"w": torch.ones(2)}, benign)
    warm = str(base / "warm.safetensors")
    sample_refused, sample_bad = cases["pickle-os.system"].path, cases["truncated-zip"].path
    warmup = [["convert", str(benign), warm], ["inspect", str(benign)], ["scan", str(benign)]]
    for sample in (sample_refused, sample_bad):
        warmup += [["convert", str(sample), str(base / "never.safetensors")], ["inspect", str(sample)], ["scan", str(sample)]]
    jobs = []
    for case in cases.values():
        jobs.append({"id": f"convert:{case.id}", "args": ["convert", str(case.path), str(out / f"{case.id}.safetensors")]})
        jobs.append({"id": f"inspect:{case.id}", "args": ["inspect", str(case.path)]})
        jobs.append({"id": f"scan:{case.id}", "args": ["scan", str(case.path)]})
    results = P.run_audited(jobs, warmup, base)
    return Corpus(base, out, canary, victim, victim_dir, cases, digests, results)


HOSTILE_IDS = sorted(_hostile_files(Path("c"), Path("v"), Path("d"), Path("s")))
MALFORMED_IDS = sorted(_malformed_files(_genuine_zip({"w": torch.ones(4)})))


@pytest.mark.parametrize("command", ["convert", "inspect", "scan"])
@pytest.mark.parametrize("case_id", HOSTILE_IDS)
def test_hostile_file_is_refused_with_exit_3(corpus: Corpus, case_id: str, command: str) -> None:
    case = corpus.cases[case_id]
    result = corpus.results[f"{command}:{case_id}"]
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 3, result["stderr"]
    assert len(lines) == 1, result["stderr"]
    assert str(case.path) in lines[0] and case.expect in lines[0] and "refused" in lines[0]
    assert "Traceback" not in result["stderr"] + result["stdout"]
    assert result["events"] == []
    assert not (corpus.out / f"{case_id}.safetensors").exists()


@pytest.mark.parametrize("command", ["convert", "inspect", "scan"])
@pytest.mark.parametrize("case_id", MALFORMED_IDS)
def test_malformed_file_fails_with_exit_1_and_one_line(corpus: Corpus, case_id: str, command: str) -> None:
    case = corpus.cases[case_id]
    result = corpus.results[f"{command}:{case_id}"]
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 1, result["stderr"]
    assert len(lines) == 1, result["stderr"]
    assert str(case.path) in lines[0] and case.expect in lines[0], lines[0]
    assert "Traceback" not in result["stderr"] + result["stdout"]
    assert "internal error" not in lines[0]
    assert result["events"] == []


def test_no_payload_left_a_trace(corpus: Corpus) -> None:
    assert not corpus.canary.exists()
    assert corpus.victim.read_text() == "keep me"
    assert (corpus.victim_dir / "inside.txt").read_text() == "keep me too"
    assert list(corpus.out.iterdir()) == []
    assert not (corpus.base / "never.safetensors").exists()
    assert not list(corpus.base.rglob("escaped.txt")) and not Path("/tmp/escaped.txt").exists()
    for case_id, case in corpus.cases.items():
        assert hashlib.sha256(case.path.read_bytes()).hexdigest() == corpus.digests[case_id], f"{case_id} was modified"


def test_warm_up_convert_wrote_its_output(corpus: Corpus) -> None:
    """The harness really runs commands: the benign warm-up conversion exists and is right."""
    assert torch.equal(load_file(str(corpus.base / "warm.safetensors"))["w"], torch.ones(2))


def _refused_by_every_entry_point(path: Path) -> tuple[set[str], set[str], set[str]]:
    found = scan([str(path)]).files[0]
    scanned = {g.name for g in found.refused}
    try:
        report = api.inspect(path)
        inspected = {g["name"] for g in report.globals if g["verdict"] == "refused"}
    except UnsafeFileError as error:
        inspected = set(error.refused)
    try:
        api.load(path)
        loaded: set[str] = set()
    except UnsafeFileError as error:
        loaded = set(error.refused)
    return scanned, inspected, loaded


@pytest.mark.parametrize("case_id", HOSTILE_IDS)
def test_scan_inspect_and_convert_agree(corpus: Corpus, case_id: str) -> None:
    case = corpus.cases[case_id]
    scanned, inspected, loaded = _refused_by_every_entry_point(case.path)
    assert case.expect in scanned
    assert scanned == inspected == loaded


# ---------------------------------------------------------------- benign look-alikes


def _convert_bit_exact(src: Path, dst: Path, expected: dict[str, torch.Tensor]) -> api.ConvertResult:
    result = api.convert(src, dst)
    written = load_file(str(dst))
    assert set(written) == set(expected)
    for name, tensor in expected.items():
        assert written[name].dtype == tensor.dtype and torch.equal(written[name], tensor), name
    return result


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def test_numpy_values_open(tmp_path: Path) -> None:
    model, _, _ = _model_and_optimizer()
    src = tmp_path / "np.pth"
    torch.save({"state_dict": model.state_dict(), "mean": np.arange(6, dtype=np.float32).reshape(2, 3),
                "best": np.float64(0.25), "steps": np.int64(7), "kind": np.dtype("int16"), "be": np.arange(3, dtype=">i4")}, src)
    checkpoint = api.load(src)
    assert checkpoint.kind == "bundle"
    np.testing.assert_array_equal(checkpoint.extras["mean"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert checkpoint.extras["best"] == 0.25 and checkpoint.extras["steps"] == 7
    assert checkpoint.extras["kind"] == np.dtype("int16")
    np.testing.assert_array_equal(checkpoint.extras["be"], np.arange(3))
    globals_ = {g.name for g in checkpoint.globals}
    assert {"_codecs.encode", "numpy.dtype"} <= globals_ and any(n.endswith("multiarray._reconstruct") for n in globals_)
    _convert_bit_exact(src, tmp_path / "np.safetensors", model.state_dict())


def test_namespace_defaultdict_deque_counter_open(tmp_path: Path) -> None:
    model, _, _ = _model_and_optimizer()
    src = tmp_path / "misc.pth"
    history = collections.defaultdict(list, {"loss": [1.0, 0.5]})
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1, arch="mlp"), "history": history,
                "recent": collections.deque([1, 2, 3], maxlen=5), "counts": collections.Counter("aab")}, src)
    extras = api.load(src).extras
    assert vars(extras["args"]) == {"lr": 0.1, "arch": "mlp"}
    assert extras["history"] == {"loss": [1.0, 0.5]} and extras["history"].default_factory is list
    assert list(extras["recent"]) == [1, 2, 3] and extras["recent"].maxlen == 5
    assert extras["counts"] == {"a": 2, "b": 1}
    assert scan([str(src)]).files[0].verdict == "clean"


def test_whole_optimizer_and_scheduler_objects_open(tmp_path: Path) -> None:
    model, optimizer, scheduler = _model_and_optimizer()
    src = tmp_path / "train.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer, "scheduler": scheduler, "epoch": 4}, src)
    checkpoint = api.load(src)
    assert checkpoint.kind == "bundle"
    assert checkpoint.extras["optimizer"].class_name == "torch.optim.sgd.SGD"
    assert checkpoint.extras["scheduler"].class_name == "torch.optim.lr_scheduler.StepLR"
    assert {g.verdict for g in checkpoint.globals} <= {"allowed", "stub"}
    _convert_bit_exact(src, tmp_path / "train.safetensors", model.state_dict())


def test_torchvision_full_model_opens(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(weights=None, num_classes=10)
    src = tmp_path / "squeezenet.pth"
    torch.save(model, src)
    checkpoint = api.load(src)
    assert checkpoint.kind == "full_model"
    assert "torchvision.models.squeezenet.SqueezeNet" in checkpoint.meta["classes"]
    _convert_bit_exact(src, tmp_path / "squeezenet.safetensors", model.state_dict())


def test_main_module_full_model_opens(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, 2)\n"
        "        self.register_buffer('scale', torch.arange(3.0))\n"
        "        self.register_buffer('tmp', torch.zeros(1), persistent=False)\n"
        "torch.manual_seed(0)\n"
        "net = Net()\n"
        "torch.save(net, sys.argv[1])\n"
        "torch.save(net.state_dict(), sys.argv[2])\n")
    full, reference = tmp_path / "net.pth", tmp_path / "ref.pth"
    subprocess.run([sys.executable, str(script), str(full), str(reference)], check=True, capture_output=True)
    checkpoint = api.load(full)
    assert checkpoint.kind == "full_model" and checkpoint.meta["classes"][0] == "__main__.Net"
    expected = torch.load(reference, weights_only=True)
    _convert_bit_exact(full, tmp_path / "net.safetensors", expected)


def test_benign_nested_load_from_bytes_opens(tmp_path: Path) -> None:
    import pickle

    tensor = torch.arange(5, dtype=torch.float64)
    src = tmp_path / "plain.pkl"
    src.write_bytes(pickle.dumps({"t": tensor}, protocol=2))
    checkpoint = api.load(src)
    assert checkpoint.format == "pickle"
    assert torch.equal(checkpoint.tensors["t"].materialize(), tensor)
    assert "torch.storage._load_from_bytes" in {g.name for g in checkpoint.globals}


def test_unknown_call_is_an_inert_record_and_strict_calls_refuses_it(tmp_path: Path) -> None:
    model, _, _ = _model_and_optimizer()
    src = tmp_path / "enum.pth"
    torch.save({"state_dict": model.state_dict(), "mode": P.Mode.TRAIN}, src)
    checkpoint = api.load(src)
    record = checkpoint.extras["mode"]
    assert record.func.dotted == "payloads.Mode" and record.args == (1,)
    verdict = next(g for g in checkpoint.globals if g.name == "payloads.Mode")
    assert verdict.verdict == "unknown-call" and "inert record" in verdict.reason
    assert any("payloads.Mode" in w and "never executed" in w for w in checkpoint.meta["warnings"])
    with pytest.raises(UnsafeFileError) as refused:
        api.load(src, strict_calls=True)
    assert refused.value.refused == ["payloads.Mode"]
    assert "--allow-call payloads.Mode would accept it" in str(refused.value)
    checkpoint = api.load(src, allow_calls=["payloads.Mode"], strict_calls=True)
    verdict = next(g for g in checkpoint.globals if g.name == "payloads.Mode")
    assert verdict.verdict == "allowed" and "--allow-call" in verdict.reason
    result = api.convert(src, tmp_path / "enum.safetensors", allow_calls=["payloads.Mode"], strict_calls=True)
    assert result.report.verified
    assert torch.equal(load_file(str(tmp_path / "enum.safetensors"))["2.bias"], model.state_dict()["2.bias"])


def test_allow_call_never_accepts_a_gadget(tmp_path: Path) -> None:
    src = tmp_path / "gadget.pkl"
    src.write_bytes(P.call_pickle("os", "system", ["true"]))
    with pytest.raises(UnsafeFileError) as refused:
        api.load(src, allow_calls=["os.system"])
    message = str(refused.value)
    assert "never allowed, not even with --allow-call" in message and "))" not in message
    assert "--allow-call was given for it and was ignored" in message


def test_cli_unknown_calls_strict_calls_and_allow_call(tmp_path: Path) -> None:
    model, _, _ = _model_and_optimizer()
    src = tmp_path / "enum.pth"
    torch.save({"state_dict": model.state_dict(), "mode": P.Mode.EVAL}, src)
    gadget = tmp_path / "gadget.pkl"
    gadget.write_bytes(P.call_pickle("os", "system", ["true"]))
    jobs = [
        {"id": "default", "args": ["convert", str(src), str(tmp_path / "a.safetensors")]},
        {"id": "strict", "args": ["convert", str(src), str(tmp_path / "s.safetensors"), "--strict-calls"]},
        {"id": "allowed", "args": ["convert", str(src), str(tmp_path / "b.safetensors"), "--strict-calls", "--allow-call", "payloads.Mode"]},
        {"id": "gadget", "args": ["convert", str(gadget), str(tmp_path / "c.safetensors"), "--allow-call", "os.system"]},
        {"id": "scan", "args": ["scan", str(src)]},
        {"id": "scan-strict", "args": ["scan", str(src), "--strict-calls"]},
        {"id": "scan-allowed", "args": ["scan", str(src), "--strict-calls", "--allow-call", "payloads.Mode"]},
        {"id": "inspect", "args": ["inspect", str(src)]},
        {"id": "inspect-strict", "args": ["inspect", str(src), "--strict-calls"]},
    ]
    results = P.run_audited(jobs, [], tmp_path)
    assert results["default"]["code"] == 0, results["default"]["stderr"]
    assert "warning:" in results["default"]["stdout"] + results["default"]["stderr"]
    assert "payloads.Mode" in results["default"]["stdout"] + results["default"]["stderr"]
    assert torch.equal(load_file(str(tmp_path / "a.safetensors"))["0.weight"], model.state_dict()["0.weight"])
    assert results["strict"]["code"] == 3 and "--allow-call payloads.Mode would accept it" in results["strict"]["stderr"]
    assert len(results["strict"]["stderr"].strip().splitlines()) == 1
    assert not (tmp_path / "s.safetensors").exists()
    assert results["allowed"]["code"] == 0, results["allowed"]["stderr"]
    assert any(e.startswith("open for writing") and "b.safetensors" in e for e in results["allowed"]["events"]), "the audit hook sees writes"
    assert torch.equal(load_file(str(tmp_path / "b.safetensors"))["0.weight"], model.state_dict()["0.weight"])
    assert results["gadget"]["code"] == 3 and "ignored" in results["gadget"]["stderr"]
    assert not (tmp_path / "c.safetensors").exists()
    assert results["scan"]["code"] == 0 and "unknown-calls" in results["scan"]["stdout"]
    assert [line for line in results["scan"]["stderr"].splitlines() if "payloads.Mode" in line and "warning:" in line]
    assert results["scan-strict"]["code"] == 3 and "payloads.Mode" in results["scan-strict"]["stderr"]
    assert results["scan-allowed"]["code"] == 0
    assert results["inspect"]["code"] == 0 and "payloads.Mode" in results["inspect"]["stderr"]
    assert results["inspect-strict"]["code"] == 3
    assert results["gadget"]["events"] == []


def test_corrupt_file_error_names_the_reason_not_a_traceback(tmp_path: Path) -> None:
    src = tmp_path / "bad.pkl"
    src.write_bytes(b"\x80\x02" + P.call("numpy", "dtype", ["not-a-dtype"]) + b".")
    with pytest.raises(CorruptFileError) as error:
        api.load(src)
    assert "not-a-dtype" in str(error.value) and str(src) in str(error.value)
    assert isinstance(error.value, CkptMigrateError)


def test_audit_classifier_flags_what_a_payload_would_do() -> None:
    compiled = compile("x = 1", "<string>", "exec")
    assert P._suspicious("os.system", (b"touch x",), set())
    assert P._suspicious("subprocess.Popen", ("touch", ["touch", "x"], None, None), set())
    assert P._suspicious("open", ("/tmp/x", "w", 0), set())
    assert P._suspicious("open", ("/tmp/x", None, 0o1101), set())
    assert P._suspicious("exec", (compiled,), set())
    assert P._suspicious("import", ("runpy", None, [], [], []), {"runpy"})
    assert P._suspicious("open", ("/tmp/x", "rb", 0), set()) is None
    assert P._suspicious("import", ("json", None, [], [], []), {"runpy"}) is None


def test_names_from_a_file_are_never_read_as_terminal_markup(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ckpt_migrate.commands.inspect_ import command as inspect_command
    from ckpt_migrate.commands.scan import command as scan_command

    stub = tmp_path / "[red]stub.pkl"
    stub.write_bytes(b"\x80\x04" + P.stack_global("mod", "Thing[/red]") + b")\x81.")
    evil = tmp_path / "evil[bold].pkl"
    evil.write_bytes(P.call_pickle("os", "system[/]", ["x"], 4, "STACK_GLOBAL"))
    runner = CliRunner()
    shown = runner.invoke(inspect_command, [str(stub)])
    assert shown.exit_code == 0 and "mod.Thing[/red]" in shown.output and "[red]stub.pkl" in shown.output
    scanned = runner.invoke(scan_command, [str(tmp_path)])
    assert scanned.exit_code == 3, scanned.output
    assert "internal error" not in scanned.output + scanned.stderr
    assert "os.system[/]" in scanned.stdout and "evil[bold].pkl" in scanned.stdout
