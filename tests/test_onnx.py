"""The ONNX writer: rebuild the architecture, export, check with onnx.checker, compare with onnxruntime."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from click.testing import CliRunner

import ckpt_migrate.converters.registry as registry
from ckpt_migrate.cli import main_group
import ckpt_migrate.converters.writers.onnx_export as onnx_
from ckpt_migrate.options import ConvertOptions, parse_input_shape
from ckpt_migrate.errors import UsageError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def cli(*args: str) -> SimpleNamespace:
    """Run the CLI in-process; return exit code, stdout and stderr."""
    result = CliRunner().invoke(main_group, list(args))
    return SimpleNamespace(code=result.exit_code, out=result.stdout, err=result.stderr)


def ort_run(path: Path, *inputs: np.ndarray) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {meta.name: x for meta, x in zip(session.get_inputs(), inputs)})


def seeded_input(*shape: int, seed: int = 123) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def onnx_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".onnx" in p.name)


@pytest.fixture()
def user_model(monkeypatch: pytest.MonkeyPatch) -> object:
    """The test module ``helpers_user_model``, importable under that name (as a user's package would be)."""
    monkeypatch.syspath_prepend(str(HERE))
    return importlib.import_module("helpers_user_model")


def test_registered_for_onnx_suffix() -> None:
    assert "onnx" in registry.list_writers()
    assert registry.writer_for_destination("out/model.onnx") == "onnx"
    writer = registry.get_writer("onnx")
    assert writer.requires == ("onnx", "onnxruntime", "torch")


def test_vgg16_two_classes_state_dict_to_verified_onnx(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = torchvision.models.vgg16(weights=None, num_classes=2).eval()
    src, dst = tmp_path / "vgg16_state_dict.pth", tmp_path / "vgg16.onnx"
    torch.save(model.state_dict(), src)
    run = cli("convert", str(src), str(dst))
    assert run.code == 0, run.err
    assert "architecture: vgg16 (num_classes=2); torchscript exporter" in run.out
    assert "input [1, 3, 224, 224] fp32, dynamic batch" in run.out
    assert "verified with onnxruntime, max abs diff" in run.out
    assert onnx_files(tmp_path) == ["vgg16.onnx"]
    x = seeded_input(2, 3, 224, 224)
    (logits,) = ort_run(dst, x.numpy())
    with torch.inference_mode():
        expected = model(x).numpy()
    assert logits.shape == (2, 2)
    assert np.abs(logits - expected).max() < 1e-4
    props = {p.key: p.value for p in onnx.load(str(dst), load_external_data=False).metadata_props}
    assert props["architecture"] == "vgg16" and json.loads(props["arch_kwargs"]) == {"num_classes": 2}
    assert props["source"] == src.name and len(props["source_sha256"]) == 64


def test_full_model_resnet18_without_arch_has_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    src, dst = tmp_path / "resnet18_full.pth", tmp_path / "resnet18.onnx"
    torch.save(model, src)
    run = cli("convert", str(src), str(dst), "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    details = report["details"]
    assert report["kind"] == "full_model" and report["format"] == "onnx" and report["verified"] is True
    assert (details["architecture"], details["arch_kwargs"], details["rebuilt_from"]) == ("resnet18", {"num_classes": 5}, "full_model")
    assert details["dynamic_batch"] is True and details["verified_batches"] == [1, 2]
    assert 0 <= details["max_abs_diff"] <= 1e-4 and details["atol"] == 1e-4
    assert report["tensors"] == len(model.state_dict())
    for batch in (1, 3):
        x = seeded_input(batch, 3, 224, 224, seed=batch)
        (logits,) = ort_run(dst, x.numpy())
        with torch.inference_mode():
            assert np.abs(logits - model(x).numpy()).max() < 1e-4
        assert logits.shape == (batch, 5)


def test_static_export_has_a_fixed_batch(tmp_path: Path, user_model: object) -> None:
    torch.manual_seed(0)
    src, dst = tmp_path / "tiny.pth", tmp_path / "tiny.onnx"
    torch.save(user_model.TinyNet(num_classes=3).state_dict(), src)
    run = cli("convert", str(src), str(dst), "--arch", "helpers_user_model:TinyNet", "--arch-kwargs", '{"num_classes": 3}',
              "--input-shape", "1,3,8,8", "--static", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["details"]["verified_batches"] == [1]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        ort_run(dst, seeded_input(2, 3, 8, 8).numpy())


def test_detection_model_identified_by_inspect(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    src = tmp_path / "detector.pth"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 7}, src)
    run = cli("inspect", str(src), "--json")
    assert run.code == 0, run.err
    arch = json.loads(run.out)["architecture"]
    assert arch["found"] is True and arch["prefix"] == "module."
    assert [(m["builder"], m["kwargs"]) for m in arch["exact"]] == [
        ("fasterrcnn_mobilenet_v3_large_fpn", {"num_classes": 3}),
        ("fasterrcnn_mobilenet_v3_large_320_fpn", {"num_classes": 3}),
    ]
    human = cli("inspect", str(src), "--limit", "1")
    assert human.code == 0
    assert ("architecture: fasterrcnn_mobilenet_v3_large_fpn (num_classes=3) (keys under 'module.'); "
            "also fits fasterrcnn_mobilenet_v3_large_320_fpn (num_classes=3)") in human.out


def test_inspect_shows_nearest_candidates(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None, num_classes=4).state_dict()
    del state["fc.bias"]
    src = tmp_path / "broken.pth"
    torch.save(state, src)
    run = cli("inspect", str(src), "--limit", "1")
    assert run.code == 0
    assert "architecture: no torchvision architecture fits exactly; nearest:" in run.out
    assert "resnet18 (num_classes=4)" in run.out and "1 missing key (fc.bias)" in run.out


def test_user_code_arch_with_kwargs(tmp_path: Path, user_model: object) -> None:
    torch.manual_seed(0)
    model = user_model.TinyNet(num_classes=5, width=6).eval()
    src, dst = tmp_path / "tiny_state.pth", tmp_path / "tiny.onnx"
    torch.save({"model_state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "epoch": 2}, src)
    run = cli("convert", str(src), str(dst), "--arch", "helpers_user_model:TinyNet",
              "--arch-kwargs", '{"num_classes": 5, "width": 6}', "--input-shape", "2,3,16,16", "--json")
    assert run.code == 0, run.err
    details = json.loads(run.out)["details"]
    assert details["architecture"] == "helpers_user_model:TinyNet" and details["rebuilt_from"] == "arch"
    assert details["input_shape"] == [2, 3, 16, 16] and details["verified_batches"] == [2, 3]
    x = seeded_input(4, 3, 16, 16)
    (logits,) = ort_run(dst, x.numpy())
    with torch.inference_mode():
        assert np.abs(logits - model(x).numpy()).max() < 1e-5


def test_user_code_kwargs_that_do_not_fit(tmp_path: Path, user_model: object) -> None:
    torch.manual_seed(0)
    src, dst = tmp_path / "tiny_state.pth", tmp_path / "tiny.onnx"
    torch.save(user_model.TinyNet(num_classes=5, width=6).state_dict(), src)
    run = cli("convert", str(src), str(dst), "--arch", "helpers_user_model:TinyNet", "--input-shape", "1,3,8,8")
    assert run.code == 1
    assert "conv.weight: weights [6, 3, 3, 3], model [8, 3, 3, 3]" in run.err
    assert "head.weight: weights [5, 6], model [4, 8]" in run.err
    assert len(run.err.strip().splitlines()) == 1 and not dst.exists()


def test_full_model_of_user_class_needs_trust_module(tmp_path: Path, user_model: object) -> None:
    torch.manual_seed(0)
    model = user_model.TinyNet(num_classes=3).eval()
    src, dst = tmp_path / "tiny_full.pth", tmp_path / "tiny.onnx"
    torch.save(model, src)
    refused = cli("convert", str(src), str(dst), "--input-shape", "1,3,8,8")
    assert refused.code == 1
    assert "cannot rebuild the whole model of class helpers_user_model.TinyNet" in refused.err
    assert "--trust-module helpers_user_model" in refused.err and "--arch package.module:Class" in refused.err
    assert not dst.exists()
    run = cli("convert", str(src), str(dst), "--trust-module", "helpers_user_model", "--arch-kwargs", '{"num_classes": 3}',
              "--input-shape", "1,3,8,8", "--json")
    assert run.code == 0, run.err
    details = json.loads(run.out)["details"]
    assert (details["architecture"], details["rebuilt_from"]) == ("helpers_user_model:TinyNet", "trusted")
    x = seeded_input(2, 3, 8, 8)
    with torch.inference_mode():
        assert np.abs(ort_run(dst, x.numpy())[0] - model(x).numpy()).max() < 1e-5


def test_trust_module_main_is_a_usage_error(tmp_path: Path, user_model: object) -> None:
    src = tmp_path / "tiny.pth"
    torch.save(user_model.TinyNet().state_dict(), src)
    run = cli("convert", str(src), str(tmp_path / "x.onnx"), "--trust-module", "__main__")
    assert run.code == 2
    assert "--trust-module __main__ is not allowed" in run.err


def test_main_stub_names_the_ways_out(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import sys, torch
        from torch import nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)
            def forward(self, x):
                return self.fc(x).tanh() * 3
        torch.manual_seed(0)
        torch.save(Net(), sys.argv[1])
    """))
    src, dst = tmp_path / "entire_model.pt", tmp_path / "model.onnx"
    subprocess.run([sys.executable, str(script), str(src)], check=True, cwd=tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "ckpt_migrate", "convert", str(src), str(dst)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith(f"ckpt-migrate: error: {src}: cannot rebuild the whole model of class __main__.Net, "
                               "defined in the training script (__main__)")
    assert "--arch package.module:Class" in lines[0] and "ckpt-migrate convert SRC weights.safetensors" in lines[0]
    assert "--trust-module" not in lines[0]
    assert onnx_files(tmp_path) == []


def test_unknown_state_dict_names_the_ways_out(tmp_path: Path) -> None:
    src = tmp_path / "mystery.pth"
    torch.save({"encoder.w": torch.zeros(3, 3), "decoder.w": torch.zeros(3)}, src)
    run = cli("convert", str(src), str(tmp_path / "m.onnx"))
    assert run.code == 1
    assert "no torchvision architecture shares keys" in run.err
    assert "--arch package.module:Class" in run.err and "weights.safetensors" in run.err
    assert onnx_files(tmp_path) == []


def test_atol_exceeded_leaves_no_output(tmp_path: Path, user_model: object, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    src, dst = tmp_path / "tiny.pth", tmp_path / "tiny.onnx"
    torch.save(user_model.TinyNet().state_dict(), src)
    monkeypatch.setattr(onnx_, "run_both", lambda plan, session, inputs: (0.25, 3.0))
    run = cli("convert", str(src), str(dst), "--arch", "helpers_user_model:TinyNet", "--input-shape", "1,3,8,8", "--atol", "0.1")
    assert run.code == 1
    assert run.err.strip() == (f"ckpt-migrate: error: {src}: onnxruntime output differs from torch by 0.25, more than --atol 0.1 "
                               "(torch outputs reach 3); nothing was written (raise --atol, or try --exporter dynamo)")
    assert onnx_files(tmp_path) == []


def test_fp16_artifact_and_atol_zero(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    src, dst = tmp_path / "r18.pth", tmp_path / "r18_fp16.onnx"
    torch.save(model.state_dict(), src)
    run = cli("convert", str(src), str(dst), "--dtype", "fp16", "--input-shape", "1,3,64,64", "--json")
    assert run.code == 0, run.err
    details = json.loads(run.out)["details"]
    assert details["dtype"] == "fp16" and details["atol"] == 1e-2
    diff = details["max_abs_diff"]
    assert 0 < diff <= 1e-2
    graph = onnx.load(str(dst)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {init.data_type for init in graph.initializer if init.name.endswith("weight")} == {onnx.TensorProto.FLOAT16}
    dst.unlink()
    strict = cli("convert", str(src), str(dst), "--dtype", "fp16", "--input-shape", "1,3,64,64", "--atol", "0")
    assert strict.code == 1
    assert f"differs from torch by {diff:.3g}, more than --atol 0 " in strict.err
    assert onnx_files(tmp_path) == []


def test_bf16_is_refused(tmp_path: Path, user_model: object) -> None:
    src = tmp_path / "tiny.pth"
    torch.save(user_model.TinyNet().state_dict(), src)
    run = cli("convert", str(src), str(tmp_path / "t.onnx"), "--arch", "helpers_user_model:TinyNet", "--dtype", "bf16")
    assert run.code == 2 and "--dtype bf16 cannot be exported to ONNX" in run.err


def test_dynamo_exporter_with_dynamic_batch(tmp_path: Path, user_model: object) -> None:
    torch.manual_seed(0)
    model = user_model.TinyNet(num_classes=2).eval()
    src, dst = tmp_path / "tiny.pth", tmp_path / "tiny.onnx"
    torch.save(model.state_dict(), src)
    run = cli("convert", str(src), str(dst), "--arch", "helpers_user_model:TinyNet", "--arch-kwargs", '{"num_classes": 2}',
              "--input-shape", "1,3,12,12", "--exporter", "dynamo", "--opset", "18", "--json")
    assert run.code == 0, run.err
    details = json.loads(run.out)["details"]
    assert (details["exporter"], details["opset"], details["verified_batches"]) == ("dynamo", 18, [1, 2])
    x = seeded_input(3, 3, 12, 12)
    with torch.inference_mode():
        assert np.abs(ort_run(dst, x.numpy())[0] - model(x).numpy()).max() < 1e-5


def test_segmentation_outputs_are_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3, aux_loss=True).eval()
    src, dst = tmp_path / "seg.pth", tmp_path / "seg.onnx"
    torch.save(model.state_dict(), src)
    run = cli("convert", str(src), str(dst), "--input-shape", "1,3,64,64", "--json", "--atol", "1e-3")
    assert run.code == 0, run.err
    details = json.loads(run.out)["details"]
    assert (details["architecture"], details["arch_kwargs"]) == ("deeplabv3_mobilenet_v3_large", {"aux_loss": True, "num_classes": 3, "weights_backbone": None})
    assert details["outputs"] == ["out", "aux"]
    x = seeded_input(2, 3, 64, 64)
    out, aux = ort_run(dst, x.numpy())
    with torch.inference_mode():
        expected = model(x)
    assert out.shape == (2, 3, 64, 64) and aux.shape == (2, 3, 64, 64)
    scale = float(expected["out"].abs().max())
    assert np.abs(out - expected["out"].numpy()).max() <= 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize(("args", "message"), [
    (("--input-shape", "1,3,abc"), "--input-shape '1,3,abc': expected positive integers"),
    (("--input-shape", "1,3"), "does not run on an input of shape [1, 3]"),
])
def test_bad_input_shape_is_a_usage_error(tmp_path: Path, user_model: object, args: tuple[str, ...], message: str) -> None:
    src = tmp_path / "tiny.pth"
    torch.save(user_model.TinyNet().state_dict(), src)
    run = cli("convert", str(src), str(tmp_path / "t.onnx"), "--arch", "helpers_user_model:TinyNet", *args)
    assert run.code == 2, run.err
    assert message in run.err and len(run.err.strip().splitlines()) == 1


@pytest.mark.parametrize(("text", "shape"), [("1,3,224,224", (1, 3, 224, 224)), ("2x3x32x32", (2, 3, 32, 32)),
                                             (" (1, 3, 16, 112, 112) ", (1, 3, 16, 112, 112))])
def test_parse_input_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "3", "1,0,2", "1,-3,4", "a,b"])
def test_parse_input_shape_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_input_shape(text)


@pytest.mark.parametrize(("builder", "family", "model", "shape"), [
    ("vgg16", "classification", None, (1, 3, 224, 224)),
    ("inception_v3", "classification", None, (1, 3, 299, 299)),
    ("deeplabv3_resnet50", "segmentation", None, (1, 3, 520, 520)),
    ("ssdlite320_mobilenet_v3_large", "detection", SimpleNamespace(transform=SimpleNamespace(min_size=(320,))), (1, 3, 320, 320)),
    ("fasterrcnn_resnet50_fpn", "detection", SimpleNamespace(transform=SimpleNamespace(min_size=(800,))), (1, 3, 800, 800)),
    ("r3d_18", "video", None, (1, 3, 16, 112, 112)),
    ("mvit_v2_s", "video", None, (1, 3, 16, 224, 224)),
    ("raft_small", "optical_flow", None, (1, 3, 224, 224)),
    ("pkg.mod:Net", None, None, (1, 3, 224, 224)),
])
def test_default_input_shapes(builder: str, family: str | None, model: object, shape: tuple[int, ...]) -> None:
    assert onnx_.default_input_shape(builder, family, model) == shape


def test_flatten_outputs_names() -> None:
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    assert [n for n, _ in onnx_.flatten_outputs(a)] == ["output"]
    assert [n for n, _ in onnx_.flatten_outputs({"out": a, "aux": b})] == ["out", "aux"]
    assert [n for n, _ in onnx_.flatten_outputs([{"boxes": a, "scores": b}])] == ["boxes", "scores"]
    assert [n for n, _ in onnx_.flatten_outputs((a, [b, c]))] == ["output_0", "output_1_0", "output_1_1"]
    assert onnx_.flatten_outputs("not a tensor") == []


def test_max_abs_diff() -> None:
    want = [torch.tensor([1.0, float("nan"), -4.0]), torch.tensor([3, 4])]
    diff, scale = onnx_.max_abs_diff(want, [np.array([1.5, np.nan, -4.0]), np.array([3, 4])], ["a", "b"])
    assert (diff, scale) == (0.5, 4.0)
    diff, _ = onnx_.max_abs_diff(want[:1], [np.array([1.0, 0.0, -4.0])], ["a"])
    assert diff == float("inf")
    with pytest.raises(onnx_.VerificationError, match="output 'a': onnxruntime shape \\[2\\], torch \\[3\\]"):
        onnx_.max_abs_diff(want[:1], [np.zeros(2)], ["a"])


@pytest.mark.parametrize(("extra", "message"), [
    ({"exporter": "magic"}, "--exporter"), ({"opset": 3}, "--opset"), ({"atol": -1.0}, "--atol"),
    ({"arch_kwargs": [1]}, "--arch-kwargs"),
])
def test_export_settings_reject(extra: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ConvertOptions(**extra)


@pytest.mark.parametrize("form", ["dataparallel", "torchscript"])
def test_wrapped_and_scripted_torchvision_models_are_rebuilt(tmp_path: Path, form: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(weights=None, num_classes=3).eval()
    src, dst = tmp_path / f"{form}.pt", tmp_path / f"{form}.onnx"
    if form == "dataparallel":
        torch.save(torch.nn.DataParallel(model), src)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.script(model), src)
    run = cli("convert", str(src), str(dst), "--input-shape", "1,3,64,64", "--json")
    assert run.code == 0, run.err
    details = json.loads(run.out)["details"]
    assert (details["architecture"], details["arch_kwargs"]) == ("squeezenet1_1", {"num_classes": 3})
    x = seeded_input(2, 3, 64, 64)
    with torch.inference_mode():
        assert np.abs(ort_run(dst, x.numpy())[0] - model(x).numpy()).max() < 1e-5
