"""Reader for TorchScript archives (``torch.jit.save``, ``_save_for_lite_interpreter``, frozen modules).

The module objects come from ``data.pkl`` through the safe interpreter; which attributes are
parameters, buffers or submodules comes from the class declarations in ``code/``, read as text
and never executed. The result equals ``state_dict()`` of the scripted module, with the packed
parameters of quantized Linear/Conv/RNN modules unpacked under the eager module's names
(``weight``, ``bias``, ``scale``, ``zero_point``; ``weight_ih_l0``… for RNNs), per-channel
quantizer scales as ``<weight>.q_per_channel_scales``/``.q_per_channel_zero_points``, and tensors
frozen into ``constants.pkl`` as ``CONSTANTS.c<i>`` (the name the archive's code uses). Every other
tensor is listed as left out with its reason.
"""

from __future__ import annotations

from typing import Any

from ckpt_migrate.converters.base import RawRead, ReadOptions, Reader
from ckpt_migrate.converters.readers.torch_zip import ZIP_MAGIC, TorchZipArchive, TorchZipReader
from ckpt_migrate.converters.readers.torchscript_code import MAX_CODE_BYTES, ClassDecl, parse_declarations
from ckpt_migrate.errors import LimitExceededError, NotMyFormat
from ckpt_migrate.io.source import Source
from ckpt_migrate.model.checkpoint import TensorRef
from ckpt_migrate.model.scripted import LeftOut, ScriptedState, scalar_tensor
from ckpt_migrate.unpickler.stubs import StubObject

MAX_DEPTH = 300
RUNTIME = "runtime attribute of a scripted module (not in its state_dict)"
LINEAR_PACKED = "__torch__.torch.classes.quantized.LinearPackedParamsBase"
CELL_PARAMS = "__torch__.torch.classes.rnn.CellParamsBase"
_CONV_STATE_LEN = 15
"""Length of the ``__getstate__`` tuple of quantized ``_ConvNd`` (weight at 10, bias 11, scale 12, zero_point 13)."""


def _is_script_object(value: Any) -> bool:
    return isinstance(value, StubObject) and value.class_name.startswith("__torch__.")


