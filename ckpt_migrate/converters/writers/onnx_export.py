"""Writer for ONNX: rebuild the architecture, export it in eval mode, then verify with onnxruntime.

The model comes from :mod:`ckpt_migrate.architectures.from_checkpoint` (``--arch``, a whole
torchvision model, ``--trust-module``, or identification). Verification runs
``onnx.checker.check_model(full_check=True)`` and compares onnxruntime's outputs with torch's on a
fixed seeded input (also at another batch size when the batch axis is dynamic); the output is
renamed into place only when the largest absolute difference is within ``--atol``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ckpt_migrate.io.atomic import atomic_path
from ckpt_migrate.model.checkpoint import Checkpoint, DerivedTensor
from ckpt_migrate.errors import CkptMigrateError, MissingDependencyError, UsageError, VerificationError
from ckpt_migrate.model.provenance import source_label
from ckpt_migrate.converters.base import WriteReport, Writer
from ckpt_migrate.options import ConvertOptions
from ckpt_migrate.reports.progress import phase
from ckpt_migrate.converters.filenames import WRITER_SUFFIXES

DEFAULT_ATOL = {"fp32": 1e-4, "fp16": 1e-2}
VERIFY_SEED = 0
CLASSIFICATION_SIZE = 224
SPECIAL_SIZES = {"inception_v3": 299, "quantized_inception_v3": 299}
SEGMENTATION_SIZE = 520
VIDEO_SHAPES = {"r3d_18": (16, 112, 112), "mc3_18": (16, 112, 112), "r2plus1d_18": (16, 112, 112)}
VIDEO_DEFAULT = (16, 224, 224)
OPTICAL_FLOW_SIZE = (224, 224)


@dataclass(frozen=True)
class ExportSettings:
    """The ONNX options of ``convert``, validated."""

    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    trust_modules: tuple[str, ...] = ()
    input_shape: tuple[int, ...] | None = None
    opset: int | None = None
    static: bool = False
    atol: float | None = None
    exporter: str = "auto"

    @classmethod
    def from_options(cls, options: ConvertOptions) -> "ExportSettings":
        """The ONNX fields of ``options`` (already validated by :class:`ConvertOptions`)."""
        return cls(
            arch=options.arch,
            arch_kwargs=dict(options.arch_kwargs) if options.arch_kwargs is not None else None,
            trust_modules=options.trust_modules,
            input_shape=options.input_shape,
            opset=options.opset,
            static=options.static,
            atol=float(options.atol) if options.atol is not None else None,
            exporter=options.exporter,
        )


def precision_of(checkpoint: Checkpoint) -> str:
    """``fp16`` when every floating tensor is float16, else ``fp32``.

    A bfloat16 checkpoint is exported in float32 (a lossless widening).

    Raises:
        UsageError: ``--dtype bf16`` was asked for (onnxruntime on CPU has no bfloat16 kernels).
    """
    floating = [ref for ref in checkpoint.tensors.values() if ref.dtype.is_floating]
    names = {ref.dtype.name for ref in floating}
    if "bfloat16" in names and any(isinstance(ref, DerivedTensor) and ref.dtype.name == "bfloat16" for ref in floating):
        raise UsageError("--dtype bf16 cannot be exported to ONNX and verified with onnxruntime on CPU; use --dtype fp16 or fp32")
    return "fp16" if names == {"float16"} else "fp32"


def default_input_shape(builder: str, family: str | None, model: Any) -> tuple[int, ...]:
    """The example input an architecture expects: 224² images, 299² for Inception, 520² for segmentation,
    the detector's own ``min_size``, 16-frame clips for video, image pairs for optical flow."""
    if family == "segmentation":
        return (1, 3, SEGMENTATION_SIZE, SEGMENTATION_SIZE)
    if family == "detection":
        transform = getattr(model, "transform", None)
        sizes = getattr(transform, "min_size", None) or (800,)
        size = int(sizes[0] if isinstance(sizes, (tuple, list)) else sizes)
        return (1, 3, size, size)
    if family == "video":
        return (1, 3, *VIDEO_SHAPES.get(builder, VIDEO_DEFAULT))
    if family == "optical_flow":
        return (1, 3, *OPTICAL_FLOW_SIZE)
    size = SPECIAL_SIZES.get(builder, CLASSIFICATION_SIZE)
    return (1, 3, size, size)


