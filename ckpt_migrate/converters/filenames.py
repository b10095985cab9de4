"""The file and folder names that hint at a checkpoint: suffixes, and the DCP folder marker.

Content decides the format (readers sniff bytes); these names only decide what a folder walk
reports as an unreadable checkpoint rather than skipping, what ``migrate`` strips from an output
name, and whether a ``--target`` spec is a path.
"""

from __future__ import annotations

import os

CHECKPOINT_SUFFIXES = (".pth.tar", ".pt.tar", ".ckpt.tar", ".pth", ".pt", ".ckpt", ".chkpt", ".pkl", ".pickle", ".tar", ".bin",
                       ".safetensors", ".torch", ".model", ".weights", ".pyt", ".t7", ".pt2", ".onnx", ".distcp")
"""Longest first, so ``model.pth.tar`` loses ``.pth.tar`` and not only ``.tar``."""

WRITER_SUFFIXES: dict[str, tuple[str, ...]] = {
    "safetensors": (".safetensors",),
    "normalized": (".pt", ".pth", ".tar", ".ckpt"),
    "dcp": (),
    "onnx": (".onnx",),
}
"""The destination suffixes of the built-in writers (their ``suffixes``): the first one names ``migrate``'s outputs."""

DCP_METADATA = ".metadata"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def is_dcp_listing(files: list[str]) -> bool:
    """True for a folder listing of a ``torch.distributed.checkpoint`` (``.metadata`` beside ``*.distcp``)."""
    return DCP_METADATA in files and any(name.endswith(".distcp") for name in files)


def is_dcp_folder(path: str) -> bool:
    """True when ``path`` is a local folder holding a DCP ``.metadata`` file."""
    return os.path.isfile(os.path.join(path, DCP_METADATA))
