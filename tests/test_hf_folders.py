"""Hugging Face model folders and Trainer folders migrate into folders that transformers and torch load.

Folders are built in code as transformers 4.x wrote them (``helpers_hf``); the migrated folder is
checked file by file, loaded with ``from_pretrained`` (no missing or unexpected keys, every tensor
bit-identical), and a training loop resumed from the migrated Trainer state matches one resumed
from the original.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy
import pytest
import torch
from safetensors import safe_open

from ckpt_migrate.api import convert
from ckpt_migrate.batch import migrate

sys.path.insert(0, str(Path(__file__).parent))
import helpers_hf as hf  # noqa: E402

transformers = pytest.importorskip("transformers")


def load_pretrained(cls: type, folder: Path) -> tuple[torch.nn.Module, dict]:
    model, info = cls.from_pretrained(str(folder), output_loading_info=True)
    return model, info


def assert_loads_exactly(cls: type, folder: Path, expected: dict[str, torch.Tensor]) -> None:
    model, info = load_pretrained(cls, folder)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys"), info
    state = model.state_dict()
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def files_of(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".ckpt-migrate")}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_gpt2_folder_becomes_model_safetensors_and_loads(tmp_path: Path, legacy: bool) -> None:
    src, dst = tmp_path / "gpt2", tmp_path / "out"
    expected = hf.save_bin_folder(hf.gpt2(), src, legacy=legacy)
    carried = hf.write_carried(src)
    report = migrate(src, dst, to="safetensors")
    assert report.exit_code == 0, [f.to_json() for f in report.files]
    assert files_of(dst) == {"config.json", "model.safetensors", *carried}
    for name, data in {**carried, "config.json": (src / "config.json").read_bytes()}.items():
        assert (dst / name).read_bytes() == data, name
    with safe_open(str(dst / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
        assert handle.metadata()["format"] == "pt"
        assert handle.metadata()["lm_head.weight"] == "transformer.wte.weight"
    assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys
    assert_loads_exactly(transformers.GPT2LMHeadModel, dst, expected)
    statuses = {f.source: f.status for f in report.files}
    assert statuses["pytorch_model.bin"] == "converted" and statuses["README.md"] == "copied"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_t5_shards_and_index_become_safetensors_shards_with_a_correct_index(tmp_path: Path, legacy: bool) -> None:
    src, dst = tmp_path / "t5", tmp_path / "out"
    expected, source_index = hf.save_bin_shards(hf.t5(), src, max_shard_size=4000, legacy=legacy)
    count = len(set(source_index["weight_map"].values()))
    report = migrate(src, dst, to="safetensors")
    assert report.exit_code == 0, [f.to_json() for f in report.files]
    shards = [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]
    assert files_of(dst) == {"config.json", "model.safetensors.index.json", *shards}
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    sizes = 0
    placed = {}
    for shard in shards:
        with safe_open(str(dst / shard), "pt") as handle:
            assert handle.metadata()["format"] == "pt"
            for key in handle.keys():
                placed[key] = shard
                tensor = handle.get_tensor(key)
                sizes += tensor.numel() * tensor.element_size()
    assert index["weight_map"] == placed
    assert index["metadata"]["total_size"] == sizes
    assert "shared.weight" in placed
    assert not {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"} & set(placed)
    assert_loads_exactly(transformers.T5ForConditionalGeneration, dst, expected)
    by_source = {f.source: f for f in report.files}
    assert by_source["pytorch_model.bin.index.json"].status == "converted"
    assert all(by_source[name].action == "member" and by_source[name].status == "converted" for name in source_index["weight_map"].values())


def test_convert_accepts_a_bin_index_or_a_folder_of_shards(tmp_path: Path) -> None:
    src = tmp_path / "gpt2"
    expected, index = hf.save_bin_shards(hf.gpt2(), src, max_shard_size=6000)
    for source, out in ((src / "pytorch_model.bin.index.json", tmp_path / "from_index"), (src, tmp_path / "from_folder")):
        result = convert(source, out)
        assert result.writer == "safetensors"
        out_index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(out_index["weight_map"].values())) == len(set(index["weight_map"].values()))
        (out / "config.json").write_bytes((src / "config.json").read_bytes())
        assert_loads_exactly(transformers.GPT2LMHeadModel, out, expected)
    from ckpt_migrate.api import inspect

    listed = inspect(src / "pytorch_model.bin.index.json")
    assert listed.reader == "torch-bin-sharded" and {t["name"] for t in listed.tensors} == set(expected)
    shards_only = tmp_path / "shards_only"
    shards_only.mkdir()
    for name in set(index["weight_map"].values()):
        (shards_only / name).write_bytes((src / name).read_bytes())
    convert(shards_only, tmp_path / "from_bare_shards")
    assert (tmp_path / "from_bare_shards" / "model.safetensors.index.json").is_file()


def test_missing_shard_fails_clearly(tmp_path: Path) -> None:
    from ckpt_migrate.errors import CkptMigrateError

    src = tmp_path / "gpt2"
    _, index = hf.save_bin_shards(hf.gpt2(), src, max_shard_size=6000)
    (src / sorted(set(index["weight_map"].values()))[-1]).unlink()
    with pytest.raises(CkptMigrateError, match="missing"):
        convert(src / "pytorch_model.bin.index.json", tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()


def test_outside_hf_folders_every_key_is_kept_unless_dedupe_shared(tmp_path: Path) -> None:
    model = hf.gpt2()
    state = model.state_dict()
    torch.save(state, tmp_path / "weights.pt")
    convert(tmp_path / "weights.pt", tmp_path / "all.safetensors")
    with safe_open(str(tmp_path / "all.safetensors"), "pt") as handle:
        assert set(handle.keys()) == set(state)
    convert(tmp_path / "weights.pt", tmp_path / "dedup.safetensors", dedupe_shared=True)
    with safe_open(str(tmp_path / "dedup.safetensors"), "pt") as handle:
        kept = set(handle.keys())
        metadata = handle.metadata()
    assert set(state) - kept == {"transformer.wte.weight"}
    assert metadata["transformer.wte.weight"] == "lm_head.weight"
    from safetensors.torch import load_model

    fresh = hf.gpt2(seed=1)
    load_model(fresh, str(tmp_path / "dedup.safetensors"))
    for name, tensor in state.items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_trainer_folder_state_is_rewritten_weights_only_and_resumes_bit_exactly(tmp_path: Path) -> None:
    src, dst = tmp_path / "run" / "checkpoint-2", tmp_path / "out"
    saved = hf.save_trainer_checkpoint(src)
    report = migrate(tmp_path / "run", dst, to="safetensors")
    assert report.exit_code == 0, [f.to_json() for f in report.files]
    out = dst / "checkpoint-2"
    assert files_of(out) == {"config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                             "training_args.json", "trainer_state.json"}
    assert (out / "trainer_state.json").read_bytes() == (src / "trainer_state.json").read_bytes()
    args = json.loads((out / "training_args.json").read_text())
    assert args["eval_strategy"] == "steps" and args["save_strategy"] == "epoch" and args["lr_scheduler_type"] == "linear"
    assert args["learning_rate"] == 5e-5 and args["seed"] == 42

    def resume(folder: Path, weights: dict) -> hf.Net:
        model, optimizer, scheduler = hf.make_training(seed=99)
        model.load_state_dict(weights)
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        hf.train(model, optimizer, scheduler, hf.batches(4)[2:])
        return model

    from safetensors.torch import load_file

    original = resume(src, torch.load(src / "pytorch_model.bin", weights_only=True))
    migrated = resume(out, load_file(str(out / "model.safetensors")))
    straight, optimizer, scheduler = hf.make_training()
    hf.train(straight, optimizer, scheduler, hf.batches(4))
    for name, tensor in original.state_dict().items():
        assert torch.equal(migrated.state_dict()[name], tensor), name
        assert torch.equal(straight.state_dict()[name], tensor), name

    rng = torch.load(out / "rng_state.pth", weights_only=True)
    random.setstate(rng["python"])
    numpy.random.set_state(tuple(rng["numpy"][:1]) + (rng["numpy"][1].numpy(),) + tuple(rng["numpy"][2:]))
    torch.random.set_rng_state(rng["cpu"])
    draws = (random.random(), numpy.random.rand(), torch.rand(1))
    random.setstate(saved["rng"]["python"])
    numpy.random.set_state(saved["rng"]["numpy"])
    torch.random.set_rng_state(saved["rng"]["cpu"])
    assert draws[0] == random.random() and draws[1] == numpy.random.rand() and torch.equal(draws[2], torch.rand(1))


@pytest.mark.parametrize("fmt", ["bin", "safetensors", "dcp"])
def test_folder_members_linked_out_of_the_folder_are_never_read(tmp_path: Path, fmt: str) -> None:
    import os

    from ckpt_migrate.errors import CorruptFileError

    src, outside = tmp_path / "model", tmp_path / "outside"
    outside.mkdir()
    if fmt == "bin":
        _, index = hf.save_bin_shards(hf.gpt2(), src, max_shard_size=6000)
        member, opened = sorted(set(index["weight_map"].values()))[0], src / "pytorch_model.bin.index.json"
    elif fmt == "safetensors":
        torch.save(hf.gpt2().state_dict(), tmp_path / "w.pt")
        convert(tmp_path / "w.pt", src, max_shard_size="6000")
        member, opened = sorted(p.name for p in src.glob("model-*.safetensors"))[0], src
    else:
        torch.save({"model_state_dict": hf.Net().state_dict()}, tmp_path / "w.pt")
        convert(tmp_path / "w.pt", src, to="dcp")
        member, opened = next(p.name for p in src.iterdir() if p.suffix == ".distcp"), src
    (src / member).rename(outside / member)
    os.symlink(outside / member, src / member)
    with pytest.raises(CorruptFileError, match="link out of the folder"):
        convert(opened, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_layout_roles_are_decided_by_folder_content() -> None:
    from ckpt_migrate.batch.layout import assign_roles

    rels = ["unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin",
            "plain/pytorch_model.bin", "run/optimizer.pt", "run/training_args.bin", "run/notes.txt", "optimizer.pt"]
    checkpoints = {r for r in rels if r.endswith((".bin", ".pt"))}
    roles = assign_roles(rels, checkpoints, to="safetensors", hf_layout=True, read_text=lambda rel: None)
    assert roles["unet/diffusion_pytorch_model.bin"].destination == "unet/diffusion_pytorch_model.safetensors"
    assert roles["unet/diffusion_pytorch_model.fp16.bin"].destination == "unet/diffusion_pytorch_model.fp16.safetensors"
    assert roles["plain/pytorch_model.bin"].role == "convert", "no config.json: not a Hugging Face folder"
    assert roles["run/optimizer.pt"].role == "state" and roles["run/training_args.bin"].destination == "run/training_args.json"
    assert roles["optimizer.pt"].role == "convert", "outside a training folder an optimizer.pt is an ordinary checkpoint"
    assert roles["run/notes.txt"].role == "copy" and roles["unet/config.json"].destination == "unet/config.json"
    plain = assign_roles(rels, checkpoints, to="normalized", hf_layout=False, read_text=lambda rel: None)
    assert plain["unet/diffusion_pytorch_model.bin"].role == "convert"


def test_a_shard_set_migrated_to_another_format_becomes_one_output(tmp_path: Path) -> None:
    src, dst = tmp_path / "gpt2", tmp_path / "out"
    expected, index = hf.save_bin_shards(hf.gpt2(), src, max_shard_size=6000)
    report = migrate(src, dst, to="normalized")
    assert report.exit_code == 0, [f.to_json() for f in report.files]
    assert {p.name for p in dst.iterdir()} == {"config.json", "pytorch_model.pt", ".ckpt-migrate-manifest.jsonl"}
    loaded = torch.load(dst / "pytorch_model.pt", weights_only=True)["model_state_dict"]
    assert sorted(loaded) == sorted(expected)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in expected.items())
    members = [f for f in report.files if f.action == "member"]
    assert len(members) == len(set(index["weight_map"].values())) and all(f.status == "converted" for f in members)
