"""TorchScript archives: state_dict names from code/ declarations, packed quantized params, constants.pkl."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List

import torch
from safetensors.torch import load_file

from ckpt_migrate.api import convert, inspect, load
from ckpt_migrate.converters.readers.torchscript_code import parse_declarations
from ckpt_migrate.model.equality import same_tensor as bytes_equal

from conftest import run_cli

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)


class DynNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.gru = torch.nn.GRU(8, 16, num_layers=2, batch_first=True)
        self.lstm = torch.nn.LSTM(16, 8, bidirectional=True)
        self.fc = torch.nn.Linear(16, 5)
        self.register_buffer("p_buf", torch.arange(4.0))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        o, _ = self.gru(s)
        o2, _ = self.lstm(o)
        return self.bn(self.conv(x)).sum() + self.fc(o2).sum() + self.p_buf.sum()


class CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 4, 3, bias=False))
        self.clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.clf(self.features(self.quant(x))))


class Streaming(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.frames = torch.jit.Attribute([torch.zeros(1, 4) for _ in range(3)], List[torch.Tensor])
        self.hidden = torch.ones(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.frames[0]) + self.hidden.sum()


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("b", torch.arange(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.b


def _dynamic(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.jit.ScriptModule]:
    torch.manual_seed(0)
    quantized = torch.ao.quantization.quantize_dynamic(DynNet().eval(), {torch.nn.GRU, torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8)
    scripted = torch.jit.script(quantized)
    path = tmp_path / "dyn.pt"
    scripted.save(str(path))
    return path, quantized, scripted


def _same_quantized(written: torch.Tensor, expected: torch.Tensor) -> bool:
    return bytes_equal(written, expected.int_repr() if expected.is_quantized else expected)


def test_declarations_are_parsed_from_text() -> None:
    code = ('class Net(Module):\n  __parameters__ = ["weight", "bias", ]\n  __buffers__ = ["running", ]\n'
            '  weight : Tensor\n  bias : Optional[Tensor]\n  fc : __torch__.torch.nn.modules.linear.Linear\n'
            '  __annotations__["0"] = __torch__.X\n  def forward(self: __torch__.Net,\n    x : Tensor) -> Tensor:\n    y : int = 1\n')
    decls = parse_declarations({"__torch__.py": code, "__torch__/a/___torch_mangle_3.py": "class B(NamedTuple):\n  x : int\n"})
    net = decls["__torch__.Net"]
    assert net.parameters == ["weight", "bias"] and net.buffers == ["running"] and net.is_module
    assert net.attributes == {"weight": "Tensor", "bias": "Optional[Tensor]", "fc": "__torch__.torch.nn.modules.linear.Linear", "0": "__torch__.X"}
    assert not decls["__torch__.a.___torch_mangle_3.B"].is_module


def test_dynamic_quantized_gru_lstm_linear_unpacked_bit_exact(tmp_path: Path) -> None:
    path, quantized, scripted = _dynamic(tmp_path)
    checkpoint = load(path)
    assert checkpoint.format == "torchscript" and checkpoint.kind == "torchscript"
    got = checkpoint.materialize()
    for name, tensor in scripted.state_dict().items():
        assert bytes_equal(got[name], tensor), name
    for rnn in ("gru", "lstm"):
        weights = getattr(quantized, rnn)._weight_bias()
        expected = {**weights["weight"], **weights["bias"]}
        assert len(expected) == (8 if rnn == "lstm" else 8)
        for key, tensor in expected.items():
            ref = checkpoint.tensors[f"{rnn}.{key}"]
            assert _same_quantized(got[f"{rnn}.{key}"], tensor), key
            if tensor.is_quantized:
                assert ref.quantization["params"][0] == tensor.q_scale()
    weight, bias = quantized.fc._weight_bias()
    assert _same_quantized(got["fc.weight"], weight) and bytes_equal(got["fc.bias"], bias)
    assert float(got["fc.scale"]) == quantized.fc.scale and int(got["fc.zero_point"]) == quantized.fc.zero_point
    assert not checkpoint.account.unexplained
    assert {e.status for e in checkpoint.account.entries} == {"written"}


def test_dynamic_quantized_cli_writes_int8_weights(tmp_path: Path) -> None:
    path, quantized, _ = _dynamic(tmp_path)
    out = tmp_path / "dyn.safetensors"
    proc = run_cli("convert", str(path), str(out))
    assert proc.returncode == 0, proc.stderr
    written = load_file(str(out))
    expected = quantized.gru._weight_bias()["weight"]["weight_hh_l1"]
    assert written["gru.weight_hh_l1"].dtype == torch.int8 and bytes_equal(written["gru.weight_hh_l1"], expected.int_repr())


def test_static_quantized_cnn_gets_state_dict_names(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = CNN().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    torch.ao.quantization.fuse_modules(model, [["features.0", "features.1", "features.2"]], inplace=True)
    prepared = torch.ao.quantization.prepare(model)
    for _ in range(3):
        prepared(torch.randn(2, 3, 8, 8))
    quantized = torch.ao.quantization.convert(prepared)
    path = tmp_path / "static.pt"
    torch.jit.script(quantized).save(str(path))
    got = load(path).materialize()
    eager = quantized.state_dict()
    for name in ("quant.scale", "quant.zero_point", "features.0.weight", "features.0.bias", "features.0.scale",
                 "features.0.zero_point", "features.3.weight", "features.3.scale", "features.3.zero_point"):
        assert _same_quantized(got[name], eager[name]), name
    assert bytes_equal(got["features.0.weight.q_per_channel_scales"], eager["features.0.weight"].q_per_channel_scales())
    weight, bias = quantized.clf[1]._weight_bias()
    assert _same_quantized(got["clf.1.weight"], weight) and bytes_equal(got["clf.1.bias"], bias)
    assert bytes_equal(got["clf.1.scale"], eager["clf.1.scale"]) and bytes_equal(got["clf.1.zero_point"], eager["clf.1.zero_point"])
    assert not any(k.startswith("clf.0.") or ".1." in k.split("clf.1.")[-1] for k in got if k.startswith("clf"))


def test_lite_interpreter_and_frozen_constants_are_recovered(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = Small().eval()
    lite = tmp_path / "plain.ptl"
    torch.jit.script(model)._save_for_lite_interpreter(str(lite))
    got = load(lite).materialize()
    assert sorted(got) == sorted(model.state_dict())
    assert all(bytes_equal(got[k], v) for k, v in model.state_dict().items())
    frozen = torch.jit.freeze(torch.jit.script(model))
    for name, save in (("frozen.pt", frozen.save), ("frozen.ptl", frozen._save_for_lite_interpreter)):
        save(str(tmp_path / name))
        out = tmp_path / f"{name}.safetensors"
        convert(tmp_path / name, out)
        written = load_file(str(out))
        assert bytes_equal(written["CONSTANTS.c0"], model.fc.weight.detach())
        assert bytes_equal(written["CONSTANTS.c1"], model.fc.bias.detach())
        assert bytes_equal(written["CONSTANTS.c2"], model.b)


def test_runtime_attributes_are_left_out_with_a_reason(tmp_path: Path) -> None:
    model = Streaming().eval()
    path = tmp_path / "stream.pt"
    torch.jit.script(model).save(str(path))
    report = inspect(path)
    assert [t["name"] for t in report.tensors] == ["fc.weight", "fc.bias"]
    left = [s for s in report.storages["storages"] if s["status"] == "left out"]
    assert {s["where"] for s in left} == {"frames.0", "frames.1", "frames.2", "hidden"}
    assert all("runtime attribute of a scripted module" in s["reason"] for s in left)
    assert "UNEXPLAINED" not in report.storages["summary"]
