"""Throughput of MCDM training (stage 3): samples per second with cached vs online conditions, and ms per
training step at SD 1.5 size.

    python tools/bench_train.py --ema                            # mini size on the CPU: cached vs online
    python tools/bench_train.py --sd15 --device cuda --precision bf16-mixed --size 512 --batch 4 \
        --ema --compile                                          # ms/step at SD 1.5 size

Each timed step is a whole optimisation step (conditions, forward, backward, AdamW, EMA when on) through
`MCDMSystem.training_step`, with random weights of the chosen architecture (the `mini` or `sd15` preset:
no download; the figures are the cost of the architecture, not a quality measure). "online" batches carry
the images (the frozen VAE and CLIP run every step); "cached" batches carry the latents and CLIP tokens
that tools/cache_conditions.py writes into the shards. Both are timed in turn, in the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np
import torch

from portrait_edit.images import to_tensor
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.systems.mcdm import MCDMSystem
from portrait_edit.tasks import DIRECTIONS
from portrait_edit.world import make_pair


def pair_batch(count: int, size: int) -> dict:
    pairs = [make_pair(1000 + i, DIRECTIONS[i % len(DIRECTIONS)], size=size) for i in range(count)]

    def tensor(images: list[np.ndarray]) -> torch.Tensor:
        return to_tensor(np.stack(images))

    return {
        "image": tensor([p.tgt for p in pairs]),
        "source": tensor([p.src for p in pairs]),
        "caption": [p.prompts["p_b"] for p in pairs],
        "source_caption": [p.prompts["p_a"] for p in pairs],
    }


def cached_batch(system: MCDMSystem, batch: dict) -> dict:
    c = system.conditioning
    return {
        "latent": system.encode({"image": batch["image"]}),
        "source_latent": c.source_latent(batch["source"]),
        "source_clip": c.source_clip(batch["source"]),
        "caption": batch["caption"],
        "source_caption": batch["source_caption"],
    }


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def make_step(system: MCDMSystem, precision: str, compile_unet: bool):
    optimizer = system.configure_optimizers()["optimizer"]
    if compile_unet:
        system.unet = torch.compile(system.unet)
    autocast = (
        torch.autocast(system.device.type, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else contextlib.nullcontext()
    )

    def step(batch: dict) -> None:
        with autocast:
            loss = system.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for name, module in system.trained.items() if system.ema else ():
            system.ema[name].update_parameters(module)

    return step


def timed(step, batch: dict, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps (after one warm-up step)."""
    step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="SD 1.5-size random models instead of mini ones")
    parser.add_argument("--size", type=int, default=64, help="image side (512 with --sd15)")
    # 32: the batch of configs/mini/mcdm.yaml (which also trains with EMA: --ema), the mini figure's setting.
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting (after a warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="online / cached alternations")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--ema", action="store_true", help="update an EMA copy every step")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--only-cached", action="store_true", help="time cached batches only (GPU figures)")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Print the figures and return them: ms/step per setting and, with both, the cached / online ratio."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.sd15:
        conditioning = MCDMConditioning(clip_image_size=224)
        base = "sd15"
    else:
        conditioning = MCDMConditioning(clip_image_size=64, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        base = "mini"
    # `mini` without a shipped data/mini falls back to the preset's random weights, as sd15 always does.
    system = MCDMSystem(base=base, conditioning=conditioning, use_ema=args.ema, val_edits=0).to(device)
    system.train()
    images = to_device(pair_batch(args.batch, args.size), device)
    cached = cached_batch(system, images)
    step = make_step(system, args.precision, args.compile)
    settings = [("cached", cached)] if args.only_cached else [("online", images), ("cached", cached)]
    seconds: dict[str, list[float]] = {name: [] for name, _ in settings}
    for _ in range(args.rounds):
        for name, batch in settings:
            seconds[name].append(timed(step, batch, args.steps, device))
    print(
        f"MCDM training step, {base} architecture, {args.size}x{args.size}, batch {args.batch}, "
        f"{args.precision}, EMA {'on' if args.ema else 'off'}, compile {'on' if args.compile else 'off'}, "
        f"{device}, torch threads {torch.get_num_threads()}"
    )
    figures = {}
    for name, values in seconds.items():
        best = min(values)
        figures[f"{name}_ms_per_step"] = 1000 * best
        print(
            f"  {name:>6}: {1000 * best:8.1f} ms/step  {args.batch / best:8.1f} samples/s  (best of {len(values)})"
        )
    if not args.only_cached:
        figures["cached_over_online"] = min(seconds["online"]) / min(seconds["cached"])
        print(f"  cached / online samples per second: {figures['cached_over_online']:.2f}x")
    return figures


def main(argv: list[str] | None = None) -> int:
    measure(parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
