"""DeepSpeed ZeRO checkpoints: consolidated bit for bit like DeepSpeed's own tool, without DeepSpeed or pickle.

The folders under ``fixtures/deepspeed/`` were written by ``engine.save_checkpoint`` (deepspeed
0.19.8 on CPU, 2 ranks, ``fixtures/make_deepspeed.py``); each holds ``reference_fp32.safetensors``,
what DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` returned for it (key order in the
``order`` metadata), and for stages 1-2 ``reference_module.safetensors``, rank 0's module
state_dict. When deepspeed is installed, one test also runs DeepSpeed's function live.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ckpt_migrate.api as api
from ckpt_migrate.converters.readers.deepspeed import consolidate, locate
from ckpt_migrate.errors import CorruptFileError, SelectionError
from tests.conftest import ROOT, run_cli

FIXTURES = ROOT / "fixtures" / "deepspeed"
CASES = ["zero1-fp32", "zero1-bf16", "zero2-fp32", "zero2-bf16", "zero3-fp32", "zero3-bf16"]
FROZEN = ["frozen.weight", "frozen.bias"]


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8) if tensor.numel() else tensor.reshape(-1)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def reference(case: str, which: str = "fp32") -> tuple[list[str], dict[str, torch.Tensor]]:
    path = FIXTURES / case / f"reference_{which}.safetensors"
    with safe_open(str(path), "pt") as handle:
        order = json.loads(handle.metadata()["order"])
    return order, load_file(str(path))


def check_against_reference(case: str, tensors: dict[str, torch.Tensor], ordered: bool = True) -> None:
    """Every tensor DeepSpeed gives (in its order unless the format sorts keys), bit for bit; ZeRO-1's frozen parameters (DeepSpeed drops them) from the module."""
    order, ref = reference(case)
    common = [k for k in tensors if k in ref]
    assert common == order if ordered else sorted(common) == sorted(order)
    for name in order:
        assert same(tensors[name], ref[name]), name
    extra = sorted(k for k in tensors if k not in ref)
    if case.startswith("zero1"):
        assert extra == sorted(FROZEN)
        _, module = reference(case, "module")
        for name in extra:
            assert same(tensors[name], module[name]), name
    else:
        assert extra == []
        assert set(FROZEN) <= set(order)


@pytest.mark.parametrize("case", CASES)
def test_consolidated_like_deepspeed_bit_for_bit(case: str) -> None:
    checkpoint = api.load(FIXTURES / case)
    assert checkpoint.format == "deepspeed"
    tensors = {name: ref.materialize() for name, ref in checkpoint.tensors.items()}
    check_against_reference(case, tensors)
    assert tensors["embed.weight"].dtype == torch.float32
    assert torch.equal(tensors["head.weight"], tensors["embed.weight"])
    info = checkpoint.meta["deepspeed"]
    assert info["zero_stage"] == int(case[4]) and info["world_size"] == 2 and info["global_steps"] == 3
    assert info["training_dtype"] == ("bfloat16" if "bf16" in case else "float32")


@pytest.mark.parametrize("case", ["zero2-bf16", "zero3-fp32"])
def test_tag_folder_reads_the_same(case: str) -> None:
    top = consolidate(str(FIXTURES / case))
    tag = consolidate(str(FIXTURES / case / "global_step3"))
    assert list(top) == list(tag)
    for name in top:
        assert same(top[name].materialize(), tag[name].materialize())


def test_zero3_parameters_are_stitched_from_both_ranks() -> None:
    tensors = consolidate(str(FIXTURES / "zero3-fp32"))
    pieces = tensors["embed.weight"].storage.source.pieces
    assert [os.path.basename(p.name) for p in pieces] == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert sum(p.length for p in pieces) == 37 * 12 * 4


@pytest.mark.parametrize("case", ["zero1-bf16", "zero2-fp32"])
def test_module_weights(case: str) -> None:
    order, ref = reference(case, "module")
    tensors = consolidate(str(FIXTURES / case), weights="module")
    assert list(tensors) == order
    for name in order:
        assert same(tensors[name].materialize(), ref[name]), name
    if "bf16" in case:
        assert tensors["proj.weight"].dtype.name == "bfloat16"