class ScriptWalk:
    """One walk over the scripted module tree, filling a :class:`ScriptedState`."""

    def __init__(self, decls: dict[str, ClassDecl]) -> None:
        self.decls = decls
        self.state = ScriptedState()

    def emit(self, name: str, ref: TensorRef) -> None:
        self.state.tensors[name] = ref
        quant = ref.quantization or {}
        if "per_channel" in str(quant.get("scheme", "")):
            params = list(quant.get("params") or [])
            for label, value in zip(("q_per_channel_scales", "q_per_channel_zero_points"), params[:2]):
                if isinstance(value, TensorRef):
                    self.state.tensors[f"{name}.{label}"] = value

    def leave(self, path: str, value: Any, reason: str, depth: int = 0) -> None:
        """Record every tensor inside ``value`` as left out for ``reason``."""
        if depth > MAX_DEPTH:
            raise LimitExceededError(f"TorchScript objects nested more than {MAX_DEPTH} deep")
        if isinstance(value, TensorRef):
            self.state.left_out.append(LeftOut(path, value, reason))
        elif isinstance(value, StubObject):
            inner = value.attributes or value.state
            self.leave(path, inner, reason, depth + 1)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.leave(f"{path}.{key}", item, reason, depth + 1)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                self.leave(f"{path}.{index}", item, reason, depth + 1)

    def is_module(self, value: Any) -> bool:
        if not _is_script_object(value):
            return False
        decl = self.decls.get(value.class_name)
        if decl is not None:
            return decl.is_module
        return "training" in value.attributes

    def module(self, obj: StubObject, prefix: str, depth: int = 0) -> None:
        """Add ``obj``'s parameters, buffers, unpacked quantized weights, then its submodules."""
        if depth > MAX_DEPTH:
            raise LimitExceededError(f"TorchScript modules nested more than {MAX_DEPTH} deep")
        if obj.class_name not in self.state.classes:
            self.state.classes.append(obj.class_name)
        if isinstance(obj.state, tuple) and not obj.attributes:
            self.custom_state(obj, prefix)
            return
        known = obj.class_name in self.decls
        decl = self.decls.get(obj.class_name) or ClassDecl(obj.class_name, "Module")
        attrs = obj.attributes
        done: set[str] = set()
        for slot in (decl.parameters, decl.buffers):
            for name, value in attrs.items():
                if name in slot and name not in done:
                    done.add(name)
                    if isinstance(value, TensorRef):
                        self.emit(prefix + name, value)
        packed = self.quantized(obj, decl, prefix, done)
        for name, value in attrs.items():
            if name in done:
                continue
            if self.is_module(value):
                self.module(value, f"{prefix}{name}.", depth + 1)
            elif known:
                self.leave(prefix + name, value, RUNTIME)
            else:
                self.positional(value, f"{prefix}{name}.")
        if packed and isinstance(attrs.get("scale"), float) and isinstance(attrs.get("zero_point"), int):
            self.emit(prefix + "scale", scalar_tensor(attrs["scale"], "float32", prefix + "scale"))
            self.emit(prefix + "zero_point", scalar_tensor(attrs["zero_point"], "int64", prefix + "zero_point"))

    def quantized(self, obj: StubObject, decl: ClassDecl, prefix: str, done: set[str]) -> bool:
        """Unpack the packed parameters ``obj`` holds (Linear wrapper, RNN cells); True when it held any."""
        attrs = obj.attributes
        holder = attrs.get("_packed_params")
        if isinstance(holder, StubObject) and holder.class_name.endswith(".LinearPackedParams"):
            holder = holder.attributes.get("_packed_params")
        if isinstance(holder, StubObject) and holder.class_name == LINEAR_PACKED and isinstance(holder.state, tuple):
            done.add("_packed_params")
            weight, bias = (list(holder.state) + [None, None])[:2]
            if isinstance(weight, TensorRef):
                self.emit(prefix + "weight", weight)
            if isinstance(bias, TensorRef):
                self.emit(prefix + "bias", bias)
            return True
        cells = attrs.get("_all_weight_values")
        if isinstance(cells, StubObject) and isinstance(attrs.get("num_layers"), int):
            done.add("_all_weight_values")
            self.rnn_cells(attrs, cells, prefix)
            return True
        return False

    def rnn_cells(self, attrs: dict, cells: StubObject, prefix: str) -> None:
        directions = 2 if attrs.get("bidirectional") else 1
        entries = [v for k, v in cells.attributes.items() if k.isdigit()]
        for index, entry in enumerate(entries):
            layer, direction = divmod(index, directions)
            suffix = f"l{layer}{'_reverse' if direction else ''}"
            param = entry.attributes.get("param") if isinstance(entry, StubObject) else None
            state = param.state if isinstance(param, StubObject) and param.class_name == CELL_PARAMS else None
            packs = state[4] if isinstance(state, tuple) and len(state) > 4 and isinstance(state[4], (list, tuple)) else None
            if not packs or len(packs) < 2:
                self.positional(entry, f"{prefix}_all_weight_values.{index}.")
                continue
            found: dict[str, TensorRef] = {}
            for gate, pack in zip(("ih", "hh"), packs[:2]):
                pair = list(pack.state) if isinstance(pack, StubObject) and isinstance(pack.state, tuple) else []
                if pair and isinstance(pair[0], TensorRef):
                    found[f"weight_{gate}_{suffix}"] = pair[0]
                if len(pair) > 1 and isinstance(pair[1], TensorRef):
                    found[f"bias_{gate}_{suffix}"] = pair[1]
            for name in (f"weight_ih_{suffix}", f"weight_hh_{suffix}", f"bias_ih_{suffix}", f"bias_hh_{suffix}"):
                if name in found:
                    self.emit(prefix + name, found[name])

    def positional(self, value: Any, prefix: str, depth: int = 0) -> None:
        """Write every tensor of an object whose layout is not known, under positional names."""
        if depth > MAX_DEPTH:
            raise LimitExceededError(f"TorchScript objects nested more than {MAX_DEPTH} deep")
        if isinstance(value, TensorRef):
            self.emit(prefix.rstrip("."), value)
        elif isinstance(value, StubObject):
            self.positional(value.attributes or value.state, prefix, depth + 1)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.positional(item, f"{prefix}{key}.", depth + 1)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                self.positional(item, f"{prefix}{index}.", depth + 1)

    def custom_state(self, obj: StubObject, prefix: str) -> None:
        """Modules pickled through ``__getstate__``: quantized convolutions by their known layout, others positionally."""
        state = obj.state
        if len(state) == _CONV_STATE_LEN and isinstance(state[10], TensorRef) and isinstance(state[12], float) and isinstance(state[13], int):
            self.emit(prefix + "weight", state[10])
            if isinstance(state[11], TensorRef):
                self.emit(prefix + "bias", state[11])
            self.emit(prefix + "scale", scalar_tensor(state[12], "float32", prefix + "scale"))
            self.emit(prefix + "zero_point", scalar_tensor(state[13], "int64", prefix + "zero_point"))
            return
        self.positional(state, prefix)


