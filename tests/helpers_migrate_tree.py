"""A generated model folder with every kind of file, for the ``migrate`` tests (local, S3, Ray).

Everything is built with fixed seeds. Full models are pickled in a subprocess whose classes
(one in ``__main__``, one in a module deleted right after) never exist in the process that
migrates them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import torch
from torch import nn

FULL_MODEL_SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from torch import nn
    sys.path.insert(0, sys.argv[1])
    import lostproject_models

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 2)
            self.register_buffer("steps", torch.arange(3, dtype=torch.int64))

    torch.manual_seed(3)
    net = Net()
    torch.save(net, sys.argv[2])
    torch.save(net.state_dict(), sys.argv[3])
    lost = lostproject_models.Lost()
    torch.save(lost, sys.argv[4])
    torch.save(lost.state_dict(), sys.argv[5])
''')

LOST_MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    class Lost(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(4)
            self.body = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
            self.head = nn.Linear(3, 2, bias=False)
''')

SKIPPED = {"README.md", "docs/figure.png", "results.csv", "link_out.pt"}
FAILED = {"corrupt/truncated.pt"}
REFUSED = {"hostile/evil.pth", "hostile/payload.pkl"}


def tiny(seed: int, width: int = 4) -> nn.Module:
    """A small conv/bn/linear model with fixed weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.Flatten(), nn.Linear(width, 2))
    with torch.no_grad():
        model[1].running_mean.uniform_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].num_batches_tracked.fill_(seed + 7)
    return model


def hostile_payload(marker: Path) -> bytes:
    """A protocol-2 pickle that would run ``touch MARKER`` through ``os.system`` if executed."""
    command = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."


def state_dict_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def build_tree(src: Path, work: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Fill ``src`` with checkpoints and other files; return expected tensors per safetensors output.

    ``work`` holds what must live outside SRC (the symlink's target, the hostile marker's folder).
    """
    expected: dict[str, dict[str, torch.Tensor]] = {}
    for folder in ("sd", "bundles/run1", "full", "lightning", "legacy", "hub", "collide", "deep/x/y/z", "corrupt", "hostile", "docs"):
        (src / folder).mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    src, work = src.resolve(), work.resolve()

    model = tiny(0)
    torch.save(model.state_dict(), src / "sd/tiny.pt")
    expected["sd/tiny.safetensors"] = state_dict_copy(model)

    model = tiny(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 3, 3)).sum().backward()
    optimizer.step()
    torch.save({"epoch": 7, "loss": 0.25, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
               src / "bundles/run1/checkpoint.pth")
    expected["bundles/run1/checkpoint.safetensors"] = state_dict_copy(model)
    model = tiny(2)
    torch.save({"epoch": 90, "arch": "tiny", "state_dict": model.state_dict(), "best_acc1": 71.5}, src / "bundles/run1/best.pth.tar")
    expected["bundles/run1/best.safetensors"] = state_dict_copy(model)

    model = tiny(5)
    lightning_sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "global_step": 30, "pytorch-lightning_version": "1.9.5", "state_dict": lightning_sd,
                "optimizer_states": [torch.optim.Adam(model.parameters()).state_dict()], "lr_schedulers": [],
                "hyper_parameters": {"lr": 0.001, "width": 4}}, src / "lightning/epoch=3-step=30.ckpt")
    expected["lightning/epoch=3-step=30.safetensors"] = {k: v.clone() for k, v in lightning_sd.items()}

    model = tiny(6)
    torch.save(model.state_dict(), src / "legacy/old.pth", _use_new_zipfile_serialization=False)
    expected["legacy/old.safetensors"] = state_dict_copy(model)

    from safetensors.torch import save_file

    hub = {"embed.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "scale": torch.tensor([0.5], dtype=torch.bfloat16)}
    save_file(hub, str(src / "hub/already.safetensors"))
    expected["hub/already.safetensors"] = {k: v.clone() for k, v in hub.items()}

    for name, seed in (("a.pt", 8), ("a.pth", 9)):
        model = tiny(seed)
        torch.save(model.state_dict(), src / "collide" / name)
        expected[f"collide/{'a.safetensors' if name == 'a.pt' else 'a.pth.safetensors'}"] = state_dict_copy(model)

    model = tiny(10, width=6)
    torch.save(model.state_dict(), src / "deep/x/y/z/weights.bin")
    expected["deep/x/y/z/weights.safetensors"] = state_dict_copy(model)

    module_dir = work / "lostproject"
    module_dir.mkdir(exist_ok=True)
    (module_dir / "lostproject_models.py").write_text(LOST_MODULE)
    refs = work / "refs"
    refs.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-c", FULL_MODEL_SCRIPT, str(module_dir), str(src / "full/main_model.pt"), str(refs / "main.pt"),
                    str(src / "full/lost_module.pt"), str(refs / "lost.pt")], check=True, cwd=work)
    (module_dir / "lostproject_models.py").unlink()
    expected["full/main_model.safetensors"] = torch.load(refs / "main.pt", weights_only=True)
    expected["full/lost_module.safetensors"] = torch.load(refs / "lost.pt", weights_only=True)

    whole = (src / "sd/tiny.pt").read_bytes()
    (src / "corrupt/truncated.pt").write_bytes(whole[: len(whole) // 2])

    marker = work / "PWNED"
    payload = hostile_payload(marker)
    with zipfile.ZipFile(src / "hostile/evil.pth", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("evil/data.pkl", payload)
        archive.writestr("evil/byteorder", "little")
        archive.writestr("evil/version", "3\n")
    (src / "hostile/payload.pkl").write_bytes(payload)

    (src / "README.md").write_text("# our models\n\nTrained 2019-2023.\n")
    (src / "results.csv").write_text("model,top1\ntiny,71.5\n")
    (src / "docs/figure.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    outside = work / "outside.pt"
    torch.save(tiny(11).state_dict(), outside)
    os.symlink(outside, src / "link_out.pt")
    return expected


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime (ns) of every file and link under ``root``, by relative path."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            data = os.readlink(path).encode() if os.path.islink(path) else Path(path).read_bytes()
            found[os.path.relpath(path, root)] = (hashlib.sha256(data).hexdigest(), stat.st_mtime_ns)
    return found


def assert_outputs_exact(dst: Path, expected: dict[str, dict[str, torch.Tensor]]) -> None:
    """Every expected safetensors output exists and holds exactly the expected keys, dtypes and bits."""
    from safetensors.torch import load_file

    for rel, tensors in expected.items():
        loaded = load_file(str(dst / rel))
        assert set(loaded) == set(tensors), (rel, sorted(loaded), sorted(tensors))
        for key, tensor in tensors.items():
            assert loaded[key].dtype == tensor.dtype, (rel, key)
            assert loaded[key].shape == tensor.shape, (rel, key)
            assert torch.equal(_bits(loaded[key]), _bits(tensor)), (rel, key)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def temporaries(root: Path) -> list[str]:
    """Names under ``root`` that carry the atomic-write temp marker."""
    from ckpt_migrate.io.atomic import is_temp

    return [os.path.join(folder, name) for folder, dirs, files in os.walk(root) for name in dirs + files if is_temp(name)]
