"""The index of a Hugging Face shard set (``*.index.json``): its weight map and metadata, checked.

Shared by the safetensors and the pickled ``.bin`` shard readers: both read the same JSON layout
and must refuse the same lies (a shard outside the folder, a non-string file name, a huge file).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ckpt_migrate.errors import CorruptFileError

MAX_INDEX_BYTES = 64 * 1024 * 1024


def read_shard_index(path: str, shard_suffix: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The weight map (tensor name → shard file name) and metadata of an index file.

    Args:
        path: the ``*.index.json`` file.
        shard_suffix: what every shard's file name must end with (``.safetensors`` or ``.bin``).

    Returns:
        The weight map and the index's ``metadata`` (empty when absent).

    Raises:
        CorruptFileError: not JSON, over :data:`MAX_INDEX_BYTES`, no weight map, or a shard that is
            not a plain file name in the same folder with ``shard_suffix``.
    """
    if os.path.getsize(path) > MAX_INDEX_BYTES:
        raise CorruptFileError(f"index is over the {MAX_INDEX_BYTES}-byte limit", path=path)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CorruptFileError(f"index is not valid JSON: {error}", path=path) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptFileError("index has no weight_map", path=path)
    for name, filename in weight_map.items():
        if (not isinstance(filename, str) or not filename.endswith(shard_suffix) or os.path.basename(filename) != filename
                or "/" in filename or "\\" in filename or filename in (".", "..")):
            raise CorruptFileError(f"index maps {name!r} to {filename!r}, not a shard file name in the same folder (ending in {shard_suffix})", path=path)
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    return weight_map, metadata
