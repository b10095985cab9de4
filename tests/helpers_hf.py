"""Tiny Hugging Face-style model folders and a Trainer-style checkpoint folder, built in code.

The state_dicts and ``config.json`` are those transformers' ``save_pretrained`` writes; ``.bin``
files are written with ``torch.save`` as transformers 4.x did (zip, or the pre-1.6 format), and
shard sets through huggingface_hub's splitter. ``TrainingArguments`` and ``IntervalStrategy``
stand in for transformers' own (which needs accelerate to construct): a pickled dataclass with enums.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import random
from pathlib import Path
from typing import Any

import numpy
import torch

CARRIED = {
    "tokenizer_config.json": b'{"model_max_length": 32, "tokenizer_class": "GPT2Tokenizer"}\n',
    "vocab.json": json.dumps({f"t{i}": i for i in range(64)}).encode(),
    "merges.txt": b"#version: 0.2\nt 0\n",
    "special_tokens_map.json": b'{"eos_token": "t0"}\n',
    "README.md": b"---\nlicense: mit\n---\n# tiny model card\n",
    "generation_config.json": b'{"do_sample": false}\n',
    "images/diagram.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "extra/embeddings.npy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }" + b" " * 50 + b"\n" + b"\x00" * 8,
}


def gpt2(seed: int = 0) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=16)
    return GPT2LMHeadModel(config).eval()


def t5(seed: int = 0) -> Any:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=48, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                      tie_word_embeddings=True, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config).eval()


def write_carried(folder: Path) -> dict[str, bytes]:
    """The non-checkpoint files of a model repository; returns relative name → bytes."""
    for name, data in CARRIED.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dict(CARRIED)


def save_bin_folder(model: Any, folder: Path, *, legacy: bool = False, stem: str = "pytorch_model") -> dict[str, torch.Tensor]:
    """``config.json`` + ``<stem>.bin`` (the whole state_dict, tied tensors sharing storage) as transformers 4.x wrote them."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(str(folder / "config.json"))
    state = model.state_dict()
    torch.save(state, folder / f"{stem}.bin", _use_new_zipfile_serialization=not legacy)
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def save_bin_shards(model: Any, folder: Path, max_shard_size: int, *, legacy: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """``config.json`` + ``pytorch_model-0000k-of-0000n.bin`` + ``pytorch_model.bin.index.json`` via huggingface_hub's splitter."""
    from huggingface_hub import split_torch_state_dict_into_shards

    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(str(folder / "config.json"))
    state = model.state_dict()
    split = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=max_shard_size)
    assert split.is_sharded
    for filename, names in split.filename_to_tensors.items():
        torch.save({name: state[name] for name in names}, folder / filename, _use_new_zipfile_serialization=not legacy)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return {name: tensor.detach().clone() for name, tensor in state.items()}, index


class IntervalStrategy(str, enum.Enum):
    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class SchedulerType(str, enum.Enum):
    LINEAR = "linear"
    COSINE = "cosine"


@dataclasses.dataclass
class TrainingArguments:
    output_dir: str
    learning_rate: float = 5e-5
    eval_strategy: IntervalStrategy = IntervalStrategy.STEPS
    save_strategy: IntervalStrategy = IntervalStrategy.EPOCH
    lr_scheduler_type: SchedulerType = SchedulerType.LINEAR
    seed: int = 42
    report_to: list = dataclasses.field(default_factory=list)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def make_training(seed: int = 3) -> tuple[Net, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, scheduler


def batches(count: int, seed: int = 9) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 6, generator=generator), torch.randint(0, 3, (4,), generator=generator)) for _ in range(count)]


def train(model: Net, optimizer: torch.optim.Optimizer, scheduler: Any, data: list) -> None:
    for x, y in data:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()


def save_trainer_checkpoint(folder: Path, steps: int = 2) -> dict[str, Any]:
    """A Trainer-style ``checkpoint-N`` folder after ``steps`` steps; returns what was saved."""
    folder.mkdir(parents=True, exist_ok=True)
    model, optimizer, scheduler = make_training()
    train(model, optimizer, scheduler, batches(steps))
    (folder / "config.json").write_text(json.dumps({"model_type": "net", "architectures": ["Net"]}))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    random.seed(5)
    numpy.random.seed(5)
    torch.manual_seed(5)
    rng = {"python": random.getstate(), "numpy": numpy.random.get_state(), "cpu": torch.random.get_rng_state()}
    torch.save(rng, folder / "rng_state.pth")
    torch.save(TrainingArguments(output_dir=str(folder.parent)), folder / "training_args.bin")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": steps, "log_history": []}))
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng}