def test_module_weights_of_zero3_refused() -> None:
    with pytest.raises(SelectionError, match="placeholders"):
        consolidate(str(FIXTURES / "zero3-bf16"), weights="module")


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (fixture-only dependency)")
def test_live_deepspeed_agrees(tmp_path: Path) -> None:
    script = (
        "import sys, json\n"
        "from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint\n"
        "from safetensors.torch import save_file\n"
        "for case in sys.argv[2:]:\n"
        "    sd = get_fp32_state_dict_from_zero_checkpoint(sys.argv[1] + '/' + case)\n"
        "    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, sys.argv[1] + '/../out-' + case + '.safetensors',\n"
        "              metadata={'order': json.dumps(list(sd))})\n"
    )
    work = tmp_path / "in"
    shutil.copytree(FIXTURES, work)
    subprocess.run([sys.executable, "-c", script, str(work), *CASES], check=True, capture_output=True,
                   env={**os.environ, "DS_ACCELERATOR": "cpu"}, timeout=600)
    for case in CASES:
        with safe_open(str(tmp_path / f"out-{case}.safetensors"), "pt") as handle:
            order = json.loads(handle.metadata()["order"])
        live = load_file(str(tmp_path / f"out-{case}.safetensors"))
        ours = consolidate(str(FIXTURES / case))
        assert [k for k in ours if k in live] == order
        for name in order:
            assert same(ours[name].materialize(), live[name]), (case, name)