def require_onnx() -> None:
    """Raises: MissingDependencyError: onnx or onnxruntime is not installed."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(f"ONNX export needs {', '.join(missing)}: pip install 'ckpt-migrate[onnx]'")


def flatten_outputs(value: Any, name: str = "output") -> list[tuple[str, Any]]:
    """A model's output (tensor, dict, list, tuple, nested) as ``(name, tensor)`` pairs in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for key, item in value.items():
            out += flatten_outputs(item, str(key) if name == "output" else f"{name}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return flatten_outputs(value[0], name)
        out = []
        for index, item in enumerate(value):
            out += flatten_outputs(item, f"{name}_{index}")
        return out
    return []


def wrap_for_export(model: Any, detection: bool) -> Any:
    """A module whose forward takes batched tensors and returns a flat tuple of tensors."""
    import torch

    class FlatOutputs(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            result = self.inner(list(inputs[0].unbind(0))) if detection else self.inner(*inputs)
            return tuple(tensor for _name, tensor in flatten_outputs(result))

    return FlatOutputs(model).eval()


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence the exporters' warnings and progress prints (``--json`` must own stdout)."""
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        warnings.simplefilter("ignore")
        yield buffer


@dataclass
class ExportPlan:
    """What to export: the module, example inputs, names and which axes are dynamic."""

    module: Any
    inputs: tuple[Any, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic: bool
    dynamic_outputs: bool = False
    notes: list[str] = field(default_factory=list)


def export(plan: ExportPlan, path: str, exporter: str, opset: int | None) -> tuple[str, list[str]]:
    """Export ``plan`` to ``path``; ``auto`` tries TorchScript tracing, then torch.export (dynamo).

    Returns the exporter used and the errors of those that failed first.

    Raises:
        CkptMigrateError: every exporter tried failed (each error quoted).
    """
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    errors: list[str] = []
    for name in order:
        try:
            with quiet():
                (_export_torchscript if name == "torchscript" else _export_dynamo)(plan, path, opset)
            return name, errors
        except Exception as error:  # noqa: BLE001 - an exporter failure is reported, then the next one is tried
            errors.append(f"{name}: {type(error).__name__}: {_first_line(error)}")
    others = "" if exporter == "auto" else " (try --exporter auto)"
    raise CkptMigrateError(f"ONNX export failed{others}: {'; '.join(errors)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""


def _export_torchscript(plan: ExportPlan, path: str, opset: int | None) -> None:
    import torch

    axes: dict[str, dict[int, str]] = {}
    if plan.dynamic:
        axes.update({name: {0: "batch"} for name in plan.input_names + plan.output_names})
    elif plan.dynamic_outputs:
        axes.update({name: {0: "detections"} for name in plan.output_names})
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    torch.onnx.export(plan.module, plan.inputs, path, dynamo=False, input_names=plan.input_names,
                      output_names=plan.output_names, dynamic_axes=axes or None, do_constant_folding=True, **kwargs)


def _export_dynamo(plan: ExportPlan, path: str, opset: int | None) -> None:
    """torch.export traces a batch of 1 as a constant (0/1 specialization), so a dynamic batch is traced with 2."""
    import torch

    shapes = None
    inputs = plan.inputs
    if plan.dynamic:
        batch = torch.export.Dim("batch", min=1, max=4096)
        shapes = tuple({0: batch} for _ in inputs)
        if inputs[0].shape[0] == 1:
            inputs = tuple(torch.cat([x, x]) for x in inputs)
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    torch.onnx.export(plan.module, inputs, path, dynamo=True, input_names=plan.input_names,
                      output_names=plan.output_names, dynamic_shapes=shapes, external_data=False, **kwargs)


def make_inputs(shape: Sequence[int], count: int, half: bool, unit_range: bool) -> tuple[Any, ...]:
    """``count`` seeded random tensors of ``shape`` (uniform in [0, 1) for image-space models)."""
    import torch

    generator = torch.Generator().manual_seed(VERIFY_SEED)
    make = torch.rand if unit_range else torch.randn
    tensors = tuple(make(tuple(shape), generator=generator) for _ in range(count))
    return tuple(t.half() for t in tensors) if half else tensors


def check_file(path: str) -> None:
    """Raises: VerificationError: ``onnx.checker.check_model(full_check=True)`` rejects the file."""
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as error:  # noqa: BLE001 - checker and shape-inference errors have no common base
        raise VerificationError(f"the exported ONNX model fails onnx.checker: {_first_line(error)}") from None


def max_abs_diff(expected: Sequence[Any], actual: Sequence[Any], names: Sequence[str]) -> tuple[float, float]:
    """The largest absolute difference over every output (NaNs in the same places count as equal),
    and the largest absolute finite value torch produced (to judge the difference against).

    Raises:
        VerificationError: the number of outputs or a shape differs.
    """
    import numpy as np

    if len(expected) != len(actual):
        raise VerificationError(f"onnxruntime returned {len(actual)} outputs, torch {len(expected)}")
    worst = scale = 0.0
    for name, want, got in zip(names, expected, actual):
        want_np = want.detach().float().numpy() if want.is_floating_point() else want.detach().numpy()
        got_np = np.asarray(got)
        if tuple(want_np.shape) != tuple(got_np.shape):
            raise VerificationError(f"output {name!r}: onnxruntime shape {list(got_np.shape)}, torch {list(want_np.shape)}")
        if want_np.size == 0:
            continue
        a, b = want_np.astype(np.float64), got_np.astype(np.float64)
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        finite = a[np.isfinite(a)]
        scale = max(scale, float(np.abs(finite).max())) if finite.size else scale
        if (nan_a != nan_b).any():
            return float("inf"), scale
        diff = np.abs(np.where(nan_a, 0.0, a) - np.where(nan_b, 0.0, b))
        worst = max(worst, float(diff.max()))
    return worst, scale


def open_session(path: str) -> Any:
    """An onnxruntime CPU session on ``path`` that logs only errors (stderr stays one line per failure).

    Raises:
        VerificationError: onnxruntime cannot load the file.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own unrelated exception types
        raise VerificationError(f"onnxruntime cannot load the exported model: {_first_line(error)}") from None


def run_both(plan: ExportPlan, session: Any, inputs: tuple[Any, ...]) -> tuple[float, float]:
    """Run the torch model and the onnxruntime ``session`` on ``inputs``; return their max absolute
    difference and torch's largest output.

    Raises:
        VerificationError: onnxruntime cannot run the model, or outputs differ in count or shape.
    """
    import torch

    try:
        feeds = {meta.name: tensor.numpy() for meta, tensor in zip(session.get_inputs(), inputs)}
        actual = session.run(None, feeds)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own unrelated exception types
        raise VerificationError(f"onnxruntime cannot run the exported model: {_first_line(error)}") from None
    with torch.inference_mode():
        expected = [tensor for _name, tensor in flatten_outputs(plan.module(*inputs))]
    return max_abs_diff(expected, actual, plan.output_names)


def add_metadata(path: str, properties: dict[str, str]) -> None:
    """Record provenance in the ONNX file's ``metadata_props`` without re-reading the file.

    A serialized protobuf message followed by another serialized message of the same type parses
    as their merge (repeated fields concatenate), so appending a ``ModelProto`` that holds only
    ``metadata_props`` adds the entries in O(1), however large the weights are.
    """
    import onnx

    extra = onnx.ModelProto()
    for key, value in properties.items():
        extra.metadata_props.add(key=key, value=value)
    with open(path, "ab") as handle:
        handle.write(extra.SerializeToString())


def opset_of(path: str) -> int | None:
    """The default-domain opset the file imports."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


class OnnxWriter(Writer):
    """A verified ``.onnx`` file of the rebuilt architecture with the checkpoint's weights."""

    name = "onnx"
    description = "ONNX model (architecture rebuilt; checked with onnx.checker and onnxruntime)"
    suffixes = WRITER_SUFFIXES["onnx"]
    requires = ("onnx", "onnxruntime", "torch")

    def write(self, checkpoint: Checkpoint, dst: str, options: ConvertOptions) -> WriteReport:
        """Rebuild, export and verify; nothing is left at ``dst`` unless verification passes.

        Raises:
            ArchitectureError: no architecture fits, or the weights do not fit it.
            VerificationError: the checker rejects the file, or onnxruntime differs from torch by more than ``--atol``.
            UsageError: malformed ONNX options, or ``--dtype bf16``.
            MissingDependencyError: onnx or onnxruntime is not installed.
        """
        from ckpt_migrate.architectures.from_checkpoint import rebuild_checkpoint

        settings = ExportSettings.from_options(options)
        require_onnx()
        precision = precision_of(checkpoint)
        label = os.path.basename(dst)
        with phase("rebuilding the architecture", None):
            rebuilt = rebuild_checkpoint(checkpoint, arch=settings.arch, arch_kwargs=settings.arch_kwargs,
                                         trust_modules=settings.trust_modules)
            if precision == "fp16":
                rebuilt.model.half()
            plan = self.plan(rebuilt, settings, precision)
        atol = settings.atol if settings.atol is not None else DEFAULT_ATOL[precision]
        shape = tuple(plan.inputs[0].shape)
        diffs: dict[str, float] = {}
        scale = 0.0
        with atomic_path(dst, options.force) as tmp:
            with phase(f"exporting {label}", None):
                exporter, fallbacks = export(plan, tmp, settings.exporter, settings.opset)
                add_metadata(tmp, self.provenance(checkpoint, rebuilt, exporter))
            if options.verify:
                with phase(f"checking {label} with onnx.checker", None):
                    check_file(tmp)
                batches = [shape[0]] + ([shape[0] + 1] if plan.dynamic else [])
                unit = rebuilt.family in ("detection", "optical_flow")
                with phase(f"validating {label} with onnxruntime", len(batches), "batches") as step:
                    session = open_session(tmp)
                    for batch in batches:
                        inputs = make_inputs((batch, *shape[1:]), len(plan.inputs), precision == "fp16", unit)
                        diffs[str(batch)], largest = run_both(plan, session, inputs)
                        scale = max(scale, largest)
                        step.advance()
                    del session
                worst = max(diffs.values())
                if not worst <= atol:
                    raise VerificationError(
                        f"onnxruntime output differs from torch by {worst:.3g}, more than --atol {atol:g} "
                        f"(torch outputs reach {scale:.3g}); nothing was written (raise --atol, or try --exporter "
                        f"{'dynamo' if exporter == 'torchscript' else 'torchscript'})")
            opset = opset_of(tmp)
        details: dict[str, Any] = {
            "architecture": rebuilt.builder, "arch_kwargs": rebuilt.kwargs, "rebuilt_from": rebuilt.how,
            "exporter": exporter, "opset": opset, "input_shape": list(shape), "inputs": plan.input_names,
            "outputs": plan.output_names, "dynamic_batch": plan.dynamic, "dtype": precision, "atol": atol,
        }
        if options.verify:
            details["max_abs_diff"] = max(diffs.values())
            details["verified_batches"] = [int(b) for b in diffs]
            details["max_abs_output"] = scale
        if fallbacks:
            details["exporter_fallback"] = fallbacks
        if plan.notes:
            details["notes"] = plan.notes
        return WriteReport([dst], rebuilt.loaded, os.path.getsize(dst), options.verify, details)

    @staticmethod
    def plan(rebuilt: Any, settings: ExportSettings, precision: str) -> ExportPlan:
        """Example inputs, names and dynamic axes for the rebuilt model.

        Raises:
            UsageError: the model does not run on the example input (pass ``--input-shape``).
        """
        import torch

        family = rebuilt.family
        shape = settings.input_shape or default_input_shape(rebuilt.builder, family, rebuilt.model)
        count = 2 if family == "optical_flow" else 1
        names = ["image1", "image2"] if count == 2 else ["input"]
        detection = family == "detection"
        notes: list[str] = list(rebuilt.notes)
        dynamic = not settings.static
        if detection and dynamic:
            dynamic = False
            notes.append("detection models take a list of images: exported with a fixed batch size")
        inputs = make_inputs(shape, count, precision == "fp16", detection or family == "optical_flow")
        try:
            with torch.inference_mode(), quiet():
                sample = rebuilt.model(list(inputs[0].unbind(0))) if detection else rebuilt.model(*inputs)
        except Exception as error:  # noqa: BLE001 - any failure of user or torchvision code on the example input
            raise UsageError(f"{rebuilt.builder} does not run on an input of shape {list(shape)} "
                             f"({type(error).__name__}: {_first_line(error)}); pass --input-shape N,C,H,W") from None
        flat = flatten_outputs(sample)
        if not flat:
            raise CkptMigrateError(f"{rebuilt.builder} returned {type(sample).__name__}, not tensors; it cannot be exported to ONNX")
        module = rebuilt.model
        if detection or not isinstance(sample, torch.Tensor):
            module = wrap_for_export(rebuilt.model, detection)
        return ExportPlan(module, inputs, names, [name for name, _ in flat], dynamic, detection, notes)

    @staticmethod
    def provenance(checkpoint: Checkpoint, rebuilt: Any, exporter: str) -> dict[str, str]:
        """``metadata_props`` of the ONNX file: source, hash, tool, architecture and exporter."""
        import json

        meta = checkpoint.meta
        out = {key: str(meta[key]) for key in ("source_sha256", "tool") if meta.get(key)}
        if source_label(meta):
            out["source"] = source_label(meta)
        out.update(architecture=rebuilt.builder, arch_kwargs=json.dumps(rebuilt.kwargs, sort_keys=True, default=str), exporter=exporter)
        return out
