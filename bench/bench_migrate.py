"""Benchmark ``migrate`` against the naive loop and ``cp``: files per second and MB/s.

A folder of ``--small`` small state_dicts and ``--large`` large ones (``--large-mb`` each) is
generated once with a fixed seed, then converted to safetensors by:

- ``cp -r``                      the floor: copying the bytes, nothing else;
- naive loop                     ``for f: torch.load(f, weights_only=True); save_file(...)`` (no verification);
- ``migrate --jobs 1`` / ``2``   the safe interpreter, verified outputs, manifest, worker processes;
- rerun                          ``migrate --jobs 2`` again over the finished tree (everything up to date).

Run: ``python bench/bench_migrate.py [--small 200] [--large 4] [--large-mb 64] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(folder: Path, small: int, large: int, large_mb: int) -> int:
    """Write the benchmark tree; return its total size in bytes."""
    import torch

    generator = torch.Generator().manual_seed(0)
    for index in range(small):
        state = {f"layer{i}.weight": torch.randn(32, 64, generator=generator) for i in range(4)}
        state.update({f"layer{i}.bias": torch.randn(32, generator=generator) for i in range(4)})
        target = folder / f"project{index % 10}" / f"run{index:03d}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)
    per_tensor = large_mb * (1 << 20) // 4 // 8
    for index in range(large):
        state = {f"block{i}.weight": torch.randn(per_tensor, generator=generator) for i in range(8)}
        target = folder / "large" / f"model{index}.pth"
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def naive(src: Path, dst: Path) -> None:
    """What people write first: load each file with torch and save it with safetensors."""
    import torch
    from safetensors.torch import save_file

    for path in sorted(src.rglob("*.pt*")):
        target = dst / path.relative_to(src).with_suffix(".safetensors")
        target.parent.mkdir(parents=True, exist_ok=True)
        state = torch.load(path, weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(target))


def with_migrate(src: Path, dst: Path, jobs: int, fresh: bool = True) -> None:
    from ckpt_migrate.batch import migrate

    report = migrate(src, dst, to="safetensors", jobs=jobs)
    if report.exit_code or (report.counts["converted"] == 0) == fresh:
        raise SystemExit(f"migrate failed: {report.counts}")


def with_cp(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--large-mb", type=int, default=64)
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-migrate-"))
    src = work / "src"
    if src.exists():
        shutil.rmtree(src)
    total = build(src, args.small, args.large, args.large_mb)
    files = args.small + args.large
    print(f"{files} checkpoints ({args.small} small, {args.large} × {args.large_mb} MB), {total / 1e6:.1f} MB, "
          f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    runs = [("cp -r", lambda d: with_cp(src, d)), ("naive torch.load + save_file", lambda d: naive(src, d)),
            ("migrate --jobs 1", lambda d: with_migrate(src, d, 1)), ("migrate --jobs 2", lambda d: with_migrate(src, d, 2))]
    runs.append(("migrate --jobs 2, rerun (up to date)", lambda d: with_migrate(src, d, 2, fresh=False)))
    rows = []
    for name, run in runs:
        dst = work / "dst"
        if "rerun" not in name:
            shutil.rmtree(dst, ignore_errors=True)
        started = time.perf_counter()
        run(dst)
        seconds = time.perf_counter() - started
        rows.append((name, seconds, files / seconds, total / seconds / 1e6))
        if "--jobs 2" not in name:
            shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(work / "dst", ignore_errors=True)
    print(f"{'method':<30} {'seconds':>8} {'files/s':>9} {'MB/s':>8}")
    for name, seconds, rate, mbps in rows:
        print(f"{name:<30} {seconds:>8.2f} {rate:>9.1f} {mbps:>8.1f}")
    by_name = {name: seconds for name, seconds, _, _ in rows}
    print(f"--jobs 2 speed-up over --jobs 1: {by_name['migrate --jobs 1'] / by_name['migrate --jobs 2']:.2f}x; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
