"""Benchmark: consolidating a large DeepSpeed ZeRO checkpoint, peak memory against the largest parameter.

The checkpoint is written by hand in DeepSpeed's layout (``latest``, ``global_step1/``, per-rank
``*_model_states.pt`` and ``*_optim_states.pt`` holding flat fp32 partitions, plain dicts instead
of DeepSpeed's classes), so no DeepSpeed is needed: ZeRO-3 (every parameter split across all
ranks) or ZeRO-2 (partitions of one flat vector). Each pipeline runs in its own child process;
peak RSS comes from ``/usr/bin/time`` (see ``bench_stream.run_child``).

    python bench/bench_deepspeed.py                          # 256 MB, a quick look
    python bench/bench_deepspeed.py --size 2GB --ranks 4     # the real measurement

Pipelines: ``convert`` (``ckpt-migrate convert DIR out.safetensors``, verified, sha256 of the
sources recorded), ``no-verify`` (``--no-verify --no-source-hash``), and ``deepspeed``
(``get_fp32_state_dict_from_zero_checkpoint`` then ``safetensors.torch.save_file``) when
deepspeed is installed and ``--with-deepspeed`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stream import parse_size, run_child  # noqa: E402

MAKE = """
import math, os, sys, torch
from collections import OrderedDict
size, ranks, stage, params, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
numel = size // 4 // params
names = [f"layers.{i}.weight" for i in range(params)]
shapes = OrderedDict((n, torch.Size([numel // 1024, 1024]) if numel >= 1024 else torch.Size([numel])) for n in names)
folder = os.path.join(out, "global_step1")
os.makedirs(folder, exist_ok=True)
open(os.path.join(out, "latest"), "w").write("global_step1")
gen = torch.Generator().manual_seed(0)
common = dict(buffer_names=[], param_shapes=[shapes], frozen_param_shapes=None, shared_params={}, frozen_param_fragments=None,
              ds_version="0.19.8", global_steps=1, dp_world_size=ranks)
def values(count, rank):
    gen.manual_seed(rank)
    return torch.rand(count, generator=gen)
if stage == 3:
    part = sum(math.ceil(s.numel() / ranks) for s in shapes.values())
    for rank in range(ranks):
        module = OrderedDict((n, torch.empty(0)) for n in names)
        torch.save(dict(module=module, **common), os.path.join(folder, f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"))
        flat = values(part, rank)
        torch.save({"optimizer_state_dict": {"zero_stage": 3, "partition_count": ranks, "fp32_flat_groups": [flat]}},
                   os.path.join(folder, f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"))
        del flat
else:
    total = sum(s.numel() for s in shapes.values())
    padded = 2 * ranks * math.ceil(total / (2 * ranks))
    module = OrderedDict((n, torch.empty(0)) for n in names)
    torch.save(dict(module=module, **common), os.path.join(folder, "mp_rank_00_model_states.pt"))
    for rank in range(ranks):
        flat = values(padded // ranks, rank)
        torch.save({"optimizer_state_dict": {"zero_stage": stage, "partition_count": [ranks],
                                             "single_partition_of_fp32_groups": [flat]}},
                   os.path.join(folder, f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"))
        del flat
"""

DEEPSPEED = """
import sys
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import save_file
sd = get_fp32_state_dict_from_zero_checkpoint(sys.argv[1])
save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256MB", help="fp32 master weights in total (e.g. 2GB)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--stage", type=int, default=3, choices=(2, 3))
    parser.add_argument("--params", type=int, default=16, help="parameters of equal size")
    parser.add_argument("--with-deepspeed", action="store_true", help="also measure DeepSpeed's own consolidation")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    work = tempfile.mkdtemp(prefix="bench-deepspeed-", dir=os.environ.get("BENCH_TMP"))
    try:
        src = os.path.join(work, "ckpt")
        run_child([sys.executable, "-c", MAKE, str(size), str(args.ranks), str(args.stage), str(args.params), src])
        largest = size // args.params
        cli = [sys.executable, "-m", "ckpt_migrate", "convert", src]
        pipelines = {"convert": cli + [os.path.join(work, "a.safetensors")],
                     "no-verify": cli + [os.path.join(work, "b.safetensors"), "--no-verify", "--no-source-hash"]}
        if args.with_deepspeed:
            pipelines["deepspeed"] = [sys.executable, "-c", DEEPSPEED, src, os.path.join(work, "c.safetensors")]
        results = {}
        for name, command in pipelines.items():
            sample = run_child(command)
            results[name] = {"wall_s": round(sample.wall, 2), "cpu_s": round(sample.cpu, 2), "peak_rss_mib": round(sample.rss_mib, 1),
                             "x_largest_param": round(sample.rss_mib * 2**20 / largest, 2)}
        print(json.dumps({"size_bytes": size, "ranks": args.ranks, "stage": args.stage, "params": args.params,
                          "largest_param_mib": round(largest / 2**20, 1), "results": results}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
