"""Benchmark architecture identification and ONNX export + verification.

Usage: python bench/bench_arch.py [--models resnet18,mobilenet_v3_small,efficientnet_b0] [--repeat 15] [--json]

Measures (1) ``identify`` on a ``module.``-prefixed ResNet-50 state_dict signature: the first call
(which loads the shipped signature index) and the median of warm calls; (2) for each model, the
wall time of ``ckpt_migrate.convert(state_dict.pth, model.onnx)``: read, identify, rebuild, export,
onnx.checker and onnxruntime parity (at two batch sizes), with the file size and the max abs diff.
Models are built with fixed seeds in a temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_MODELS = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")


def bench_identify(repeat: int) -> dict[str, Any]:
    """Cold and warm (median of ``repeat``) identification of a ResNet-50 signature."""
    import torch
    import torchvision

    from ckpt_migrate.architectures import identify

    with torch.device("meta"):
        model = torchvision.models.resnet50(weights=None, num_classes=10)
    shapes = {"module." + key: tuple(value.shape) for key, value in model.state_dict().items()}
    start = time.perf_counter()
    found = identify(shapes)
    cold = time.perf_counter() - start
    warm = []
    for _ in range(repeat):
        start = time.perf_counter()
        identify(shapes)
        warm.append(time.perf_counter() - start)
    return {"case": "identify resnet50 (module.-prefixed, num_classes=10)", "keys": len(shapes),
            "result": found.describe(), "cold_s": cold, "warm_median_s": statistics.median(warm), "repeat": repeat}


def bench_export(name: str, folder: str) -> dict[str, Any]:
    """Time ``convert`` of a seeded state_dict of torchvision ``name`` to a verified ONNX file."""
    import torch
    import torchvision

    import ckpt_migrate.api as api

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    src = os.path.join(folder, f"{name}.pth")
    dst = os.path.join(folder, f"{name}.onnx")
    torch.save(model.state_dict(), src)
    start = time.perf_counter()
    result = api.convert(src, dst, force=True)
    seconds = time.perf_counter() - start
    details = result.report.details
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "seconds": seconds,
            "onnx_bytes": result.report.bytes, "exporter": details["exporter"], "opset": details["opset"],
            "max_abs_diff": details["max_abs_diff"], "input_shape": details["input_shape"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated torchvision builders")
    parser.add_argument("--repeat", type=int, default=15, help="warm identification runs")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    ident = bench_identify(args.repeat)
    with tempfile.TemporaryDirectory(prefix="bench-arch-") as folder:
        exports = [bench_export(name, folder) for name in args.models.split(",") if name]
    if args.json:
        print(json.dumps({"identify": ident, "export": exports}, indent=2))
        return 0
    print(f"identification ({ident['case']}, {ident['keys']} keys) -> {ident['result']}")
    print(f"  first call (loads the index): {ident['cold_s'] * 1000:8.1f} ms")
    print(f"  warm, median of {ident['repeat']:<3}        : {ident['warm_median_s'] * 1000:8.1f} ms")
    print()
    header = f"{'model':<20} {'params':>8} {'input':<16} {'export+verify':>13} {'onnx size':>10} {'max abs diff':>12}  exporter"
    print(header)
    print("-" * len(header))
    for row in exports:
        shape = "x".join(str(d) for d in row["input_shape"])
        print(f"{row['model']:<20} {row['params'] / 1e6:7.1f}M {shape:<16} {row['seconds']:12.2f}s "
              f"{row['onnx_bytes'] / 1e6:8.1f}MB {row['max_abs_diff']:12.2e}  {row['exporter']} (opset {row['opset']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