def scripted_state(root: Any, decls: dict[str, ClassDecl], constants: Any = ()) -> ScriptedState:
    """The state_dict of a scripted module tree plus its tensor constants.

    Args:
        root: the object ``data.pkl`` holds (a ``__torch__`` module stub).
        decls: the archive's class declarations.
        constants: what ``constants.pkl`` holds (a tuple).

    Returns:
        The tensors under state_dict names and every other tensor with the reason it is left out.

    Raises:
        LimitExceededError: modules nested deeper than the limit.
    """
    walk = ScriptWalk(decls)
    if walk.is_module(root) or _is_script_object(root):
        walk.module(root, "")
    else:
        walk.positional(root, "")
    if isinstance(constants, (tuple, list)):
        for index, value in enumerate(constants):
            if isinstance(value, TensorRef):
                walk.emit(f"CONSTANTS.c{index}", value)
            else:
                walk.leave(f"CONSTANTS.c{index}", value, "part of a TorchScript constant that is not a tensor")
    walk.state.module = root
    return walk.state


class TorchScriptReader(Reader):
    """TorchScript archives: module state from ``data.pkl``, declarations from ``code/``, tensors from ``constants.pkl``."""

    name = "torchscript"
    description = "TorchScript archives (torch.jit.save, lite interpreter, frozen): state_dict from the class declarations; code never run"

    def sniff(self, head: bytes, source: Source) -> None:
        if not head.startswith(ZIP_MAGIC):
            raise NotMyFormat()
        if not TorchZipArchive.of(source).is_torchscript:
            raise NotMyFormat()

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        archive = TorchZipArchive.of(source)
        reader = TorchZipReader()
        raw = reader._read(archive, options)
        decls = parse_declarations(self._code(archive))
        constants: Any = ()
        if f"{archive.top}constants.pkl" in archive.names:
            found = reader._read(archive, options, entry="constants.pkl", storage_folder="constants")
            constants = found.root
            for name, use in found.globals.items():
                raw.globals.setdefault(name, use)
        state = scripted_state(raw.root, decls, constants)
        raw.meta["declared_classes"] = len(decls)
        return RawRead(state, "torchscript", raw.globals, raw.meta)

    @staticmethod
    def _code(archive: TorchZipArchive) -> dict[str, str]:
        folder = f"{archive.top}code/"
        files: dict[str, str] = {}
        total = 0
        for name in sorted(archive.names):
            if not name.startswith(folder) or not name.endswith(".py"):
                continue
            data = archive.read_entry(name, MAX_CODE_BYTES)
            total += len(data)
            if total > MAX_CODE_BYTES:
                raise LimitExceededError(f"code/ holds more than {MAX_CODE_BYTES} bytes of class sources", path=archive.source.name)
            files[name[len(folder):]] = data.decode("utf-8", "replace")
        return files
