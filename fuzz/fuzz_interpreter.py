"""A long fuzz run of the safe interpreter, the readers' in-memory paths and the safetensors header parser.

Usage::

    .venv/bin/python fuzz/fuzz_interpreter.py [--seconds 600] [--engine auto|atheris|hypothesis] [--out DIR]

With atheris installed (``pip install atheris``) the run is coverage-guided (libFuzzer) over
instrumented ``ckpt_migrate`` code, seeded with benign pickles, torch files and the hand-written
payloads of ``tests/payloads.py``; without it, hypothesis generates the same kinds of inputs as
``tests/test_fuzz.py`` with a large budget. Each input's first byte picks a target: the
interpreter, a nested payload (legacy stream, zip archive or plain pickle), a ``data.pkl`` inside
a real zip, or a safetensors header. Anything but our own error types is a crash; an input
slower than ``--slow`` seconds is a hang. Both are saved under ``--out`` and counted in the
report, which ends the run: inputs tried, crashes, hangs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
TARGETS = ("interpret", "nested", "zip_data_pkl", "safetensors")


class Run:
    """Counters and artifacts of one fuzz run, written to ``stats.json`` as it goes."""

    def __init__(self, out: Path, slow: float) -> None:
        self.out = out
        self.slow = slow
        self.inputs = 0
        self.crashes = 0
        self.hangs = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.started = time.monotonic()
        self.flushed = 0.0
        (out / "crashes").mkdir(parents=True, exist_ok=True)
        (out / "slow").mkdir(parents=True, exist_ok=True)

    def one(self, data: bytes) -> None:
        """Run one input; record its outcome."""
        from ckpt_migrate.errors import CkptMigrateError

        self.inputs += 1
        start = time.monotonic()
        try:
            target(data)
            self.outcomes["ok"] += 1
        except CkptMigrateError as error:
            self.outcomes[type(error).__name__] += 1
        except Exception:  # noqa: BLE001 - a crash is what we are looking for; record it and go on
            self.crashes += 1
            name = f"crash-{self.crashes:04d}"
            (self.out / "crashes" / f"{name}.bin").write_bytes(data)
            (self.out / "crashes" / f"{name}.txt").write_text(traceback.format_exc())
        elapsed = time.monotonic() - start
        if elapsed > self.slow:
            self.hangs += 1
            (self.out / "slow" / f"slow-{self.hangs:04d}-{elapsed:.1f}s.bin").write_bytes(data)
        if time.monotonic() - self.flushed > 2:
            self.flush()

    def flush(self) -> None:
        self.flushed = time.monotonic()
        stats = {"inputs": self.inputs, "crashes": self.crashes, "hangs": self.hangs,
                 "seconds": round(time.monotonic() - self.started, 1), "outcomes": dict(self.outcomes.most_common())}
        (self.out / "stats.json").write_text(json.dumps(stats, indent=1))


def target(data: bytes) -> None:
    """Dispatch on the first byte; every target also runs what commands run next on a result."""
    from ckpt_migrate.converters.base import ReadOptions
    from ckpt_migrate.converters.readers.safetensors_file import parse_header
    from ckpt_migrate.converters.readers.torch_legacy import nested_loader
    from ckpt_migrate.bundle.extract import extract
    from ckpt_migrate.bundle.plain import to_plain
    from ckpt_migrate.unpickler import interpret
    from ckpt_migrate.unpickler.static import looks_like_pickle, walk

    if not data:
        return
    kind, body = TARGETS[data[0] % len(TARGETS)], data[1:]
    value = None
    if kind == "interpret":
        walk(body)
        looks_like_pickle(body[:4096])
        value = interpret(body, path="fuzz.pkl").value
    elif kind == "nested":
        value = nested_loader("fuzz.pth", ReadOptions(), 1)(body).value
    elif kind == "zip_data_pkl":
        import payloads

        value = nested_loader("fuzz.pth", ReadOptions(), 1)(payloads.torch_zip(body, {str(i): bytes(64) for i in range(4)})).value
    else:
        parse_header(body, len(body), "fuzz.safetensors")
        return
    from ckpt_migrate.errors import CkptMigrateError

    try:
        extract(value)
    except CkptMigrateError:
        pass
    json.dumps(to_plain(value), default=str)


def write_seeds(corpus: Path) -> int:
    """Seed files for libFuzzer: each seed prefixed with the byte of the target it feeds."""
    import payloads

    seeds = payloads.fuzz_seeds()
    corpus.mkdir(parents=True, exist_ok=True)
    count = 0
    plan = [(0, seeds["pickle"]), (1, seeds["legacy"] + seeds["zip"] + seeds["pickle"][:40]), (2, seeds["data_pkl"]), (3, seeds["safetensors"])]
    for prefix, items in plan:
        for item in items:
            (corpus / f"seed-{count:05d}").write_bytes(bytes([prefix]) + item)
            count += 1
    return count


def child_atheris(out: Path, libfuzzer_args: list[str], slow: float) -> None:
    import atheris

    sys.path.insert(0, str(TESTS))
    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["ckpt_migrate"]):
        import ckpt_migrate.converters.readers.safetensors_file  # noqa: F401
        import ckpt_migrate.converters.readers.torch_legacy  # noqa: F401
        import ckpt_migrate.converters.readers.torch_zip  # noqa: F401
        import ckpt_migrate.bundle.extract  # noqa: F401
        import ckpt_migrate.bundle.plain  # noqa: F401
        import ckpt_migrate.unpickler  # noqa: F401
        import ckpt_migrate.unpickler.static  # noqa: F401
    import payloads  # noqa: F401

    run = Run(out, slow)
    atheris.Setup([sys.argv[0], *libfuzzer_args], run.one)
    atheris.Fuzz()


def run_atheris(out: Path, seconds: int, slow: float) -> dict:
    corpus = out / "corpus"
    seeds = write_seeds(corpus)
    artifacts = out / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [f"-max_total_time={seconds}", f"-timeout={max(int(slow * 4), 10)}", "-rss_limit_mb=6144", "-max_len=65536",
            f"-artifact_prefix={artifacts}/", "-print_final_stats=1", str(corpus)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    proc = subprocess.run([sys.executable, __file__, "--child", str(out), "--slow", str(slow), "--", *args],
                          capture_output=True, text=True, env=env, timeout=seconds + 600)
    (out / "libfuzzer.log").write_text(proc.stdout + proc.stderr)
    stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").exists() else {}
    stats["engine"] = "atheris (libFuzzer, coverage-guided)"
    stats["seeds"] = seeds
    stats["libfuzzer_exit"] = proc.returncode
    stats["libfuzzer_artifacts"] = sorted(p.name for p in artifacts.iterdir())
    tail = [line for line in (proc.stderr or "").splitlines() if line.startswith(("#", "stat::", "Done", "==", "INFO: -max_total"))]
    stats["libfuzzer_tail"] = tail[-6:]
    done = [line for line in tail if line.startswith("Done ")]
    if done:
        stats["inputs"] = max(stats.get("inputs", 0), int(done[-1].split()[1]))
    return stats


def run_hypothesis(out: Path, seconds: int, slow: float) -> dict:
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    sys.path.insert(0, str(TESTS))
    import test_fuzz as strategies

    seeds = strategies.SEEDS
    inputs = st.one_of(
        st.tuples(st.just(0), st.binary(max_size=2048)),
        st.tuples(st.just(0), strategies.mutated(seeds["pickle"])),
        st.tuples(st.just(0), strategies.opcode_soup()),
        st.tuples(st.just(1), strategies.mutated(seeds["legacy"] + seeds["zip"])),
        st.tuples(st.just(2), strategies.mutated(seeds["data_pkl"])),
        st.tuples(st.just(3), strategies.mutated(seeds["safetensors"])),
    )
    run = Run(out, slow)
    deadline = time.monotonic() + seconds
    batch = 0
    while time.monotonic() < deadline:
        @seed(batch)
        @settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(inputs)
        def once(item: tuple[int, bytes]) -> None:
            if time.monotonic() < deadline:
                run.one(bytes([item[0]]) + item[1])

        once()
        batch += 1
    run.flush()
    stats = json.loads((out / "stats.json").read_text())
    stats["engine"] = "hypothesis (atheris not installed)"
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600, help="how long to fuzz")
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    parser.add_argument("--out", type=Path, help="where crashes, slow inputs and stats go (default: a new temp folder)")
    parser.add_argument("--slow", type=float, default=2.0, help="seconds after which one input counts as a hang")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child_atheris(args.child, [a for a in rest if a != "--"], args.slow)
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="ckpt-migrate-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    sys.path.insert(0, str(TESTS))
    stats = run_atheris(out, args.seconds, args.slow) if engine == "atheris" else run_hypothesis(out, args.seconds, args.slow)
    print(json.dumps(stats, indent=1))
    print(f"\ninputs tried: {stats.get('inputs', 0)}   crashes: {stats.get('crashes', 0)}   hangs (> {args.slow}s): {stats.get('hangs', 0)}"
          f"   libFuzzer artifacts: {len(stats.get('libfuzzer_artifacts', []))}   output: {out}")
    failed = stats.get("crashes", 0) or stats.get("hangs", 0) or stats.get("libfuzzer_artifacts")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