@pytest.mark.parametrize("case", ["zero1-fp32", "zero3-bf16"])
def test_convert_to_safetensors_streams(case: str, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = run_cli("convert", str(FIXTURES / case), str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True and report["details"]["path"] == "stream"
    check_against_reference(case, load_file(str(out)), ordered=False)


def test_convert_every_writer(tmp_path: Path) -> None:
    case = "zero2-bf16"
    order, ref = reference(case)
    normalized = tmp_path / "resume.pt"
    assert run_cli("convert", str(FIXTURES / case), str(normalized)).returncode == 0
    loaded = torch.load(normalized, weights_only=True)
    check_against_reference(case, loaded["model_state_dict"])
    assert loaded["epoch"] == 2
    assert "optimizer_state_dict" not in loaded and "partitions" in loaded["meta"]["left_out"]["optimizer state"]
    dcp_out = tmp_path / "dcp"
    result = run_cli("convert", str(FIXTURES / case), str(dcp_out), "--to", "dcp")
    assert result.returncode == 0, result.stderr
    back = api.load(dcp_out)
    check_against_reference(case, {k: v.materialize() for k, v in back.tensors.items()})
    shards = tmp_path / "shards"
    result = run_cli("convert", str(FIXTURES / case), str(shards), "--max-shard-size", "1KB")
    assert result.returncode == 0, result.stderr
    index = json.loads((shards / "model.safetensors.index.json").read_text())
    merged: dict[str, torch.Tensor] = {}
    for name in sorted(set(index["weight_map"].values())):
        merged.update(load_file(str(shards / name)))
    assert len(set(index["weight_map"].values())) > 1
    check_against_reference(case, merged, ordered=False)


def test_inspect_folder_shows_the_layout() -> None:
    result = run_cli("inspect", str(FIXTURES / "zero3-bf16"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    info = report["meta"]["deepspeed"]
    assert (info["zero_stage"], info["world_size"], info["global_steps"], info["training_dtype"]) == (3, 2, 3, "bfloat16")
    assert info["files"]["optim_states"] == ["bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert info["weights"].startswith("master")
    assert report["format"] == "deepspeed" and len(report["tensors"]) == 10


@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_zero3_rank_file_is_not_weights(command: str, tmp_path: Path) -> None:
    rank_file = FIXTURES / "zero3-fp32" / "global_step3" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    out = tmp_path / "placeholders.safetensors"
    args = [command, str(rank_file)] + ([str(out)] if command == "convert" else [])
    result = run_cli(*args)
    assert result.returncode == 1
    assert "partitioned" in result.stderr and "checkpoint folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_rank_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "zero2-fp32", folder)
    os.remove(folder / "global_step3" / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    result = run_cli("convert", str(folder), str(tmp_path / "out.safetensors"))
    assert result.returncode == 1
    assert "saved by 2 ranks" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_latest_cannot_climb_out(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "zero1-fp32", folder)
    (folder / "latest").write_text("../../etc")
    with pytest.raises(CorruptFileError, match="latest"):
        locate(str(folder))


def test_never_unpickles_nor_imports_deepspeed(tmp_path: Path) -> None:
    script = (
        "import pickle, sys, torch\n"
        "def refuse(*a, **k): raise AssertionError('unpickling called')\n"
        "pickle.load = pickle.loads = torch.load = refuse\n"
        "import ckpt_migrate.api as api\n"
        "api.convert(sys.argv[1], sys.argv[2])\n"
        "assert not any(m == 'deepspeed' or m.startswith('deepspeed.') for m in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for case in ("zero1-bf16", "zero3-fp32"):
        out = tmp_path / f"{case}.safetensors"
        subprocess.run([sys.executable, "-c", script, str(FIXTURES / case), str(out)], check=True, env=env, timeout=300)
        check_against_reference(case, load_file(str(out)), ordered=False)


def test_migrate_takes_a_deepspeed_folder_as_one_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "zero3-fp32", src / "runs" / "ds3")
    shutil.copytree(FIXTURES / "zero1-bf16", src / "ds1")
    result = run_cli("migrate", str(src), str(tmp_path / "dst"), "--to", "safetensors")
    assert result.returncode == 0, result.stderr
    outputs = sorted(p.relative_to(tmp_path / "dst").as_posix() for p in (tmp_path / "dst").rglob("*.safetensors"))
    assert outputs == ["ds1.safetensors", "runs/ds3.safetensors"]
    check_against_reference("zero3-fp32", load_file(str(tmp_path / "dst" / "runs" / "ds3.safetensors")), ordered=False)
    check_against_reference("zero1-bf16", load_file(str(tmp_path / "dst" / "ds1.safetensors")), ordered=False)


def test_cli_weights_module_and_inspect_say_so(tmp_path: Path) -> None:
    out = tmp_path / "module.safetensors"
    result = run_cli("convert", str(FIXTURES / "zero2-bf16"), str(out), "--weights", "module")
    assert result.returncode == 0, result.stderr
    _, ref = reference("zero2-bf16", "module")
    got = load_file(str(out))
    assert sorted(got) == sorted(ref) and all(same(got[k], ref[k]) for k in ref)
    shown = run_cli("inspect", str(FIXTURES / "zero2-bf16"), "--weights", "module")
    assert shown.returncode == 0, shown.stderr
    assert "ZeRO-2, 2 ranks, step 3, bfloat16 training" in shown.stdout
    assert "weights: module: the module's own weights" in shown.stdout
    refused = run_cli("convert", str(FIXTURES / "zero3-bf16"), str(tmp_path / "z3.safetensors"), "--weights", "module")
    assert refused.returncode == 1 and "placeholders" in refused.stderr
    assert not (tmp_path / "z3.safetensors").exists()


def write_zero_folder(state: dict[str, torch.Tensor], folder: Path, ranks: int = 2, buffers: tuple[str, ...] = ("steps",)) -> Path:
    """A ZeRO-2 checkpoint folder in DeepSpeed's layout, written by hand (plain dicts; no DeepSpeed needed).

    Parameters (every non-buffer of ``state``, in order) are one flat fp32 vector padded to a multiple of
    ``2 * ranks`` and split evenly across ``ranks`` optimizer files, as DeepSpeed's ZeRO-2 saves them.
    """
    params = [k for k in state if k not in buffers]
    flat = torch.cat([state[k].reshape(-1).float() for k in params])
    padded = 2 * ranks * -(-flat.numel() // (2 * ranks))
    flat = torch.cat([flat, torch.zeros(padded - flat.numel())])
    tag = folder / "global_step7"
    tag.mkdir(parents=True)
    (folder / "latest").write_text("global_step7")
    torch.save({"module": dict(state), "buffer_names": list(buffers), "param_shapes": [{k: state[k].shape for k in params}],
                "frozen_param_shapes": None, "shared_params": {}, "frozen_param_fragments": None, "ds_version": "0.19.8",
                "global_steps": 7}, tag / "mp_rank_00_model_states.pt")
    for rank, part in enumerate(flat.chunk(ranks)):
        torch.save({"optimizer_state_dict": {"zero_stage": 2, "partition_count": [ranks],
                                             "single_partition_of_fp32_groups": [part.clone()]}},
                   tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    return folder


def test_any_world_size_hand_written_layout(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    state = {"a.weight": torch.randn(5, 7, generator=generator), "a.bias": torch.randn(5, generator=generator),
             "b.weight": torch.randn(11, generator=generator), "steps": torch.tensor(9)}
    folder = write_zero_folder(state, tmp_path / "ckpt", ranks=3)
    got = consolidate(str(folder))
    assert list(got) == ["steps", "a.weight", "a.bias", "b.weight"]
    for name, tensor in state.items():
        assert same(got[name].materialize(), tensor), name
    assert len(got["a.bias"].storage.source.pieces) == 2


def test_deepspeed_folder_beside_config_json_becomes_the_model_folders_weights(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "zero2-fp32", src / "my-model" / "checkpoint")
    (src / "my-model" / "config.json").write_text('{"model_type": "tiny"}\n')
    result = run_cli("migrate", str(src), str(tmp_path / "dst"), "--to", "safetensors")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "dst" / "my-model"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert (out / "config.json").read_text() == '{"model_type": "tiny"}\n'
    check_against_reference("zero2-fp32", load_file(str(out / "model.safetensors")), ordered=False)
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert handle.metadata()["format"] == "pt"


def test_tag_chooses_another_step(tmp_path: Path) -> None:
    top = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "zero2-fp32", top)
    shutil.copytree(FIXTURES / "zero2-bf16" / "global_step3", top / "global_step9")
    latest, tagged = tmp_path / "latest.safetensors", tmp_path / "tagged.safetensors"
    assert run_cli("convert", str(top), str(latest)).returncode == 0
    result = run_cli("convert", str(top), str(tagged), "--tag", "global_step9")
    assert result.returncode == 0, result.stderr
    check_against_reference("zero2-fp32", load_file(str(latest)), ordered=False)
    check_against_reference("zero2-bf16", load_file(str(tagged)), ordered=False)
    wrong = run_cli("convert", str(top), str(tmp_path / "x.safetensors"), "--tag", "global_step7")
    assert wrong.returncode == 2 and "global_step3, global_step9" in wrong.stderr
    src = tmp_path / "tree"
    shutil.copytree(top, src / "ds")
    torch.save({"w": torch.ones(2)}, src / "plain.pt")
    migrated = run_cli("migrate", str(src), str(tmp_path / "out"), "--to", "safetensors", "--tag", "global_step9")
    assert migrated.returncode == 0, migrated.stderr
    check_against_reference("zero2-bf16", load_file(str(tmp_path / "out" / "ds.safetensors")), ordered=False)
    assert torch.equal(load_file(str(tmp_path / "out" / "plain.safetensors"))["w"], torch.ones(2))


def test_inspect_tag(tmp_path: Path) -> None:
    top = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "zero2-fp32", top)
    shutil.copytree(FIXTURES / "zero3-bf16" / "global_step3", top / "global_step9")
    shown = run_cli("inspect", str(top), "--tag", "global_step9")
    assert shown.returncode == 0, shown.stderr
    assert "ZeRO-3, 2 ranks" in shown.stdout
