"""Benchmark: converting a torch state_dict to safetensors, ckpt-migrate against the usual pipelines and ``cp``.

Each pipeline runs in its own child process; wall time is measured around it and CPU time and
peak RSS come from the child's resource usage (``os.wait4``). Pipelines run interleaved, several
rounds, and the medians are printed with their ratio to ``cp`` of the same file in the same run.
Two figures per run: **page cache** (the command's own wall time) and **on disk** (``sync`` before
the run, then the command followed by ``sync``: what a user waits for on big files). Peak RSS is
the child's. The machine's load average and a SHA-256 calibration are printed before and after,
so a noisy run is visible as such.

    python bench/bench_stream.py                      # small, a quick look
    python bench/bench_stream.py --sizes 2GB,8GB      # the real measurement

Pipelines: ``cp``; ``ckpt-migrate convert SRC DST`` (CLI, verification on); ``no-verify`` (``--no-verify``, the
same without reading the output back); ``naive``
(``torch.load(weights_only=True)`` then ``safetensors.torch.save_file``); ``mmap`` (the same with
``torch.load(mmap=True)``, zip files only); ``fp16`` (the default conversion with ``--dtype fp16``, half the
output: not run unless named); ``two-pass`` (the default conversion with the source hash taken by a
second read of the source, as before issue 17: not run unless named); ``sha256 only`` (Python's
``hashlib.sha256`` of the file and nothing else: the floor of any pipeline that records the hash,
since SHA-256 cannot be split across cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
TENSORS = 80

MAKE = """
import sys, torch
size, legacy, path = int(sys.argv[1]), sys.argv[2] == "legacy", sys.argv[3]
count = {count}
numel = max(1, size // 4 // count)
cols = 1024 if numel >= 1024 else 1
gen = torch.Generator().manual_seed(0)
sd = {{f"layer{{i}}.weight": torch.randn(numel // cols, cols, generator=gen) for i in range(count)}}
torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
"""
TWO_PASS = """
import runpy, sys
from ckpt_migrate.converters.writers.safetensors import writer
one_pass = writer.SourceDigest.__init__
writer.SourceDigest.__init__ = lambda self, checkpoint, wanted, **_: one_pass(self, checkpoint, wanted, one_pass=False)
sys.argv = ["ckpt-migrate", "convert", "--force", *sys.argv[1:]]
runpy.run_module("ckpt_migrate", run_name="__main__")
"""
HASH_ONLY = """
import hashlib, sys
digest = hashlib.sha256()
with open(sys.argv[1], "rb", buffering=0) as handle:
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
"""
NAIVE = """
import sys, torch
from safetensors.torch import save_file
sd = torch.load(sys.argv[1], weights_only=True, mmap={mmap})
save_file(sd, sys.argv[2])
"""


@dataclass
class Sample:
    """One run of one pipeline: wall seconds into the page cache, wall seconds until on disk (with the ``sync`` after), CPU seconds, peak resident MiB."""

    wall: float
    cpu: float
    rss_mib: float
    disk: float = 0.0


def parse_size(text: str) -> int:
    """``2GB`` → 2·10⁹ bytes, ``512MiB`` → 512·2²⁰; a bare number is bytes.

    Raises:
        SystemExit: the size cannot be parsed.
    """
    text = text.strip().upper()
    for unit in sorted(UNITS, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * UNITS[unit])
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"bench: cannot read size {text!r}; use e.g. 256MB, 2GB, 8GiB") from None


def run_child(argv: Sequence[str]) -> Sample:
    """Run ``argv`` to completion and measure it (under ``/usr/bin/time`` when present, so the RSS is the child's own).

    A child forked from this Python process inherits its resident size until it execs, which
    ``ru_maxrss`` would report; ``/usr/bin/time`` forks from a small C process instead.

    Raises:
        RuntimeError: the child exits non-zero.
    """
    timer = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        command = [timer, "-f", "%U %S %M", "-o", report.name, *argv] if timer else list(argv)
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        err = child.stderr.read().decode(errors="replace") if child.stderr else ""
        if child.stderr:
            child.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"{' '.join(argv[:4])} … exited {code}: {err.strip()[-400:]}")
        if timer:
            user, system, rss_kib = report.read().split()[-3:]
            return Sample(wall, float(user) + float(system), int(rss_kib) / 1024)
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def available_memory() -> int | None:
    """Bytes of memory available for new work (``MemAvailable``), where the system says."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pipelines(fmt: str, selected: Sequence[str]) -> dict[str, list[str]]:
    """Command lines (SRC and DST appended) of each pipeline that applies to ``fmt``."""
    table = {
        "cp": ["cp"],
        "sha256 only": [sys.executable, "-c", HASH_ONLY],
        "ckpt-migrate": [sys.executable, "-m", "ckpt_migrate", "convert", "--force"],
        "no-hash": [sys.executable, "-m", "ckpt_migrate", "convert", "--force", "--no-source-hash"],
        "no-verify": [sys.executable, "-m", "ckpt_migrate", "convert", "--force", "--no-verify", "--no-source-hash"],
        "two-pass": [sys.executable, "-c", TWO_PASS],
        "fp16": [sys.executable, "-m", "ckpt_migrate", "convert", "--force", "--dtype", "fp16"],
        "naive": [sys.executable, "-c", NAIVE.format(mmap=False)],
        "mmap": [sys.executable, "-c", NAIVE.format(mmap=True)],
    }
    if fmt == "legacy":
        table.pop("mmap")
    return {name: argv for name, argv in table.items() if name in selected}


def make_source(size: int, fmt: str, folder: str) -> str:
    """Write a state_dict of :data:`TENSORS` float32 tensors totalling ``size`` bytes, zip or legacy format."""
    path = os.path.join(folder, f"src-{fmt}-{size}.pt")
    subprocess.run([sys.executable, "-c", MAKE.format(count=TENSORS), str(size), fmt, path], check=True)
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass
    return path


def measure(src: str, dst: str, commands: dict[str, list[str]], runs: int) -> dict[str, list[Sample]]:
    """Run every pipeline ``runs`` times, interleaved, removing the output and syncing before each run."""
    samples: dict[str, list[Sample]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            if os.path.exists(dst):
                os.remove(dst)
            os.sync()
            sample = run_child([*argv, src, dst])
            start = time.perf_counter()
            os.sync()
            sample.disk = sample.wall + time.perf_counter() - start
            samples[name].append(sample)
    if os.path.exists(dst):
        os.remove(dst)
    return samples


def startup(runs: int) -> dict[str, float]:
    """Median wall seconds of ``ckpt-migrate --help``, ``ckpt-migrate formats`` and ``import torch``."""
    cases = {
        "ckpt-migrate --help": [sys.executable, "-m", "ckpt_migrate", "--help"],
        "ckpt-migrate formats": [sys.executable, "-m", "ckpt_migrate", "formats"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    return {name: statistics.median(run_child(argv).wall for _ in range(runs)) for name, argv in cases.items()}


def report(size: int, fmt: str, samples: dict[str, list[Sample]]) -> dict:
    """Print one table and return its medians as plain data."""
    medians = {name: Sample(*(statistics.median(getattr(s, f) for s in runs) for f in ("wall", "cpu", "rss_mib", "disk")))
               for name, runs in samples.items()}
    base = medians.get("cp")
    print(f"\n{fmt} state_dict, {size / 2**30:.2f} GiB, {TENSORS} float32 tensors, median of {len(next(iter(samples.values())))} runs")
    print(f"  {'pipeline':<14}{'cache s':>9}{'/ cp':>8}{'disk s':>9}{'/ cp':>8}{'cpu s':>8}{'RSS MiB':>9}  on-disk ratio per round")
    for name, m in medians.items():
        cache = f"{m.wall / base.wall:.2f}x" if base else "-"
        disk = f"{m.disk / base.disk:.2f}x" if base else "-"
        rounds = " ".join(f"{s.disk / c.disk:.2f}" for s, c in zip(samples[name], samples["cp"])) if base else ""
        print(f"  {name:<14}{m.wall:>9.2f}{cache:>8}{m.disk:>9.2f}{disk:>8}{m.cpu:>8.2f}{m.rss_mib:>9.0f}  {rounds}")
    floor = medians.get("sha256 only")
    if floor and "ckpt-migrate" in medians:
        print(f"  default conversion / sha256 of the file alone: {medians['ckpt-migrate'].wall / floor.wall:.2f}x (page cache)")
    return {"size": size, "format": fmt, "medians": {name: asdict(m) for name, m in medians.items()},
            "runs": {name: [asdict(s) for s in runs] for name, runs in samples.items()}}


def conditions() -> str:
    """The load average and this machine's single-core SHA-256 speed right now (how noisy the figures are)."""
    import hashlib

    block = bytes(1 << 20)
    digest = hashlib.sha256()
    start = time.perf_counter()
    for _ in range(256):
        digest.update(block)
    rate = 256 * (1 << 20) / (time.perf_counter() - start) / 1e9
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"load average {load}; sha256 {rate:.2f} GB/s on one core"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256MB", help="comma-separated sizes (default 256MB; e.g. 2GB,8GB)")
    parser.add_argument("--formats", default="zip,legacy", help="zip and/or legacy")
    parser.add_argument("--runs", type=int, default=3, help="rounds per pipeline (median reported)")
    parser.add_argument("--pipelines", default="cp,sha256 only,ckpt-migrate,no-hash,no-verify,naive,mmap", help="which pipelines to run")
    parser.add_argument("--workdir", default=None, help="folder for the files (default: a temporary folder)")
    parser.add_argument("--json", dest="json_path", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    selected = [p.strip() for p in args.pipelines.split(",")]
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = REPO + (os.pathsep + env_path if env_path else "")
    folder = args.workdir or tempfile.mkdtemp(prefix="ckpt-migrate-bench-")
    os.makedirs(folder, exist_ok=True)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; files in {folder}")
    results: dict = {"machine": {"cpus": os.cpu_count(), "system": f"{platform.system()} {platform.release()}"}, "tables": []}
    results["conditions"] = [conditions()]
    print(f"conditions before: {results['conditions'][0]}")
    try:
        results["startup"] = startup(max(3, args.runs))
        for name, seconds in results["startup"].items():
            print(f"  {name:<28} {seconds:.3f} s (median)")
        for size in sizes:
            for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
                free = shutil.disk_usage(folder).free
                if free < 3 * size + (1 << 30):
                    print(f"\nskipping {fmt} {size / 2**30:.2f} GiB: {free / 2**30:.1f} GiB free in {folder}, need {3 * size / 2**30 + 1:.1f}")
                    continue
                commands = pipelines(fmt, selected)
                memory = available_memory()
                for heavy in ("naive", "mmap"):
                    if heavy in commands and memory is not None and memory < 1.5 * size + (3 << 30):
                        print(f"\nskipping {heavy} at {size / 2**30:.2f} GiB: it holds the whole state_dict, {memory / 2**30:.1f} GiB available")
                        commands.pop(heavy)
                src = make_source(size, fmt, folder)
                try:
                    samples = measure(src, os.path.join(folder, "out.safetensors"), commands, args.runs)
                    results["tables"].append(report(size, fmt, samples))
                finally:
                    os.remove(src)
    finally:
        if not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)
    results["conditions"].append(conditions())
    print(f"\nconditions after: {results['conditions'][-1]}")
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
