"""DeepSpeed ZeRO checkpoint folders, consolidated without DeepSpeed and without unpickling.

A folder written by ``engine.save_checkpoint(DIR)`` holds ``latest`` (the tag) and ``<tag>/`` with
the model states (``mp_rank_00_model_states.pt``; ZeRO-3: one ``zero_pp_rank_R_…`` per rank) and one
``…_optim_states.pt`` per rank whose flat fp32 partitions hold the master weights. Every file goes
through the torch-zip reader (our interpreter: DeepSpeed's classes become stubs, its enums inert
records, on the interpreter's curated list). Parameters are laid out as DeepSpeed's ``zero_to_fp32``
lays them out (``param_shapes`` per group, alignment paddings, ZeRO-3's per-parameter padding to the
world size), but nothing is read: each parameter becomes a reference to its byte ranges in the
partition files, stitched in order (:class:`PiecedSource`), so writing streams one range at a time.
Output matches ``get_fp32_state_dict_from_zero_checkpoint``: buffers (floating ones as float32),
frozen parameters, trainable parameters, then tied names, in that order.
One deliberate difference: ZeRO-1 records no frozen parameters (``frozen_param_shapes`` is None), so
DeepSpeed's tool drops them; here they are kept, with the module's own values, and named in
``meta["deepspeed"]["kept_from_module"]``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections import OrderedDict
from typing import Any, Iterable

import ckpt_migrate.model.dtypes as _dtypes
from ckpt_migrate.converters.base import RawRead, ReadOptions, Reader
from ckpt_migrate.model.layout import contiguous_strides
from ckpt_migrate.errors import CorruptFileError, NotMyFormat, SelectionError, UnsupportedFormatError
from ckpt_migrate.io.source import Source
from ckpt_migrate.model.checkpoint import ByteSource, DerivedTensor, PiecedSource, StorageRef, TensorRef
from ckpt_migrate.unpickler.stubs import StubObject
from ckpt_migrate.unpickler.verdicts import GlobalVerdict, merge_uses

LATEST = "latest"
MODEL_STATES = "_model_states.pt"
OPTIM_STATES = "_optim_states.pt"
WEIGHTS = ("master", "module")
MAX_TAG_BYTES = 4096


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _state_files(folder: str) -> tuple[list[str], list[str]]:
    names = sorted(os.listdir(folder), key=_natural)
    models = [n for n in names if n.endswith(MODEL_STATES) and os.path.isfile(os.path.join(folder, n))]
    optims = [n for n in names if n.endswith(OPTIM_STATES) and os.path.isfile(os.path.join(folder, n))]
    return models, optims


def _read_tag(top: str) -> str:
    with open(os.path.join(top, LATEST), "rb") as handle:
        data = handle.read(MAX_TAG_BYTES + 1)
    tag = data.decode("utf-8", "replace").strip()
    if not tag or len(data) > MAX_TAG_BYTES or "/" in tag or "\\" in tag or tag in (".", "..") or "\0" in tag:
        raise CorruptFileError(f"{LATEST} does not name a tag folder ({data[:60]!r})", path=top)
    return tag


def locate(path: str) -> tuple[str, str] | None:
    """The (top folder, tag folder) of a DeepSpeed checkpoint at ``path``, or ``None`` when it is not one.

    ``path`` is the folder with ``latest`` or a tag folder (``global_stepN/``) holding
    ``*_model_states.pt`` and ``*_optim_states.pt``.

    Raises:
        CorruptFileError: ``latest`` names a tag that is not a folder beside it.
    """
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, LATEST)):
        tag = _read_tag(path)
        folder = os.path.join(path, tag)
        if not os.path.isdir(folder):
            raise CorruptFileError(f"{LATEST} names tag {tag!r} but there is no folder {tag}/ beside it", path=path)
        return path, folder
    models, optims = _state_files(path)
    if models and optims:
        return os.path.dirname(os.path.abspath(path)), path
    return None


def tagged_folder(path: str, tag: str | None) -> str:
    """``path`` itself, or with ``tag`` the tag folder (``global_stepN``) of the DeepSpeed checkpoint at ``path``.

    Args:
        path: the folder ``engine.save_checkpoint`` wrote (the one with ``latest``).
        tag: the tag to read instead of the one ``latest`` names; None keeps ``path``.

    Returns:
        The folder to read.

    Raises:
        UsageError: ``tag`` is not a plain folder name, or ``path`` holds no such tag folder.
    """
    if tag is None:
        return path
    from ckpt_migrate.errors import UsageError

    if not os.path.isfile(os.path.join(path, LATEST)):
        raise UsageError("--tag applies to a DeepSpeed checkpoint folder (the one holding `latest`)", path=path)
    if not tag or tag in (".", "..") or "/" in tag or "\\" in tag:
        raise UsageError(f"--tag {tag!r}: expected a tag folder name such as global_step3", path=path)
    folder = os.path.join(path, tag)
    if not os.path.isdir(folder) or locate(folder) is None:
        tags = sorted(name for name in os.listdir(path) if os.path.isdir(os.path.join(path, name))) if os.path.isdir(path) else []
        raise UsageError(f"--tag {tag!r}: no DeepSpeed checkpoint tag of that name here; tags: {', '.join(tags) or 'none'}", path=path)
    return folder


def partitioned_rank_file(root: Any) -> str | None:
    """Why a ``torch.save`` bundle is one rank's ZeRO-3 model states (placeholders, not weights), else ``None``."""
    if not isinstance(root, dict) or "ds_version" not in root or "param_shapes" not in root:
        return None
    module = root.get("module")
    if not isinstance(module, dict):
        return None
    buffers = set(root.get("buffer_names") or ())
    params = [v for k, v in module.items() if k not in buffers and isinstance(v, TensorRef)]
    if not params or any(ref.numel for ref in params):
        return None
    return (f"one rank's model states of a DeepSpeed ZeRO-3 checkpoint: the module holds {len(params)} empty "
            "placeholder(s), the weights are partitioned across the ranks' *_optim_states.pt files; "
            "convert the checkpoint folder (the one with `latest`, or its global_stepN/) instead")


