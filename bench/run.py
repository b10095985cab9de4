"""Run the benchmarks (``make bench``).

``run.py [stream args]``            the streaming-conversion benchmark (ckpt-migrate, naive torch.load +
                                    save_file, torch.load(mmap=True), cp), arguments passed through;
``run.py arch [args]``              architecture identification and ONNX export + validation times;
``run.py migrate [args]``           folder migration: files/s and MB/s for --jobs 1 and 2 beside the naive loop;
``run.py all``                      all three with their defaults.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _run(name: str, argv: list[str]) -> int:
    if name == "arch":
        from bench_arch import main as arch_main

        return arch_main(argv) or 0
    if name == "migrate":
        from bench_migrate import main as migrate_main

        return migrate_main(argv) or 0
    from bench_stream import main as stream_main

    return stream_main(argv) or 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "all":
        return max(_run(name, []) for name in ("stream", "arch", "migrate"))
    if argv and argv[0] in ("arch", "migrate", "stream"):
        return _run(argv[0], argv[1:])
    return _run("stream", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
