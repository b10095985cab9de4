"""Issue 11's call policy: unknown calls are inert records, gadgets still refuse the file, nothing ever runs.

Fixtures are pickled with ``torch.save`` from the classes in ``helpers_calls`` (enums like
Ultralytics' and Hugging Face's, a TrainingArguments-like dataclass, ``functools.partial`` in
Lightning-like hyper-parameters). The commands run in a child process under an audit hook with
``CKPT_CALLS_MARKER_DIR`` set, so importing or calling anything in ``helpers_calls`` leaves a marker.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import helpers_calls as H
import payloads as P
import ckpt_migrate.api as api
from ckpt_migrate.errors import UnsafeFileError
from ckpt_migrate.reports.scan import scan_file


def _model() -> torch.nn.Module:
    torch.manual_seed(11)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))


def _fixtures(tmp_path: Path) -> tuple[dict[str, Path], dict[str, torch.Tensor]]:
    model = _model()
    state = model.state_dict()
    files = {
        "ultralytics": {"model": None, "ema": None, "state_dict": state,
                        "train_args": {"imgsz": 224, "interpolation": H.InterpolationMode.BILINEAR}},
        "lightning": {"state_dict": state, "epoch": 3, "pytorch-lightning_version": "2.1.0",
                      "hyper_parameters": {"optimizer": functools.partial(H.make_optimizer, lr=0.01, weight_decay=0.0),
                                           "strategy": H.IntervalStrategy.EPOCH}},
        "training_args": H.TrainingArguments(),
    }
    paths = {}
    for name, obj in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(obj, paths[name])
    return paths, state


def test_unknown_calls_are_inert_records_and_nothing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, state = _fixtures(tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("CKPT_CALLS_MARKER_DIR", str(markers))
    out = tmp_path / "out"
    out.mkdir()
    jobs = []
    for name in ("ultralytics", "lightning"):
        jobs.append({"id": f"convert-{name}", "args": ["convert", str(paths[name]), str(out / f"{name}.safetensors")]})
        jobs.append({"id": f"strict-{name}", "args": ["convert", str(paths[name]), str(out / f"{name}-strict.safetensors"), "--strict-calls"]})
    for name in paths:
        jobs.append({"id": f"scan-{name}", "args": ["scan", str(paths[name]), "--json"]})
        jobs.append({"id": f"scan-strict-{name}", "args": ["scan", str(paths[name]), "--strict-calls"]})
        jobs.append({"id": f"inspect-{name}", "args": ["inspect", str(paths[name]), "--json"]})
    results = P.run_audited(jobs, [], tmp_path)
    assert list(markers.iterdir()) == [], "something named by a file was imported or called"
    for name in ("ultralytics", "lightning"):
        done = results[f"convert-{name}"]
        assert done["code"] == 0, done["stderr"]
        warnings = [line for line in (done["stdout"] + done["stderr"]).splitlines() if "warning:" in line and "unknown call" in line]
        assert len(warnings) == 1, done["stdout"] + done["stderr"]
        written = load_file(str(out / f"{name}.safetensors"))
        assert set(written) == set(state)
        assert all(torch.equal(written[k], state[k]) for k in state)
        assert all(str(out) in e for e in done["events"]), done["events"]
        strict = results[f"strict-{name}"]
        assert strict["code"] == 3 and len(strict["stderr"].strip().splitlines()) == 1, strict["stderr"]
        assert "--strict-calls" in strict["stderr"] and not (out / f"{name}-strict.safetensors").exists()
    expected_calls = {"ultralytics": ["helpers_calls.InterpolationMode"],
                      "lightning": ["functools.partial", "helpers_calls.IntervalStrategy"],
                      "training_args": ["helpers_calls.IntervalStrategy", "helpers_calls.SchedulerType"]}
    for name, calls in expected_calls.items():
        document = json.loads(results[f"scan-{name}"]["stdout"])
        found = document["files"][0]
        assert results[f"scan-{name}"]["code"] == 0 and found["verdict"] == "unknown-calls"
        assert sorted(found["unknown_calls"]) == calls and found["refused"] == []
        offsets = [g["offset"] for g in found["globals"] if g["verdict"] == "unknown-call"]
        assert all(isinstance(o, int) and o > 0 for o in offsets)
        assert results[f"scan-strict-{name}"]["code"] == 3
        report = json.loads(results[f"inspect-{name}"]["stdout"])
        assert results[f"inspect-{name}"]["code"] == 0 and report["verdict"] == "unknown-calls"
        assert all(call in report["warning"] for call in calls)
    for job in results.values():
        assert not any("helpers_calls" in e or e.startswith(("os.system", "subprocess")) for e in job["events"]), job


def test_records_keep_names_and_arguments_as_data(tmp_path: Path) -> None:
    paths, _ = _fixtures(tmp_path)
    checkpoint = api.load(paths["lightning"])
    hparams = checkpoint.extras["hyper_parameters"]
    partial = hparams["optimizer"]
    assert partial.func.dotted == "functools.partial" and partial.args[0].dotted == "helpers_calls.make_optimizer"
    assert partial.state[2] == {"lr": 0.01, "weight_decay": 0.0}
    assert hparams["strategy"].func.dotted == "helpers_calls.IntervalStrategy" and hparams["strategy"].args == ("epoch",)
    verdicts = {g.name: g.verdict for g in checkpoint.globals}
    assert verdicts["functools.partial"] == "unknown-call" and verdicts["helpers_calls.make_optimizer"] == "stub"
    with pytest.raises(UnsafeFileError):
        api.load(paths["lightning"], strict_calls=True)
    accepted = api.load(paths["lightning"], strict_calls=True, allow_calls=["functools.partial", "helpers_calls.IntervalStrategy"])
    assert {g.name: g.verdict for g in accepted.globals}["functools.partial"] == "allowed"


def test_curated_benign_enums_are_clean_even_under_strict_calls(tmp_path: Path) -> None:
    from torchvision.transforms import InterpolationMode

    src = tmp_path / "tv.pt"
    torch.save({"state_dict": _model().state_dict(), "interpolation": InterpolationMode.BICUBIC}, src)
    for strict in (False, True):
        found = scan_file(str(src), strict_calls=strict)
        assert found.verdict == "clean", found.message
    verdict = {g.name: g for g in api.load(src, strict_calls=True).globals}["torchvision.transforms.functional.InterpolationMode"]
    assert verdict.verdict == "allowed" and "curated" in verdict.reason


def _hidden_gadgets(canary: Path) -> dict[str, bytes]:
    touch = f"touch {canary}"
    partial_of_gadget = (P.global_op("functools", "partial") + b"(" + P.global_op("os", "system") + P.text(touch, 2) + b"tR")
    return {
        "partial-in-hparams": P.chain_pickle(b"}" + P.text("hyper_parameters", 2) + b"}" + P.text("optimizer", 2)
                                             + partial_of_gadget + b"s" + b"s"),
        "argument-of-unknown-call": P.chain_pickle(P.global_op("helpers_calls", "make_optimizer") + b"("
                                                   + P.global_op("subprocess", "getoutput") + P.text(touch, 2) + b"tR"),
        "partial-argument-of-enum": P.chain_pickle(P.global_op("helpers_calls", "IntervalStrategy") + b"("
                                                   + partial_of_gadget + b"tR"),
        "enum-looking-gadget": P.chain_pickle(b"\x80\x04" + P.stack_global("posix", "system") + b"(" + P.text(touch, 4) + b"tR"),
        "curated-name-reexported-gadget": P.call_pickle("torchvision.transforms.functional.os", "system", [touch]),
        "curated-enum-with-gadget-argument": P.chain_pickle(P.global_op("torchvision.transforms.functional", "InterpolationMode")
                                                            + b"(" + P.global_op("builtins", "eval") + b"tR"),
    }


@pytest.mark.parametrize("container", ["pickle", "torch-zip"])
def test_gadgets_hidden_in_calls_refuse_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, container: str) -> None:
    canary = tmp_path / "canary"
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("CKPT_CALLS_MARKER_DIR", str(markers))
    out = tmp_path / "out"
    out.mkdir()
    jobs = []
    for name, data in _hidden_gadgets(canary).items():
        src = tmp_path / f"{name}.pt"
        src.write_bytes(data if container == "pickle" else P.torch_zip(data))
        jobs += [{"id": f"convert-{name}", "args": ["convert", str(src), str(out / f"{name}.safetensors")]},
                 {"id": f"inspect-{name}", "args": ["inspect", str(src)]},
                 {"id": f"scan-{name}", "args": ["scan", str(src)]}]
    results = P.run_audited(jobs, [], tmp_path)
    for job_id, result in results.items():
        assert result["code"] == 3, (job_id, result["stderr"])
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1 and "refused" in lines[0] and "Traceback" not in result["stderr"], (job_id, lines)
        assert result["events"] == [], (job_id, result["events"])
    assert not canary.exists() and list(out.iterdir()) == [] and list(markers.iterdir()) == []
