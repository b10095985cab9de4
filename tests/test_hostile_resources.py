"""Issue 15: hostile files cannot exhaust memory, CPU, disk or the terminal, and odd values do not crash.

Each case is built in code and run in a child process (``helpers_resources.run_guarded``) under
RLIMIT_AS (what torch maps + 2 GiB), a 256 MiB file-size cap, a 60 s kill and an audit hook. Each
asserts the exit code, a one-line message, no control character on stdout/stderr, peak memory
under 2 GiB over the baseline, and nothing written outside the destination.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers_resources import Outcome, run_guarded
from ckpt_migrate.bundle.plain import to_plain
from ckpt_migrate.reports.inert import UNSAFE_CHARACTERS, inert_text

GIB = 1 << 30


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(15)
    return {"w": torch.randn(4, 3, generator=generator), "b": torch.randn(4, generator=generator)}


def _check(outcome: Outcome, code: int, fragment: str = "", *, terminal: bool = False) -> None:
    """Exit code, one error line with ``fragment``, inert output, no audit finding, bounded memory and time."""
    detail = f"stdout={outcome.stdout[-1500:]!r} stderr={outcome.stderr[-1500:]!r}"
    assert outcome.code == code, detail
    assert outcome.events == [], outcome.events
    assert outcome.peak_rss < 4 * GIB, outcome.peak_rss
    assert outcome.seconds < 60
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr, detail
    if not terminal:
        for stream in (outcome.stdout, outcome.stderr):
            bad = sorted({c for c in stream if c != "\n" and UNSAFE_CHARACTERS.match(c)})
            assert not bad, f"control characters {bad!r} reached the output: {detail}"
    if code:
        errors = [line for line in outcome.stderr.splitlines() if "ckpt-migrate: error:" in line]
        assert len(errors) >= 1, detail
        assert fragment in errors[-1], detail


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- terminal injection


HOSTILE_NAMES = ["title\x1b]0;PWNED\x07.w", "paint\x1b[5;41m.w", "line\rFAKE-OK.w", "bidi\u202egnp.exe.w", "evil[/x]mod.run", "c1\x9b31m.w"]


def test_inert_text_escapes_controls_bidi_and_markup() -> None:
    assert inert_text("a\x1b]0;T\x07b\rc\u202ed\x9b") == "a\\x1b]0;T\\x07b\\rc\\u202ed\\x9b"
    assert inert_text("evil[/x]mod.run", markup=True) == "evil\\[/x]mod.run"
    assert inert_text(int("1" * 300000, 2)) == "<int of 300000 bits>"
    assert inert_text("plain name.weight") == "plain name.weight"


@pytest.mark.parametrize("command", ["inspect", "scan", "convert"])
def test_hostile_names_never_reach_the_terminal_raw(tmp_path: Path, command: str) -> None:
    src = tmp_path / "names\x1b[2J.pt"
    _save({name: torch.full((2,), float(i)) for i, name in enumerate(HOSTILE_NAMES)}, src)
    out = tmp_path / "out"
    out.mkdir()
    args = {"inspect": ["inspect", str(src), "--limit", "0"], "scan": ["scan", str(src)],
            "convert": ["convert", str(src), str(out / "o.safetensors")]}[command]
    outcome = run_guarded(args, tmp_path, [out])
    _check(outcome, 0)
    if command == "inspect":
        assert "title\\x1b]0;PWNED\\x07.w" in outcome.stdout and "evil[/x]mod.run" in outcome.stdout
    if command == "convert":
        loaded = load_file(str(out / "o.safetensors"))
        assert set(loaded) == set(HOSTILE_NAMES)


def test_hostile_file_names_in_a_dry_run_plan_are_inert(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _save(_weights(), src / "names\x1b[2J\x07.pt")
    outcome = run_guarded(["migrate", str(src), str(tmp_path / "out"), "--to", "safetensors", "--dry-run"], tmp_path, [])
    _check(outcome, 0)
    assert "names\\x1b[2J\\x07.pt" in outcome.stdout and "nothing was written" in outcome.stdout


def test_inspect_json_keeps_names_exact(tmp_path: Path) -> None:
    src = _save({name: torch.zeros(1) for name in HOSTILE_NAMES}, tmp_path / "n.pt")
    outcome = run_guarded(["inspect", str(src), "--json"], tmp_path, [])
    _check(outcome, 0)
    assert [t["name"] for t in json.loads(outcome.stdout)["tensors"]] == HOSTILE_NAMES


def test_migrate_with_markup_in_file_names_on_a_terminal(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for name in ("a.pt", "b.pt", "c.pt"):
        _save(_weights(), src / name)
    (src / "[").mkdir()
    (src / "[" / "oops].pt").write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    outcome = run_guarded(["migrate", str(src), str(dst), "--to", "safetensors"], tmp_path, [dst],
                          env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    _check(outcome, 1, "1 failed", terminal=True)
    assert "MarkupError" not in outcome.stderr
    assert "\x1b]" not in outcome.stdout + outcome.stderr
    for name in ("a", "b", "c"):
        assert torch.equal(load_file(str(dst / f"{name}.safetensors"))["w"], _weights()["w"])


# ---------------------------------------------------------------- shared structures walked as DAGs


def _list_dag(depth: int) -> list:
    node: list = []
    for _ in range(depth):
        node = [node, node]
    return node


def _dict_dag(depth: int) -> dict:
    node: dict = {}
    for _ in range(depth):
        node = {"a": node, "b": node}
    return node


@pytest.mark.parametrize("shape", ["list40", "dict26"])
def test_memo_dag_is_walked_once_by_every_command(tmp_path: Path, shape: str) -> None:
    dag = _list_dag(40) if shape == "list40" else _dict_dag(26)
    src = _save({**_weights(), "dag": dag}, tmp_path / "dag.pt")
    out = tmp_path / "out"
    out.mkdir()
    _check(run_guarded(["convert", str(src), str(out / "o.safetensors")], tmp_path, [out]), 0)
    assert torch.equal(load_file(str(out / "o.safetensors"))["w"], _weights()["w"])
    _check(run_guarded(["convert", str(src), str(out / "o.pt")], tmp_path, [out]), 0)
    loaded = torch.load(out / "o.pt", weights_only=True)
    first, second = (loaded["extra"]["dag"][0], loaded["extra"]["dag"][1]) if shape == "list40" else \
        (loaded["extra"]["dag"]["a"], loaded["extra"]["dag"]["b"])
    assert first is second
    outcome = run_guarded(["inspect", str(src), "--json"], tmp_path, [])
    _check(outcome, 0)
    assert len(outcome.stdout) < 1_000_000
    _check(run_guarded(["inspect", str(src)], tmp_path, []), 0)


def test_weights_dag_expanding_to_billions_of_names_is_one_clear_error(tmp_path: Path) -> None:
    node: list = [torch.ones(2)]
    for _ in range(40):
        node = [node, node]
    src = _save({"model": node}, tmp_path / "names.pt")
    out = tmp_path / "out"
    out.mkdir()
    outcome = run_guarded(["convert", str(src), str(out / "o.safetensors")], tmp_path, [out])
    _check(outcome, 1, "tensor names")
    assert _only(out) == []


def test_shared_strings_keep_inspect_json_small(tmp_path: Path) -> None:
    text = "x" * 20_000
    level = [text] * 50
    for _ in range(3):
        level = [level] * 50
    src = _save({**_weights(), "notes": level}, tmp_path / "strings.pt")
    outcome = run_guarded(["inspect", str(src), "--json"], tmp_path, [])
    _check(outcome, 0)
    assert len(outcome.stdout) < 10_000_000
    assert json.loads(outcome.stdout)["extras"]["notes"][1] == {"ref": "notes.0"}


def test_huge_integer_is_rendered_and_kept(tmp_path: Path) -> None:
    epoch = int("1" * 300000, 2)
    rendered = to_plain({"epoch": epoch, int("1" * 20000, 2): "key"})
    assert int(rendered["epoch"]["int_hex"], 16) == epoch
    assert int(next(k for k in rendered if k != "epoch"), 16) == int("1" * 20000, 2)
    src = _save({**_weights(), "epoch": epoch}, tmp_path / "big.pt")
    out = tmp_path / "out"
    out.mkdir()
    outcome = run_guarded(["inspect", str(src), "--json"], tmp_path, [])
    if outcome.code == 1:
        _check(outcome, 1, "4300 digits")
        return
    _check(outcome, 0)
    assert int(json.loads(outcome.stdout)["extras"]["epoch"]["int_hex"], 16) == epoch
    _check(run_guarded(["inspect", str(src)], tmp_path, []), 0)
    _check(run_guarded(["convert", str(src), str(out / "o.safetensors")], tmp_path, [out]), 0)
    _check(run_guarded(["convert", str(src), str(out / "o.pt")], tmp_path, [out]), 0)
    assert torch.load(out / "o.pt", weights_only=True)["epoch"] == epoch


# ---------------------------------------------------------------- output bounded by the input


def test_zero_stride_view_asking_for_terabytes_is_refused(tmp_path: Path) -> None:
    src = _save({"huge": torch.zeros(1).expand(2**20, 2**20)}, tmp_path / "view.pt")
    out = tmp_path / "out"
    out.mkdir()
    outcome = run_guarded(["convert", str(src), str(out / "o.safetensors")], tmp_path, [out])
    _check(outcome, 1, "--no-output-limit")
    assert _only(out) == []


def test_many_names_tied_to_one_storage_are_refused(tmp_path: Path) -> None:
    base = torch.zeros(256 * 1024)
    src = _save({f"t{i}": base for i in range(30_000)}, tmp_path / "tied.pt")
    assert src.stat().st_size < 8 << 20
    out = tmp_path / "out"
    out.mkdir()
    outcome = run_guarded(["convert", str(src), str(out / "o.safetensors")], tmp_path, [out])
    _check(outcome, 1, "--no-output-limit")
    assert _only(out) == []


def test_output_limit_counts_bytes_and_the_flag_lifts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckpt_migrate.api as api
    import ckpt_migrate.transforms.output_bound as bound
    from ckpt_migrate.errors import LimitExceededError

    monkeypatch.setattr(bound, "OUTPUT_SLACK", 0)
    view = torch.arange(4.0)[None, :].expand(1024, 4)
    src = _save({"v": view, "w": torch.ones(3)}, tmp_path / "v.pt")
    with pytest.raises(LimitExceededError, match="--no-output-limit"):
        api.convert(src, tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()
    api.convert(src, tmp_path / "b.safetensors", output_limit=False)
    assert torch.equal(load_file(str(tmp_path / "b.safetensors"))["v"], view.contiguous())
    held, written = bound.output_estimate(api.load(src).tensors.values())
    assert (held, written) == (4 * 4 + 3 * 4, 1024 * 4 * 4 + 3 * 4)


# ---------------------------------------------------------------- schema regexes


def test_schema_regex_cannot_hang(tmp_path: Path) -> None:
    key = "a" * 34 + "!"
    src = _save({key: torch.ones(2), "w": torch.zeros(2)}, tmp_path / "k.pt")
    out = tmp_path / "out"
    out.mkdir()
    fast = tmp_path / "fast.toml"
    fast.write_text("[[rules]]\ndrop = '^(a+)+$'\n[[rules]]\nrename = { \"w\" = \"v\" }\n")
    _check(run_guarded(["convert", str(src), str(out / "o.safetensors"), "--schema", str(fast)], tmp_path, [out]), 0)
    assert set(load_file(str(out / "o.safetensors"))) == {key, "v"}
    slow = tmp_path / "slow.toml"
    slow.write_text("[[rules]]\nregex = '^(a|a)+$'\nreplace = 'b'\n")
    outcome = run_guarded(["convert", str(src), str(out / "p.safetensors"), "--schema", str(slow)], tmp_path, [out])
    _check(outcome, 1, "catastrophic backtracking")
    assert outcome.seconds < 20
    assert not (out / "p.safetensors").exists()


# ---------------------------------------------------------------- robustness bugs


def test_tensor_named_metadata_is_refused_for_safetensors_and_kept_elsewhere(tmp_path: Path) -> None:
    src = _save({"__metadata__": torch.ones(2), "w": torch.zeros(2)}, tmp_path / "m.pt")
    out = tmp_path / "out"
    out.mkdir()
    _check(run_guarded(["convert", str(src), str(out / "o.safetensors")], tmp_path, [out]), 1, "reserves")
    assert _only(out) == []
    _check(run_guarded(["convert", str(src), str(out / "o.pt")], tmp_path, [out]), 0)
    assert torch.equal(torch.load(out / "o.pt", weights_only=True)["model_state_dict"]["__metadata__"], torch.ones(2))


def test_float8_loss_is_kept_bit_exact(tmp_path: Path) -> None:
    loss = torch.tensor(1.5, dtype=torch.float8_e4m3fn)
    src = _save({"model_state_dict": _weights(), "loss": loss, "epoch": 3}, tmp_path / "f8.pt")
    out = tmp_path / "out"
    out.mkdir()
    _check(run_guarded(["inspect", str(src), "--json"], tmp_path, []), 0)
    _check(run_guarded(["convert", str(src), str(out / "o.safetensors")], tmp_path, [out]), 0)
    _check(run_guarded(["convert", str(src), str(out / "o.pt")], tmp_path, [out]), 0)
    kept = torch.load(out / "o.pt", weights_only=True)["extra"]["loss"]
    assert kept.dtype == torch.float8_e4m3fn and torch.equal(kept.view(torch.uint8), loss.view(torch.uint8))


def _rewrite_data_pkl(path: Path, old: bytes, new: bytes) -> None:
    source = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            raw = source.read(info)
            if info.filename.endswith("/data.pkl"):
                assert raw.count(old) == 1
                raw = raw.replace(old, new)
            target.writestr(zipfile.ZipInfo(info.filename), raw)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("to", ["o.pt", "dcp-out"])
def test_invalid_device_string_in_extras(tmp_path: Path, to: str) -> None:
    src = _save({**_weights(), "device": torch.device("cuda", 7)}, tmp_path / "d.pt")
    _rewrite_data_pkl(src, b"X\x04\x00\x00\x00cuda", b"X\x08\x00\x00\x00cuda:abc")
    _rewrite_data_pkl(src, b"K\x07\x86", b"N\x86")
    out = tmp_path / "out"
    out.mkdir()
    args = ["convert", str(src), str(out / to)] + (["--to", "dcp"] if to == "dcp-out" else [])
    _check(run_guarded(args, tmp_path, [out]), 0)
    if to == "o.pt":
        loaded = torch.load(out / "o.pt", weights_only=True)
        assert loaded["extra"]["device"] == "cuda:abc"
        assert "device" in json.dumps(loaded["meta"]["converted"])


def _flag_encrypted(data: bytes, name: str) -> bytes:
    archive = zipfile.ZipFile(io.BytesIO(data))
    info = archive.getinfo(name)
    out = bytearray(data)
    local = info.header_offset
    assert out[local:local + 4] == b"PK\x03\x04"
    struct.pack_into("<H", out, local + 6, struct.unpack_from("<H", out, local + 6)[0] | 1)
    central = out.find(b"PK\x01\x02" + out[local + 4:local + 6])
    while central >= 0:
        name_len = struct.unpack_from("<H", out, central + 28)[0]
        if out[central + 46:central + 46 + name_len] == name.encode():
            struct.pack_into("<H", out, central + 8, struct.unpack_from("<H", out, central + 8)[0] | 1)
            return bytes(out)
        central = out.find(b"PK\x01\x02", central + 4)
    raise AssertionError("central directory entry not found")


def test_encrypted_storage_entry_is_refused(tmp_path: Path) -> None:
    src = _save(_weights(), tmp_path / "e.pt")
    name = next(n for n in zipfile.ZipFile(src).namelist() if "/data/" in n)
    src.write_bytes(_flag_encrypted(src.read_bytes(), name))
    out = tmp_path / "out"
    out.mkdir()
    _check(run_guarded(["convert", str(src), str(out / "o.safetensors")], tmp_path, [out]), 1, "encrypted")
    assert _only(out) == []
    _check(run_guarded(["inspect", str(src)], tmp_path, []), 1, "encrypted")


def test_safetensors_rank_limit(tmp_path: Path) -> None:
    header = json.dumps({"t": {"dtype": "F32", "shape": [1] * 1_000_000, "data_offsets": [0, 4]}}).encode()
    src = tmp_path / "rank.safetensors"
    src.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 4)
    out = tmp_path / "out"
    out.mkdir()
    _check(run_guarded(["convert", str(src), str(out / "o.safetensors")], tmp_path, [out]), 1, "dimensions")
    _check(run_guarded(["inspect", str(src)], tmp_path, []), 1, "dimensions")


# ---------------------------------------------------------------- DCP metadata and verdicts


def _dcp_folder(tmp_path: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "ckpt.dcp"
    dcp.save({"w": torch.arange(6.0).reshape(2, 3)}, checkpoint_id=str(folder), no_dist=True)
    return folder


def _rewrite_metadata(folder: Path, change: object) -> None:
    import pickle

    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(folder)).read_metadata()
    change(metadata)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata, protocol=2))


def _fqn_as_list(metadata: object) -> None:
    for key in metadata.storage_data:
        object.__setattr__(key, "fqn", [key.fqn])


def _offsets_as_text(metadata: object) -> None:
    for entry in metadata.state_dict_metadata.values():
        for chunk in entry.chunks:
            object.__setattr__(chunk, "offsets", "00")


@pytest.mark.parametrize("change, fragment", [(_fqn_as_list, "not a string"), (_offsets_as_text, "not a list of integers")])
def test_dcp_metadata_of_the_wrong_types(tmp_path: Path, change: object, fragment: str) -> None:
    folder = _dcp_folder(tmp_path)
    _rewrite_metadata(folder, change)
    out = tmp_path / "out"
    out.mkdir()
    _check(run_guarded(["convert", str(folder), str(out / "o.safetensors")], tmp_path, [out]), 1, fragment)
    _check(run_guarded(["inspect", str(folder)], tmp_path, []), 1, fragment)


def test_dcp_item_calling_os_system_is_unsafe_for_every_command(tmp_path: Path) -> None:
    import payloads as P

    folder = _dcp_folder(tmp_path)
    canary = tmp_path / "canary"
    hostile = P.torch_zip(P.call_pickle("os", "system", [f"touch {canary}"]))

    def point_at_payload(metadata: object) -> None:
        info = next(iter(metadata.storage_data.values()))
        target = folder / info.relative_path
        start = target.stat().st_size
        with open(target, "ab") as handle:
            handle.write(hostile)
        object.__setattr__(info, "offset", start)
        object.__setattr__(info, "length", len(hostile))

    _rewrite_metadata(folder, point_at_payload)
    out = tmp_path / "out"
    out.mkdir()
    for args in (["convert", str(folder), str(out / "o.safetensors")], ["scan", str(folder)], ["inspect", str(folder)]):
        outcome = run_guarded(args, tmp_path, [out])
        _check(outcome, 3, "os.system")
    assert not canary.exists() and _only(out) == []


# ---------------------------------------------------------------- temporaries


def test_convert_removes_its_own_stale_temporaries_only(tmp_path: Path) -> None:
    src = _save(_weights(), tmp_path / "s.pt")
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".o.safetensors.ckpt-migrate-tmp-4194999-deadbeef"
    live = out / f".o.safetensors.ckpt-migrate-tmp-{os.getpid()}-cafecafe"
    other = out / ".other.safetensors.ckpt-migrate-tmp-4194999-deadbeef"
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    _check(run_guarded(["convert", str(src), str(out / "o.safetensors")], tmp_path, [out]), 0)
    assert _only(out) == sorted([live.name, other.name, "o.safetensors"])


def test_longest_legal_file_names_convert(tmp_path: Path) -> None:
    src = _save(_weights(), tmp_path / ("s" * 245 + ".pt"))
    out = tmp_path / "out"
    out.mkdir()
    dst = out / ("d" * 236 + ".safetensors")
    assert len(dst.name) == 248
    _check(run_guarded(["convert", str(src), str(dst)], tmp_path, [out]), 0)
    assert _only(out) == [dst.name]
    assert torch.equal(load_file(str(dst))["w"], _weights()["w"])


def test_dcp_items_aliasing_one_region_count_it_once(tmp_path: Path) -> None:
    """64 DCP items pointing at one 16 MB region: the output bound is relative to the 16 MB the folder holds."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import MetadataIndex

    folder = tmp_path / "aliased.dcp"
    dcp.save({"w": torch.zeros(4 << 20)}, checkpoint_id=str(folder), no_dist=True)

    def alias(metadata: object) -> None:
        (key, item), = list(metadata.storage_data.items())
        for index in range(80):
            metadata.state_dict_metadata[f"w{index}"] = metadata.state_dict_metadata["w"]
            metadata.storage_data[MetadataIndex(f"w{index}", key.offset, key.index)] = item

    _rewrite_metadata(folder, alias)
    out = tmp_path / "out"
    out.mkdir()
    _check(run_guarded(["convert", str(folder), str(out / "o.safetensors")], tmp_path, [out]), 1, "--no-output-limit")
    assert list(out.iterdir()) == []


def test_training_args_json_renders_a_shared_structure_once() -> None:
    from ckpt_migrate.bundle.trainer_files import inert_json

    chain: list = [1, 2]
    for _ in range(60):
        chain = [chain, chain]
    rendered = json.dumps(inert_json({"args": chain}))
    assert len(rendered) < 10_000 and '"ref"' in rendered
