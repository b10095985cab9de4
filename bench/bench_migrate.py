"""Benchmark ``migrate`` on folders of many small checkpoints: files per second beside ``cp -r`` and the naive loop.

Two workloads, generated once with fixed seeds:

- **mixed** (``--mixed 1000``): small checkpoints of a few KB to 100 KB in 20 folders: zip
  state_dicts, legacy-format state_dicts and training bundles (epoch, model and optimizer state,
  loss). Timed: ``cp -r``; the naive loop (``torch.load(weights_only=True)`` + ``save_file`` per
  file, no verification); ``ckpt-migrate migrate --jobs 1`` and ``--jobs 2`` (verified, hashed,
  manifest); and a rerun over the finished tree (everything up to date), by the command and by the
  Python API timed after its imports (the command's start-up is most of a 1,000-file rerun).
- **tiny** (``--tiny 100000``, off by default): that many tiny state_dicts in folders of 100. Timed:
  the ``--dry-run`` plan, the first run (``--jobs 2``) and a no-op rerun, with peak memory.

Every command runs as a child process, as a user runs it (start-up included), after the previous
output is removed and ``sync`` has written everything out, so one run's write-back does not slow
the next. Runs are interleaved and the median of ``--runs`` is printed; peak RSS is the child's.

    python bench/bench_migrate.py                     # mixed, 1000 files, 3 runs
    python bench/bench_migrate.py --tiny 100000       # and the 100k-file plan and rerun
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
NAIVE = """
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for path in sorted(src.rglob("*.pt")):
    target = dst / path.relative_to(src).with_suffix(".safetensors")
    target.parent.mkdir(parents=True, exist_ok=True)
    state = torch.load(path, weights_only=True)
    if "model_state_dict" in state:
        state = state["model_state_dict"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
"""


API_RUN = """
import sys, time
from ckpt_migrate.batch import migrate
start = time.perf_counter()
report = migrate(sys.argv[1], sys.argv[2], to="safetensors", jobs=int(sys.argv[3]))
print(time.perf_counter() - start)
"""


def build_mixed(folder: Path, count: int, seed: int = 0) -> int:
    """Write ``count`` small checkpoints (state_dicts, legacy files, bundles) in 20 folders; return their total bytes."""
    import torch

    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        target = folder / f"project{index % 20:02d}" / f"ckpt{index:05d}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        width = rng.choice([8, 16, 32, 64, 128])
        state = {}
        for layer in range(rng.randint(1, 6)):
            state[f"layers.{layer}.weight"] = torch.randn(width, max(1, width // 2), generator=generator)
            state[f"layers.{layer}.bias"] = torch.randn(width, generator=generator)
        kind = index % 5
        if kind in (0, 1):
            torch.save(state, target)
        elif kind == 2:
            torch.save(state, target, _use_new_zipfile_serialization=False)
        else:
            model = torch.nn.Linear(4, 4)
            optimizer = torch.optim.Adam(model.parameters())
            model(torch.randn(2, 4, generator=generator)).sum().backward()
            optimizer.step()
            torch.save({"epoch": index, "model_state_dict": state, "optimizer_state_dict": optimizer.state_dict(), "loss": 0.5}, target)
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def build_tiny(folder: Path, count: int) -> int:
    """Write ``count`` tiny state_dicts (ten distinct payloads) in folders of 100; return their total bytes."""
    import torch

    generator = torch.Generator().manual_seed(0)
    payloads = []
    for _ in range(10):
        buffer = io.BytesIO()
        torch.save({"w": torch.randn(4, 4, generator=generator), "b": torch.randn(4, generator=generator)}, buffer)
        payloads.append(buffer.getvalue())
    total = 0
    for index in range(count):
        target = folder / f"d{index // 100:04d}" / f"m{index:06d}.pt"
        if index % 100 == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payloads[index % 10])
        total += len(payloads[index % 10])
    return total


def timed(argv: Sequence[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child command (under ``/usr/bin/time`` when present).

    Raises:
        RuntimeError: the command fails.
    """
    timer = ["/usr/bin/time", "-f", "%M"] if os.access("/usr/bin/time", os.X_OK) else []
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        command = [*timer[:1], "-o", report.name, *timer[1:], *argv] if timer else list(argv)
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if done.returncode not in (0,):
            raise RuntimeError(f"{' '.join(argv[:6])} … exited {done.returncode}: {done.stderr.strip()[-400:]}")
        rss = int(report.read().split()[-1]) / 1024 if timer else float("nan")
    return seconds, rss


def settle(*paths: Path) -> None:
    """Remove earlier outputs and write everything out, so the next run starts from a quiet disk."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    os.sync()
    time.sleep(1.0)


def migrate_cli(src: Path, dst: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ckpt_migrate", "migrate", str(src), str(dst), "--to", "safetensors", *extra]


def mixed(work: Path, count: int, runs: int) -> None:
    src = work / "mixed"
    if not src.is_dir():
        build_mixed(src, count)
    total = sum(path.stat().st_size for path in src.rglob("*") if path.is_file())
    print(f"\nmixed: {count} checkpoints in 20 folders ({total / 1e6:.1f} MB: zip and legacy state_dicts, training bundles), "
          f"median of {runs}")
    dst = work / "out"
    pipelines = {
        "cp -r": ["cp", "-r", str(src), str(dst)],
        "naive torch.load + save_file": [sys.executable, "-c", NAIVE, str(src), str(dst)],
        "migrate --jobs 1": migrate_cli(src, dst, "--jobs", "1"),
        "migrate --jobs 2": migrate_cli(src, dst, "--jobs", "2"),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in [*pipelines, "rerun --jobs 2 (up to date)",
                                                                             "rerun, API, after imports"]}
    for _ in range(runs):
        for name, argv in pipelines.items():
            settle(dst)
            samples[name].append(timed(argv))
        samples["rerun --jobs 2 (up to date)"].append(timed(migrate_cli(src, dst, "--jobs", "2")))
        inside = subprocess.run([sys.executable, "-c", API_RUN, str(src), str(dst), "2"], check=True, capture_output=True, text=True)
        samples["rerun, API, after imports"].append((float(inside.stdout.split()[-1]), float("nan")))
    settle(dst)
    print(f"  {'command':<30}{'seconds':>9}{'files/s':>10}{'MB/s':>8}{'RSS MiB':>9}   seconds per run")
    medians = {}
    for name, found in samples.items():
        seconds = statistics.median(s for s, _ in found)
        medians[name] = seconds
        rss = max((r for _, r in found), default=float("nan"))
        print(f"  {name:<30}{seconds:>9.2f}{count / seconds:>10.0f}{total / seconds / 1e6:>8.1f}{rss:>9.0f}   "
              + " ".join(f"{s:.2f}" for s, _ in found))
    print(f"  --jobs 2 over --jobs 1: {medians['migrate --jobs 1'] / medians['migrate --jobs 2']:.2f}x")


def tiny(work: Path, count: int) -> None:
    src = work / f"tiny{count}"
    if not src.is_dir():
        build_tiny(src, count)
    print(f"\ntiny: {count} tiny state_dicts in folders of 100")
    dst = work / "tiny-out"
    settle(dst)
    rows = [("--dry-run plan (kinds probed)", migrate_cli(src, dst, "--jobs", "2", "--dry-run")),
            ("first run --jobs 2", migrate_cli(src, dst, "--jobs", "2")),
            ("no-op rerun --jobs 2", migrate_cli(src, dst, "--jobs", "2"))]
    print(f"  {'command':<30}{'seconds':>9}{'files/s':>10}{'RSS MiB':>9}")
    for name, argv in rows:
        seconds, rss = timed(argv)
        print(f"  {name:<30}{seconds:>9.1f}{count / seconds:>10.0f}{rss:>9.0f}")
    settle(dst)


SPIN = "import sys\ntotal = 0\nfor i in range(int(sys.argv[1])):\n    total += i * i % 7\n"


def two_core_scaling(loops: int = 6_000_000) -> str:
    """How much faster two CPU-bound Python processes finish than two in a row, on this machine, now.

    The ceiling of ``--jobs 2`` over ``--jobs 1``: a busy host or two vCPUs on one physical core give
    well under 2x whatever the program does.
    """
    argv = [sys.executable, "-c", SPIN, str(loops)]
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    one = time.perf_counter() - start
    start = time.perf_counter()
    children = [subprocess.Popen(argv) for _ in range(2)]
    for child in children:
        child.wait()
    two = time.perf_counter() - start
    return f"two CPU-bound processes at once run {2 * one / two:.2f}x as fast as one after the other ({one:.2f} s alone)"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixed", type=int, default=1000, help="small checkpoints in the mixed tree (0: skip)")
    parser.add_argument("--tiny", type=int, default=0, help="files in the tiny tree (e.g. 100000; default: skip)")
    parser.add_argument("--runs", type=int, default=3, help="rounds of the mixed workload (median printed)")
    parser.add_argument("--dir", help="work folder, kept for the next run (default: a temporary one, removed after)")
    args = parser.parse_args(argv)
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + env_path if env_path else "")
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-migrate-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"{two_core_scaling()}")
    try:
        if args.mixed:
            mixed(work, args.mixed, args.runs)
        if args.tiny:
            tiny(work, args.tiny)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"after: load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {two_core_scaling()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
