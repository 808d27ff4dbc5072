"""Throughput of pair generation (stage 2): pairs per minute, or seconds per pair.

    python tools/bench_generate.py                      # mini world on the CPU (shipped mini base)
    python tools/bench_generate.py --sd15 --device cuda --dtype bfloat16 --size 512 --batch 4
    python tools/bench_generate.py --without-p          # Eq. 2 with s_d 0.1 vs s_d 0 (p's branch skipped)

--sd15 builds the full SD 1.5 UNet, OpenPose ControlNet, ViT-L/14 and identity encoder with RANDOM weights
from the shipped configs (no download): the figure is the cost of the architecture at 512 x 1024, not a
quality measure. Each timed batch runs the whole predict_step (identity, text, 20 EDM steps with Heun's
correction = 39 batched UNet + ControlNet calls, decoding); the first batch is a warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from portrait_edit.data.pair_jobs import PairJobsDataModule
from portrait_edit.data.pose_bank import world_pose_bank
from portrait_edit.models.identity_encoder import IdentityEncoder, IdentityEncoderConfig
from portrait_edit.paths import DATA_DIR, PRESETS_DIR
from portrait_edit.systems.pair_generation import PairGenerationSystem


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sd15", action="store_true", help="random SD 1.5-size models instead of the mini base"
    )
    parser.add_argument("--size", type=int, default=64, help="side of each half (512 with --sd15)")
    parser.add_argument("--batch", type=int, default=8, help="pairs per predict_step")
    parser.add_argument("--batches", type=int, default=3, help="timed batches (after one warm-up)")
    parser.add_argument("--steps", type=int, default=20, help="EDM steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument(
        "--s-d", type=float, default=0.1, help="Eq. 2 weight of the whole-canvas prompt p (s_b = 1 - s_d)"
    )
    parser.add_argument("--source-alone", action="store_true", help="draw the left half alone")
    parser.add_argument(
        "--without-p",
        action="store_true",
        help="side by side: --s-d as given, then s_d 0 (the p branch left out of every call); prints the ratio",
    )
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Print the figures and return them: seconds per pair and pairs per minute."""
    with tempfile.TemporaryDirectory() as tmp:
        bank = Path(tmp) / "bank.json"
        world_pose_bank(64, seed=0).save(bank)
        kwargs = dict(
            pose_bank=str(bank), image_size=args.size, steps=args.steps, dtype=args.dtype, s_d=args.s_d,
            s_b=1.0 - args.s_d, source_alone=args.source_alone,
        )  # fmt: skip
        if args.sd15:
            presets = PRESETS_DIR / "sd15"
            vision = json.loads((presets / "image_encoder" / "config.json").read_text())
            text = json.loads((presets / "text_encoder" / "config.json").read_text())
            config = IdentityEncoderConfig(clip_width=vision["hidden_size"], word_width=text["hidden_size"])
            IdentityEncoder(config).save_pretrained(Path(tmp) / "identity_encoder")
            kwargs.update(base="sd15", identity_encoder=str(Path(tmp) / "identity_encoder"))
        else:
            kwargs.update(base="mini", identity_encoder=str(DATA_DIR / "mini" / "identity_encoder"))
        system = PairGenerationSystem(**kwargs).to(args.device)
        dm = PairJobsDataModule(
            num_samples=args.batch * (args.batches + 1), pose_bank=str(bank), batch_size=args.batch
        )
        n = args.batch * (args.batches + 1)
        jobs = [
            dm.make_job(i) | {"index": i, "key": f"{i:09d}", "shard": 0, "shard_len": n} for i in range(n)
        ]
        times = []
        for b in range(args.batches + 1):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            system.predict_step(jobs[b * args.batch : (b + 1) * args.batch], b)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    per_pair = sum(times[1:]) / (args.batches * args.batch)
    what = "sd15 (random weights)" if args.sd15 else "mini base"
    print(
        f"pair generation, {what}, {args.size}x{2 * args.size}, {args.steps} steps, batch {args.batch}, "
        f"{args.device} {args.dtype}, s_d {args.s_d}{', source alone' if args.source_alone else ''}, "
        f"torch threads {torch.get_num_threads()}: {per_pair:.3f} s/pair, "
        f"{60 / per_pair:.1f} pairs/min"
    )
    return {"s_per_pair": per_pair, "pairs_per_min": 60 / per_pair}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    first = measure(args)
    if args.without_p:
        second = measure(argparse.Namespace(**{**vars(args), "s_d": 0.0}))
        print(f"time per pair, s_d 0 / s_d {args.s_d}: {second['s_per_pair'] / first['s_per_pair']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
