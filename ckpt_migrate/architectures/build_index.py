"""Generate ``signatures.json.gz``: the state_dict signature of every torchvision model builder.

Run by ``make signatures`` (``python ckpt_migrate/architectures/build_index.py [OUTPUT]``). Every
builder of ``torchvision.models.list_models()`` is instantiated with ``weights=None`` on the meta
device (no memory, no downloads, no initialisation cost) and its ordered state_dict keys are
recorded with shapes and dtypes.

Head-like dimensions become variables: each builder is built again with two probe values of
``num_classes`` / ``num_keypoints``; dimensions that follow the value are written as the variable
name, or as ``{"var": name, "mul": m, "add": a}`` when they are a linear function of it (a box
regressor has ``num_classes * 4`` outputs). Keyword switches that add or remove keys (``aux_logits``,
``aux_loss``) produce separate variants. A builder that cannot be built is listed under
``"failed"`` with its error. The output is deterministic: sorted JSON, gzip with ``mtime=0``.
"""

from __future__ import annotations

import contextlib
import gzip
import inspect
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torchvision
from torch.nn.modules import module as _module
from torchvision.models import get_model, get_model_builder, list_models

FORMAT_VERSION = 1
DEFAULT_OUTPUT = Path(__file__).with_name("signatures.json.gz")

MODULE_GROUPS: tuple[tuple[str, Any], ...] = (
    ("classification", torchvision.models),
    ("detection", torchvision.models.detection),
    ("segmentation", torchvision.models.segmentation),
    ("video", torchvision.models.video),
    ("optical_flow", torchvision.models.optical_flow),
    ("quantization", torchvision.models.quantization),
)
VARIABLE_PROBES: dict[str, tuple[int, int]] = {"num_classes": (7, 13), "num_keypoints": (5, 11)}
TOGGLES: tuple[str, ...] = ("aux_logits", "aux_loss")

Signature = list[tuple[str, tuple[int, ...], str]]


class IndexBuildError(RuntimeError):
    """A builder's signatures are inconsistent in a way the index cannot encode."""