class PartitionedRankError(SelectionError):
    """One rank's file of a partitioned checkpoint was given where the weights are expected."""


def refuse_partitioned_rank(root: Any) -> None:
    """Stop a ZeRO-3 rank's model states from being taken for weights (they hold empty placeholders).

    Raises:
        PartitionedRankError: ``root`` is such a file; the message points at the checkpoint folder.
    """
    why = partitioned_rank_file(root)
    if why:
        raise PartitionedRankError(why)


def _stage_number(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    args = getattr(value, "args", None)
    if isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    if isinstance(value, StubObject) and isinstance(value.state, int):
        return value.state
    return None


def _shape(value: Any, where: str, path: str) -> tuple[int, ...]:
    if isinstance(value, StubObject) and isinstance(value.state, (tuple, list)):
        value = value.state
    if isinstance(value, StubObject) and value.args and isinstance(value.args[0], (tuple, list)):
        value = value.args[0]
    if not isinstance(value, (tuple, list)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise CorruptFileError(f"{where}: shape {value!r:.80} is not a list of sizes", path=path)
    return tuple(value)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


class _Flat:
    """A run of flat 1-D partitions (one rank's groups, or every rank's partition of one group) seen as one vector."""

    def __init__(self, refs: list[TensorRef], what: str, path: str) -> None:
        self.refs = refs
        self.path = path
        self.dtype = refs[0].dtype if refs else _dtypes.get("float32")
        for ref in refs:
            if not isinstance(ref, TensorRef) or len(ref.shape) != 1 or not ref.is_contiguous() or ref.dtype != self.dtype:
                raise CorruptFileError(f"{what} is not a list of flat {self.dtype.name} tensors", path=path)
        self.starts = [0]
        for ref in refs:
            self.starts.append(self.starts[-1] + ref.numel)

    @property
    def numel(self) -> int:
        return self.starts[-1]

    def pieces(self, start: int, count: int, name: str) -> list[ByteSource]:
        """Byte ranges of elements ``[start, start + count)``.

        Raises:
            CorruptFileError: the range runs past the partitions.
        """
        if start < 0 or count < 0 or start + count > self.numel:
            raise CorruptFileError(f"parameter {name!r} needs elements {start}..{start + count} of a {self.numel}-element partition",
                                   path=self.path)
        out: list[ByteSource] = []
        width = self.dtype.itemsize
        for ref, base in zip(self.refs, self.starts):
            lo, hi = max(start, base), min(start + count, base + ref.numel)
            if lo >= hi:
                continue
            source = ref.storage.source
            first = (ref.offset + lo - base) * width
            out.append(dataclasses.replace(source, offset=source.offset + first, length=(hi - lo) * width)
                       if not isinstance(source, PiecedSource) else _sub(source, first, (hi - lo) * width))
        return out


def _sub(source: PiecedSource, start: int, length: int) -> ByteSource:
    parts = [dataclasses.replace(piece, offset=piece.offset + within, length=count) for piece, within, count in source.spans(start, length)]
    return _joined(parts, source.name)


def _joined(pieces: list[ByteSource], name: str) -> ByteSource:
    merged: list[ByteSource] = []
    for piece in pieces:
        if piece.length == 0:
            continue
        last = merged[-1] if merged else None
        if (last is not None and last.name == piece.name and last.buffer is None and piece.buffer is None
                and last.opener is None and piece.opener is None and last.offset + last.length == piece.offset):
            merged[-1] = dataclasses.replace(last, length=last.length + piece.length)
        else:
            merged.append(piece)
    if len(merged) == 1:
        return merged[0]
    return PiecedSource(name, 0, sum(p.length for p in merged), pieces=tuple(merged))


def _tensor(name: str, dtype: _dtypes.DType, shape: tuple[int, ...], pieces: list[ByteSource]) -> TensorRef:
    numel = _numel(shape)
    if numel == 0:
        storage = StorageRef(name, dtype, 0, "cpu", ByteSource(name, 0, 0, buffer=b""))
    else:
        storage = StorageRef(name, dtype, numel, "cpu", _joined(pieces, name))
    return TensorRef(storage, dtype, shape, contiguous_strides(shape), 0)


def _as_float32(ref: TensorRef) -> Any:
    if not ref.dtype.is_floating or ref.dtype.name == "float32":
        return ref
    target = _dtypes.get("float32")

    def cast(tensor: Any) -> Any:
        import torch

        return tensor.to(torch.float32)

    return DerivedTensor(target, tuple(ref.shape), (ref,), cast, f"cast to {target.name}")


class DeepSpeedCheckpoint:
    """One tag folder of a DeepSpeed ZeRO checkpoint: its files read through the interpreter, its layout checked."""

    def __init__(self, top: str, folder: str, options: ReadOptions) -> None:
        from ckpt_migrate.converters.readers.torch_zip import TorchZipReader

        self.top = top
        self.folder = folder
        self.name = folder
        self.globals: dict[str, GlobalVerdict] = {}
        self.refused = False
        self.recovered: list[str] = []
        self.options = options
        self.model_files, self.optim_files = _state_files(folder)
        if not self.model_files:
            raise CorruptFileError("no *_model_states.pt file in the DeepSpeed checkpoint folder", path=folder)
        others = [n for n in self.model_files + self.optim_files if "mp_rank_00" not in n]
        if others:
            raise UnsupportedFormatError(f"model-parallel DeepSpeed checkpoint ({others[0]}); only mp_rank_00 "
                                         "(data parallel ZeRO) checkpoints are consolidated", path=folder)
        reader = TorchZipReader()
        self.models = [self._read(reader, n) for n in self.model_files]
        self.optims = [self._read(reader, n) for n in self.optim_files]
        if self.refused:
            return
        self.model = self.models[0]
        if not isinstance(self.model, dict) or "param_shapes" not in self.model or "module" not in self.model:
            raise CorruptFileError(f"{self.model_files[0]} holds no DeepSpeed model states (param_shapes, module)", path=folder)
        if not self.optims:
            raise CorruptFileError("no *_optim_states.pt file: the fp32 master weights are missing (saved with "
                                   "exclude optimizer states?); --weights module takes the module's own weights", path=folder)
        self.optim = self._optimizer_state(0)
        self.stage = _stage_number(self.optim.get("zero_stage"))
        if self.stage not in (1, 2, 3):
            raise UnsupportedFormatError(f"{self.optim_files[0]}: ZeRO stage {self.optim.get('zero_stage')!r} is not 1, 2 or 3", path=folder)
        count = self.optim.get("partition_count")
        self.world_size = max(count) if isinstance(count, list) and count else count
        if not isinstance(self.world_size, int) or isinstance(self.world_size, bool) or self.world_size < 1:
            raise CorruptFileError(f"{self.optim_files[0]}: partition_count {count!r}", path=folder)
        if self.world_size != len(self.optim_files):
            raise CorruptFileError(f"the checkpoint was saved by {self.world_size} ranks but the folder holds "
                                   f"{len(self.optim_files)} *_optim_states.pt file(s); a rank's file is missing or left over",
                                   path=folder)
        if self.stage == 3 and len(self.models) != self.world_size:
            raise CorruptFileError(f"ZeRO-3 checkpoint of {self.world_size} ranks holds {len(self.models)} *_model_states.pt file(s)",
                                   path=folder)

    def _read(self, reader: Any, name: str) -> Any:
        path = os.path.join(self.folder, name)
        options = self.options
        if getattr(options, "budget", None) is not None:
            from ckpt_migrate.unpickler.budget import Budget

            options = dataclasses.replace(options, budget=Budget(options.limits, os.path.getsize(path)))
        raw = reader.read(Source(path), options)
        merge_uses(self.globals, raw.globals.values())
        if any(use.verdict == "refused" for use in raw.globals.values()):
            self.refused = True
        return raw.root

    def _optimizer_state(self, rank: int) -> dict:
        state = self.optims[rank].get("optimizer_state_dict") if isinstance(self.optims[rank], dict) else None
        if not isinstance(state, dict):
            raise CorruptFileError(f"{self.optim_files[rank]} holds no optimizer_state_dict", path=self.folder)
        return state

    @property
    def step(self) -> Any:
        return self.model.get("global_steps")

    def _groups(self, rank: int) -> list[TensorRef]:
        key = "fp32_flat_groups" if self.stage == 3 else "single_partition_of_fp32_groups"
        groups = self._optimizer_state(rank).get(key)
        if not isinstance(groups, (list, tuple)) or not groups:
            raise CorruptFileError(f"{self.optim_files[rank]} has no {key} (the fp32 master partitions)", path=self.folder)
        return list(groups)

    def _param_shapes(self) -> list[OrderedDict]:
        shapes = self.model.get("param_shapes")
        if not isinstance(shapes, (list, tuple)) or not all(isinstance(g, dict) for g in shapes):
            raise CorruptFileError(f"{self.model_files[0]}: param_shapes is not a list of name → shape mappings", path=self.folder)
        return [OrderedDict((str(k), _shape(v, f"param_shapes[{k!r}]", self.folder)) for k, v in group.items()) for group in shapes]

    def buffers(self) -> "OrderedDict[str, Any]":
        """Buffers named in ``buffer_names``, from rank 0's module, floating ones as float32 (as DeepSpeed restores them)."""
        names = set(self.model.get("buffer_names") or ())
        module = self.model["module"]
        return OrderedDict((k, _as_float32(v)) for k, v in module.items() if k in names and isinstance(v, TensorRef))

    def frozen(self) -> "OrderedDict[str, TensorRef]":
        """Frozen parameters: whole in rank 0's fragments (stages 1-2), or each rank's fragment stitched (stage 3)."""
        shapes = self.model.get("frozen_param_shapes")
        if not shapes:
            return OrderedDict()
        out: "OrderedDict[str, TensorRef]" = OrderedDict()
        for name, value in shapes.items():
            shape = _shape(value, f"frozen_param_shapes[{name!r}]", self.folder)
            fragments = [(m.get("frozen_param_fragments") or {}).get(name) for m in (self.models if self.stage == 3 else self.models[:1])]
            if not all(isinstance(f, TensorRef) for f in fragments):
                raise CorruptFileError(f"frozen parameter {name!r} has no fragment in every model states file", path=self.folder)
            if self.stage != 3:
                fragment = fragments[0]
                if fragment.numel != _numel(shape):
                    raise CorruptFileError(f"frozen parameter {name!r}: fragment of {fragment.numel} elements for shape {list(shape)}",
                                           path=self.folder)
                out[str(name)] = fragment if tuple(fragment.shape) == shape else fragment.with_view(shape, contiguous_strides(shape), fragment.offset)
                continue
            flat = _Flat([f.with_view((f.numel,), (1,), f.offset) if f.is_contiguous() else f for f in fragments],
                         f"frozen fragments of {name!r}", self.folder)
            out[str(name)] = _tensor(str(name), flat.dtype, shape, flat.pieces(0, _numel(shape), str(name)))
        return out

    def trainable(self) -> "OrderedDict[str, TensorRef]":
        """The fp32 master weights, stitched from the ranks' partitions."""
        return self._zero3() if self.stage == 3 else self._zero12()

    def _zero12(self) -> "OrderedDict[str, TensorRef]":
        shapes = self._param_shapes()
        ranks = [self._groups(r) for r in range(self.world_size)]
        paddings = self.optim.get("param_alignment_paddings")
        out: "OrderedDict[str, TensorRef]" = OrderedDict()
        if any(len(groups) != len(shapes) for groups in ranks):
            raise CorruptFileError(f"{len(shapes)} parameter group(s) in param_shapes but the partitions hold "
                                   f"{sorted({len(g) for g in ranks})}", path=self.folder)
        align = 2 * self.world_size
        for index, group in enumerate(shapes):
            flat = _Flat([groups[index] for groups in ranks], f"partitions of group {index}", self.folder)
            pads = paddings[index] if isinstance(paddings, list) and index < len(paddings) else None
            if pads is not None and (not isinstance(pads, list) or len(pads) != len(group)):
                raise CorruptFileError(f"group {index}: {len(group)} parameters but param_alignment_paddings lists "
                                       f"{len(pads) if isinstance(pads, list) else pads!r}", path=self.folder)
            offset = 0
            for position, (name, shape) in enumerate(group.items()):
                numel = _numel(shape)
                out[name] = _tensor(name, flat.dtype, shape, flat.pieces(offset, numel, name))
                offset += numel + (pads[position] if pads is not None else 0)
            if align * math.ceil(offset / align) != align * math.ceil(flat.numel / align):
                raise CorruptFileError(f"group {index}: the parameters take {offset} elements but the partitions hold "
                                       f"{flat.numel}; param_shapes and the optimizer files disagree", path=self.folder)
        return out

    def _zero3(self) -> "OrderedDict[str, TensorRef]":
        shapes = OrderedDict((k, v) for group in self._param_shapes() for k, v in group.items())
        flats = [_Flat(self._groups(r), f"fp32_flat_groups of rank {r}", self.folder) for r in range(self.world_size)]
        out: "OrderedDict[str, TensorRef]" = OrderedDict()
        offset = 0
        for name, shape in shapes.items():
            numel = _numel(shape)
            part = math.ceil(numel / self.world_size)
            pieces: list[ByteSource] = []
            remaining = numel
            for flat in flats:
                take = min(part, remaining)
                pieces.extend(flat.pieces(offset, take, name))
                remaining -= take
            out[name] = _tensor(name, flats[0].dtype, shape, pieces)
            offset += part
        if any(offset != flat.numel for flat in flats):
            raise CorruptFileError(f"the parameters take {offset} elements per rank but the partitions hold "
                                   f"{sorted({f.numel for f in flats})}; param_shapes and the optimizer files disagree",
                                   path=self.folder)
        return out

    def consolidated(self) -> "OrderedDict[str, Any]":
        """The fp32 state_dict ``get_fp32_state_dict_from_zero_checkpoint`` gives: same names, order, dtypes and bytes."""
        out: "OrderedDict[str, Any]" = OrderedDict()
        out.update(self.buffers())
        out.update(self.frozen())
        trainable = self.trainable()
        out.update(self.unrecorded(out, trainable))
        out.update(trainable)
        self._tie(out)
        return out

    def unrecorded(self, known: "OrderedDict[str, Any]", trainable: "OrderedDict[str, Any]") -> "OrderedDict[str, TensorRef]":
        """Module weights no other record covers: frozen parameters of ZeRO-1, whose frozen_param_shapes DeepSpeed leaves out.

        Their values are the module's own (a frozen parameter has no fp32 master copy); DeepSpeed's
        consolidation drops them, this one keeps them rather than lose data.
        """
        if self.stage == 3:
            return OrderedDict()
        shared = self.model.get("shared_params") or {}
        skip = set(known) | set(trainable) | set(self.model.get("buffer_names") or ()) | set(shared if isinstance(shared, dict) else ())
        found = OrderedDict((k, v) for k, v in self.model["module"].items() if isinstance(v, TensorRef) and k not in skip)
        self.recovered = list(found)
        return found

    def module_weights(self) -> "OrderedDict[str, Any]":
        """Rank 0's module state_dict as saved (the training dtype); ZeRO-3 keeps only placeholders there.

        Raises:
            SelectionError: a ZeRO-3 checkpoint (the module's weights are partitioned).
        """
        if self.stage == 3:
            raise SelectionError("--weights module: a ZeRO-3 module holds placeholders only; the weights exist as the "
                                 "fp32 master partitions (the default, --weights master)", path=self.folder)
        return OrderedDict((k, v) for k, v in self.model["module"].items() if isinstance(v, TensorRef))

    def _tie(self, out: "OrderedDict[str, Any]") -> None:
        shared = self.model.get("shared_params") or {}
        pairs = shared.items() if isinstance(shared, dict) else shared
        for pair in pairs:
            if isinstance(pair, (tuple, list)) and len(pair) == 2 and pair[1] in out:
                out[str(pair[0])] = out[pair[1]]

    def describe(self, weights: str) -> dict[str, Any]:
        """What ``inspect`` shows: stage, ranks, step, dtypes, parameter counts and which files hold what."""
        shapes = self._param_shapes()
        frozen = self.model.get("frozen_param_shapes") or {}
        module = self.model["module"]
        training = sorted({v.dtype.name for k, v in module.items() if isinstance(v, TensorRef) and k not in set(self.model.get("buffer_names") or ())})
        return {
            "zero_stage": self.stage,
            "world_size": self.world_size,
            "tag": os.path.basename(os.path.normpath(self.folder)),
            "global_steps": self.step,
            "ds_version": self.model.get("ds_version"),
            "training_dtype": training[0] if len(training) == 1 else training,
            "weights": f"{weights}: " + ("fp32 master weights consolidated from the optimizer partitions" if weights == "master"
                                          else "the module's own weights from the model states"),
            "trainable_parameters": sum(len(g) for g in shapes),
            "trainable_elements": sum(_numel(s) for g in shapes for s in g.values()),
            "frozen_parameters": len(frozen),
            "tied": {str(k): str(v) for k, v in (self.model.get("shared_params") or {}).items()},
            "buffers": list(self.model.get("buffer_names") or ()),
            "kept_from_module": self.recovered,
            "files": {
                "model_states": self.model_files,
                "optim_states": self.optim_files,
            },
        }


def _client_state(model: dict) -> dict[str, Any]:
    known = {"module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
             "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names",
             "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size", "ds_config",
             "ds_version", "checkpoint_parallel_dimensions"}
    return {k: v for k, v in model.items() if k not in known}


class DeepSpeedReader(Reader):
    """DeepSpeed ZeRO checkpoint folders (stages 1-3): fp32 master weights consolidated as byte ranges."""

    name = "deepspeed"
    description = "DeepSpeed ZeRO checkpoint folder (latest + global_stepN/), consolidated without DeepSpeed"

    def sniff(self, head: bytes, source: Source) -> None:
        if not source.is_local:
            raise NotMyFormat()
        try:
            found = locate(source.local_path)
        except CorruptFileError:
            return
        if found is None:
            raise NotMyFormat()

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        found = locate(source.local_path)
        if found is None:
            raise CorruptFileError("not a DeepSpeed checkpoint folder (no `latest`, no *_model_states.pt)", path=source.name)
        top, folder = found
        weights = getattr(options, "weights", None) or "master"
        if weights not in WEIGHTS:
            raise UnsupportedFormatError(f"--weights {weights!r}: expected one of {', '.join(WEIGHTS)}", path=source.name)
        checkpoint = DeepSpeedCheckpoint(top, folder, options)
        meta: dict[str, Any] = {"deepspeed_folder": folder}
        if checkpoint.refused:
            return RawRead({}, "deepspeed", checkpoint.globals, meta)
        tensors = checkpoint.consolidated() if weights == "master" else checkpoint.module_weights()
        meta["deepspeed"] = checkpoint.describe(weights)
        meta["left_out"] = {"optimizer state": "ZeRO keeps the optimizer's moments as flat per-rank partitions; they are not "
                                                "consolidated per parameter (resume with DeepSpeed from the original folder)"}
        root: dict[str, Any] = {"model_state_dict": tensors}
        root.update(_client_state(checkpoint.model))
        root["global_steps"] = checkpoint.step
        root["ds_config"] = checkpoint.model.get("ds_config")
        return RawRead(root, "deepspeed", checkpoint.globals, meta)


def consolidate(path: str, weights: str = "master", allow_calls: Iterable[str] = ()) -> "OrderedDict[str, Any]":
    """The consolidated state_dict of a DeepSpeed checkpoint folder, as lazy references (nothing read yet).

    Raises:
        CorruptFileError: not a DeepSpeed checkpoint folder, or its files disagree.
    """
    found = locate(path)
    if found is None:
        raise CorruptFileError("not a DeepSpeed checkpoint folder (no `latest`, no *_model_states.pt)", path=path)
    checkpoint = DeepSpeedCheckpoint(found[0], found[1], ReadOptions(frozenset(allow_calls)))
    return checkpoint.consolidated() if weights == "master" else checkpoint.module_weights()
