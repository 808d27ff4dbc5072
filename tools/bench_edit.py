"""Cost of mask-guided editing: time per UNet-evaluated sample against diffusers' InstructPix2Pix pipeline
with the same UNet and step count, and seconds per edit at SD 1.5 size.

    python tools/bench_edit.py                     # CPU, tiny preset: ours / InstructPix2Pix per UNet row
    python tools/bench_edit.py --sd15 --device cuda --dtype bfloat16 --size 512 --batch 1 --only-ours

A UNet-evaluated sample is one row of a UNet call: our edit evaluates 5 branches per step (20 steps) plus
the mask's 10 seeds x 5 branches once; InstructPix2Pix evaluates 3 branches per step. Both include text
encoding, VAE encoding and decoding. Random weights of the chosen architecture: a cost, not a quality,
figure. Ours and the pipeline alternate, timed in the same process.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, UniPCMultistepScheduler

from portrait_edit.models.editor import MCDMEditor
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.systems.mcdm import SCHEDULER, MCDMSystem


def clock(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sd15", action="store_true", help="SD 1.5-size random models instead of the tiny preset"
    )
    parser.add_argument("--size", type=int, default=32, help="image side (512 with --sd15)")
    parser.add_argument("--batch", type=int, default=2, help="inputs per edit call")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="timed alternations (after a warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--only-ours", action="store_true", help="time our edit only (GPU figures)")
    parser.add_argument(
        "--compile",
        default="none",
        choices=["none", "default", "reduce-overhead"],
        help="torch.compile our UNet (reduce-overhead: CUDA graphs, for the host-bound 5-row step calls)",
    )
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Print the figures and return them: seconds per edit and, with both, ours / InstructPix2Pix per row."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.sd15:
        base, clip = "sd15", dict(clip_image_size=224)
    else:
        base, clip = "tiny", dict(clip_image_size=32, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    system = MCDMSystem(base=base, conditioning=MCDMConditioning(**clip), use_ema=False, val_edits=0)
    system = system.to(device=device, dtype=dtype).eval()
    editor = MCDMEditor(system.unet, system.conditioning, system.scales, SCHEDULER)
    if args.compile != "none":
        editor.unet = torch.compile(system.unet, mode=args.compile)
    gen = torch.Generator().manual_seed(0)
    sources = (torch.rand(args.batch, 3, args.size, args.size, generator=gen) * 2 - 1).to(device, dtype)
    p_a = ["a woman, normal costume"] * args.batch
    p_b = ["a woman, santa claus costume"] * args.batch

    def ours() -> None:
        editor.edit(sources, p_a, p_b, threshold=0.2, steps=args.steps)

    c = system.conditioning
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=system.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=system.unet,
        scheduler=UniPCMultistepScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)

    def theirs() -> None:
        pipe(
            p_b, image=(sources.float() + 1) / 2, num_inference_steps=args.steps, guidance_scale=5.0,
            image_guidance_scale=3.0, output_type="pt",
        )  # fmt: skip

    rows = {"ours": args.batch * (5 * args.steps + 10 * 5), "instruct_pix2pix": args.batch * 3 * args.steps}
    runs = {"ours": ours} if args.only_ours else {"ours": ours, "instruct_pix2pix": theirs}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in runs.items():
                seconds[name].append(clock(fn, device))
    print(
        f"mask-guided edit, {base} architecture, {args.size}x{args.size}, batch {args.batch}, {args.steps} steps, "
        f"{args.dtype}, {device}, compile {args.compile}, torch threads {torch.get_num_threads()}"
    )
    figures = {}
    for name, values in seconds.items():
        best = min(values)
        figures[f"{name}_s_per_edit"] = best / args.batch
        print(
            f"  {name:>16}: {best / args.batch:8.3f} s/edit  {1000 * best / rows[name]:8.3f} ms per UNet row "
            f"({rows[name] // args.batch} rows per edit, best of {len(values)})"
        )
    if not args.only_ours:
        figures["ours_over_instruct_pix2pix_per_row"] = (min(seconds["ours"]) / rows["ours"]) / (
            min(seconds["instruct_pix2pix"]) / rows["instruct_pix2pix"]
        )
        print(
            f"  ours / InstructPix2Pix, time per UNet row: {figures['ours_over_instruct_pix2pix_per_row']:.2f} (target <= 1.0)"
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    measure(parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