@contextlib.contextmanager
def _meta_parameters() -> Iterator[None]:
    """Move every parameter and buffer to the meta device as it is registered.

    The fallback for builders whose constructors read tensor values (RegNet computes its widths
    with torch ops and ``.tolist()``), which a plain ``torch.device("meta")`` context breaks.
    """

    def parameter_hook(_owner: Any, _name: str, param: Any) -> Any:
        if param is None or param.device.type == "meta":
            return None
        return torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def buffer_hook(_owner: Any, _name: str, buffer: Any) -> Any:
        if buffer is None or buffer.device.type == "meta":
            return None
        return buffer.to("meta")

    handles = [
        _module.register_module_parameter_registration_hook(parameter_hook),
        _module.register_module_buffer_registration_hook(buffer_hook),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def build_meta(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build torchvision builder ``name`` with ``weights=None`` and meta tensors.

    Pretrained backbones are never requested (``weights_backbone=None`` where the builder has it).

    Raises:
        Exception: whatever the builder raises for these kwargs.
    """
    kwargs = {**build_kwargs(name), **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return get_model(name, weights=None, **kwargs)
        except NotImplementedError as error:
            if "meta" not in str(error):
                raise
        with _meta_parameters():
            return get_model(name, weights=None, **kwargs)


def build_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments needed so that building ``name`` downloads nothing."""
    parameters = inspect.signature(get_model_builder(name)).parameters
    return {"weights_backbone": None} if "weights_backbone" in parameters else {}


def signature(model: torch.nn.Module) -> Signature:
    """The ordered (key, shape, dtype) triples of ``model.state_dict()``."""
    return [
        (key, tuple(int(d) for d in value.shape), str(value.dtype).removeprefix("torch."))
        for key, value in model.state_dict().items()
    ]


def _try_signature(name: str, **kwargs: Any) -> Signature | None:
    try:
        return signature(build_meta(name, **kwargs))
    except Exception:
        return None


def _linear_dim(var: str, probes: tuple[int, int], dims: tuple[int, int], base: int) -> tuple[Any, int]:
    """Encode a dimension that follows ``var`` and return it with the default value it implies.

    Raises:
        IndexBuildError: the dimension is not an integer linear function of the variable.
    """
    (v1, v2), (d1, d2) = probes, dims
    mul, remainder = divmod(d2 - d1, v2 - v1)
    add = d1 - mul * v1
    if remainder or mul <= 0:
        raise IndexBuildError(f"{var}: dimension {d1}/{d2} is not linear in {v1}/{v2}")
    default, remainder = divmod(base - add, mul)
    if remainder or default < 1:
        raise IndexBuildError(f"{var}: default dimension {base} does not fit {mul}*{var}+{add}")
    if mul == 1 and add == 0:
        return var, default
    encoded: dict[str, Any] = {"var": var, "mul": mul}
    if add:
        encoded["add"] = add
    return encoded, default


def _encode_variant(name: str, fixed: dict[str, Any], base: Signature) -> tuple[list[list[Any]], dict[str, int]]:
    """Turn one variant's base signature into index entries, probing each variable.

    Raises:
        IndexBuildError: probing changed the key set, or dimensions disagree on a default.
    """
    entries: list[list[Any]] = [[key, list(shape), dtype] for key, shape, dtype in base]
    defaults: dict[str, int] = {}
    for var, probes in VARIABLE_PROBES.items():
        probed = [_try_signature(name, **fixed, **{var: value}) for value in probes]
        if any(p is None for p in probed):
            continue
        first, second = probed
        if [k for k, _, _ in first] != [k for k, _, _ in base] or [k for k, _, _ in second] != [k for k, _, _ in base]:
            raise IndexBuildError(f"{name}: {var} changes the key set")
        for entry, (_, shape0, _), (_, shape1, _), (_, shape2, _) in zip(entries, base, first, second):
            if len(shape1) != len(shape0) or len(shape2) != len(shape0):
                raise IndexBuildError(f"{name}: {var} changes the rank of {entry[0]}")
            for axis, (d0, d1, d2) in enumerate(zip(shape0, shape1, shape2)):
                if d0 == d1 == d2:
                    continue
                if not isinstance(entry[1][axis], int):
                    raise IndexBuildError(f"{name}: {entry[0]} depends on two variables")
                encoded, default = _linear_dim(var, probes, (d1, d2), d0)
                if defaults.setdefault(var, default) != default:
                    raise IndexBuildError(f"{name}: {var} has defaults {defaults[var]} and {default}")
                entry[1][axis] = encoded
    return entries, defaults


def index_builder(name: str, group: str) -> dict[str, Any]:
    """The index entry of one builder: its variants, variables with defaults, build kwargs.

    Raises:
        Exception: the builder cannot be built with its defaults, or its signatures cannot be encoded.
    """
    base = signature(build_meta(name))
    variants: list[tuple[dict[str, Any], Signature]] = [({}, base)]
    for toggle in TOGGLES:
        for value in (True, False):
            probed = _try_signature(name, **{toggle: value})
            if probed is not None and all(probed != known for _, known in variants):
                variants.append(({toggle: value}, probed))
    encoded_variants = []
    variables: dict[str, int] = {}
    for fixed, sig in variants:
        entries, defaults = _encode_variant(name, fixed, sig)
        for var, default in defaults.items():
            if variables.setdefault(var, default) != default:
                raise IndexBuildError(f"{name}: {var} default differs between variants")
        encoded_variants.append({"kwargs": fixed, "keys": entries})
    return {
        "module": group,
        "build_kwargs": build_kwargs(name),
        "variables": variables,
        "variants": encoded_variants,
    }


def build_index() -> dict[str, Any]:
    """Index every builder of ``torchvision.models.list_models()``; failures are recorded, not skipped."""
    grouped = {name: group for group, module in MODULE_GROUPS for name in list_models(module=module)}
    builders: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name in list_models():
        try:
            builders[name] = index_builder(name, grouped.get(name, "other"))
        except Exception as error:
            failed[name] = f"{type(error).__name__}: {error}"
    return {
        "format": FORMAT_VERSION,
        "generator": "ckpt_migrate/architectures/build_index.py",
        "torch": torch.__version__.split("+")[0],
        "torchvision": torchvision.__version__.split("+")[0],
        "builders": builders,
        "failed": failed,
    }


def write_index(index: dict[str, Any], path: Path) -> int:
    """Write ``index`` as sorted, compact JSON gzipped with ``mtime=0``; return the byte size."""
    data = json.dumps(index, sort_keys=True, separators=(",", ":")).encode("utf-8")
    payload = gzip.compress(data, compresslevel=9, mtime=0)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)
    return len(payload)


def main(argv: list[str] | None = None) -> int:
    """Build the index and write it to ``argv[0]`` or the packaged location."""
    argv = sys.argv[1:] if argv is None else argv
    output = Path(argv[0]) if argv else DEFAULT_OUTPUT
    start = time.perf_counter()
    index = build_index()
    size = write_index(index, output)
    elapsed = time.perf_counter() - start
    n_keys = sum(len(v["keys"]) for b in index["builders"].values() for v in b["variants"])
    print(f"indexed {len(index['builders'])} builders ({n_keys} keys) in {elapsed:.1f}s -> {output} ({size} bytes)")
    for name, error in index["failed"].items():
        print(f"could not index {name}: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
