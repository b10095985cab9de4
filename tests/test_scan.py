"""``ckpt-migrate scan``: per-file format, every global with its verdict and offset, exit codes 0/1/3."""

from __future__ import annotations

import csv
import json
import os
import pickletools
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import payloads as P
from conftest import CORPUS, corpus_mark
import ckpt_migrate.api as api
from ckpt_migrate.commands.scan import command as scan_command
from ckpt_migrate.errors import CkptMigrateError, SelectionError, UnsafeFileError
from ckpt_migrate.reports.scan import scan, scan_file

ROOT = Path(__file__).resolve().parent.parent
REALWORLD = CORPUS


def _opcode_offsets(data: bytes, name: str) -> list[int]:
    """Where opcode ``name`` occurs, read statically with pickletools (nothing is unpickled)."""
    return [pos for op, _, pos in pickletools.genops(data) if op.name == name]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """clean.pth, evil.pkl (os.system), sub/bad.pth (truncated zip), notes.txt, sub/deeper/model.safetensors."""
    torch.manual_seed(0)
    torch.save({"w": torch.randn(3)}, tmp_path / "clean.pth")
    (tmp_path / "evil.pkl").write_bytes(P.call_pickle("os", "system", ["true"]))
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    genuine = (tmp_path / "clean.pth").read_bytes()
    (tmp_path / "sub" / "bad.pth").write_bytes(genuine[: len(genuine) // 2])
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    save_file({"a": torch.zeros(2)}, str(tmp_path / "sub" / "deeper" / "model.safetensors"))
    return tmp_path


def test_folder_scan_gives_every_file_a_verdict(folder: Path) -> None:
    report = scan([str(folder)])
    verdicts = {Path(f.path).relative_to(folder).as_posix(): f.verdict for f in report.files}
    assert verdicts == {"clean.pth": "clean", "evil.pkl": "unsafe", "notes.txt": "skipped",
                        "sub/bad.pth": "error", "sub/deeper/model.safetensors": "clean"}
    assert report.exit_code == 3
    formats = {Path(f.path).name: f.format for f in report.files}
    assert formats["clean.pth"] == "torch-zip" and formats["evil.pkl"] == "pickle" and formats["model.safetensors"] == "safetensors"
    bad = next(f for f in report.files if f.path.endswith("bad.pth"))
    assert "truncated" in bad.error


@pytest.mark.parametrize(("names", "code", "problems"), [
    (["clean.pth", "sub/deeper/model.safetensors"], 0, []),
    (["clean.pth", "sub/bad.pth"], 1, ["bad.pth"]),
    (["evil.pkl", "sub/bad.pth"], 3, ["evil.pkl", "bad.pth"]),
    (["notes.txt"], 1, ["notes.txt"]),
])
def test_exit_codes(folder: Path, names: list[str], code: int, problems: list[str]) -> None:
    paths = [str(folder / n) for n in names]
    assert scan(paths).exit_code == code
    result = CliRunner().invoke(scan_command, paths)
    assert result.exit_code == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == (1 if problems else 0)
    for name in problems:
        assert lines[0].startswith("ckpt-migrate: error: ") and name in lines[0]


def test_json_output_is_one_document_and_one_stderr_line_names_each_problem(folder: Path) -> None:
    result = CliRunner().invoke(scan_command, [str(folder), "--json"])
    assert result.exit_code == 3
    document = json.loads(result.stdout)
    assert document["summary"] == {"files": 5, "clean": 2, "unknown-calls": 0, "unsafe": 1, "error": 1, "skipped": 1}
    assert document["exit_code"] == 3
    evil = next(f for f in document["files"] if f["path"].endswith("evil.pkl"))
    assert evil["refused"] == ["os.system"] and evil["counts"] == {"allowed": 0, "stub": 0, "unknown-call": 0, "refused": 1}
    entry = evil["globals"][0]
    assert entry["name"] == "os.system" and entry["verdict"] == "refused" and entry["offset"] == 2
    assert "never allowed" in entry["reason"]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "1 unsafe (" in lines[0] and "evil.pkl" in lines[0] and "1 unreadable (" in lines[0] and "bad.pth" in lines[0]
    assert lines[0].endswith("of 5 files; the reasons are in the JSON document")


def test_human_output_is_a_table_with_the_refused_globals(folder: Path) -> None:
    result = CliRunner().invoke(scan_command, [str(folder / "evil.pkl"), str(folder / "clean.pth")])
    assert result.exit_code == 3
    assert "refused in" in result.stdout and "os.system" in result.stdout
    assert "2 file(s): 1 clean, 0 with unknown calls, 1 unsafe, 0 unreadable, 0 skipped" in result.stdout


def test_offsets_are_where_the_opcode_is(tmp_path: Path) -> None:
    cases = {
        "global": (P.call_pickle("os", "system", ["x"], 2), "GLOBAL", "os.system"),
        "memo": (P.call_pickle("os", "system", ["x"], 4, "MEMO"), "STACK_GLOBAL", "os.system"),
        "builtin": (P.call_pickle("__builtin__", "eval", ["1"], 2), "GLOBAL", "builtins.eval"),
        "inst": (P.pickle_of(P.call("subprocess", "getoutput", ["x"], 0, "INST"), 0), "INST", "subprocess.getoutput"),
    }
    for name, (data, opcode, dotted) in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(data)
        found = scan_file(str(path))
        entry = next(g for g in found.globals if g.name == dotted)
        assert entry.verdict == "refused"
        assert entry.offset == _opcode_offsets(data, opcode)[0], name


def test_every_global_of_a_full_model_with_its_verdict(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    path = tmp_path / "model.pth"
    torch.save(model, path)
    found = scan_file(str(path))
    verdicts = {g.name: g.verdict for g in found.globals}
    assert verdicts["torch.nn.modules.container.Sequential"] == "stub"
    assert verdicts["torch.nn.modules.linear.Linear"] == "stub"
    assert verdicts["torch._utils._rebuild_tensor_v2"] == "allowed"
    assert verdicts["collections.OrderedDict"] == "allowed"
    assert found.verdict == "clean" and all(g.where == "model/data.pkl" for g in found.globals)


def test_nested_payload_is_reported_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "nested.pkl"
    inner = P.legacy_file(P.call_pickle("os", "system", ["x"]))
    data = P.load_from_bytes_pickle(inner)
    path.write_bytes(data)
    found = scan_file(str(path))
    entry = next(g for g in found.globals if g.name == "os.system")
    assert entry.verdict == "refused" and entry.where.startswith("nested pickle at byte")
    assert found.verdict == "unsafe"


def test_global_past_a_malformed_value_is_still_found(tmp_path: Path) -> None:
    data = b"\x80\x02" + P.call("numpy", "dtype", ["not-a-dtype"]) + b"0" + P.call("os", "system", ["x"]) + b"."
    path = tmp_path / "tail.pkl"
    path.write_bytes(data)
    found = scan_file(str(path))
    entry = next(g for g in found.globals if g.name == "os.system")
    assert entry.verdict == "refused" and "past the malformed byte" in entry.where
    assert entry.offset == _opcode_offsets(data, "GLOBAL")[1]
    assert found.verdict == "unsafe" and "not-a-dtype" in found.message
    with pytest.raises(UnsafeFileError):
        api.load(path)


def test_pickles_no_reader_runs_are_noted_not_judged(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "real.pth")
    source = zipfile.ZipFile(tmp_path / "real.pth")
    entries = {i.filename: source.read(i) for i in source.infolist()}
    entries["real/extra/side.pkl"] = P.call_pickle("os", "system", ["x"])
    path = tmp_path / "side.pth"
    path.write_bytes(P.zip_with(entries))
    found = scan_file(str(path))
    assert found.verdict == "clean"
    assert any("real/extra/side.pkl is never read" in note and "os.system (refused)" in note for note in found.notes)
    assert torch.equal(api.load(path).tensors["w"].materialize(), torch.ones(2))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    found = scan_file(str(path))
    assert found.format == "torchscript" and found.verdict == "clean"
    assert any("TorchScript" in note for note in found.notes)


def test_scan_never_imports_torch_or_runs_pickle(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "a.pth")
    torch.save({"w": torch.ones(2)}, tmp_path / "b.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "c.pkl").write_bytes(P.call_pickle("os", "system", ["x"]))
    code = ("import sys\n"
            "events = []\n"
            "sys.addaudithook(lambda e, a: events.append(e) if e == 'pickle.find_class' else None)\n"
            "from ckpt_migrate.reports.scan import scan\n"
            f"report = scan([{str(tmp_path)!r}])\n"
            "print([f.verdict for f in report.files], 'torch' in sys.modules, 'pickle' in sys.modules and 'pickle.find_class' in events)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.strip() == "['clean', 'clean', 'unsafe'] False False"


def test_scan_help() -> None:
    result = CliRunner().invoke(scan_command, ["--help"])
    assert result.exit_code == 0 and "--allow-call" in result.output and "--json" in result.output


def test_missing_path_is_unreadable(tmp_path: Path) -> None:
    report = scan([str(tmp_path / "nope.pth")])
    assert report.exit_code == 1 and "no such file" in report.files[0].error


@corpus_mark(REALWORLD)
def test_realworld_corpus_scans_and_still_converts(tmp_path: Path) -> None:
    """No real file crashes the scan; every checkpoint of a weights kind is clean and still converts."""
    with open(REALWORLD / "manifest.tsv", newline="") as handle:
        manifest = {row["file"]: row for row in csv.DictReader(handle, delimiter="\t")}
    report = scan([str(REALWORLD / "files")])
    verdicts = {Path(f.path).name: f for f in report.files}
    assert set(verdicts) == set(manifest)
    for name, found in sorted(verdicts.items()):
        print(f"{name}: {found.format} {found.verdict} {json.dumps(found.counts())}")
    assert {f.verdict for f in report.files} <= {"clean", "error"}
    assert [n for n, f in verdicts.items() if f.verdict == "error"] == ["045_checkpoint.pth.tar"]
    assert not any(g.found_by == "static" for f in report.files for g in f.globals)
    for name, row in manifest.items():
        if row["kind"] not in ("full_model", "state_dict", "bundle", "lightning"):
            continue
        src = REALWORLD / "files" / name
        try:
            try:
                result = api.convert(src, tmp_path / f"{name}.safetensors")
            except SelectionError as error:
                sets = re.search(r"several weight sets in one file \(([^)]*)\)", error.message)
                if not sets:
                    raise
                result = api.convert(src, tmp_path / f"{name}.safetensors", select=sets.group(1).split(", ")[0])
        except CkptMigrateError as error:
            pytest.fail(f"{name} ({row['kind']}) no longer converts: {error}")
        assert result.report.verified and result.report.tensors > 0
        assert len(load_file(str(tmp_path / f"{name}.safetensors"))) == result.report.tensors
