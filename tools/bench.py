"""Every benchmark of the project in one table (`make bench`; `make bench-gpu` on a GPU machine).

    python tools/bench.py            # CPU: the ratios, each measured side by side in one process
    python tools/bench.py --gpu      # CUDA: seconds and ms at SD 1.5 size, random weights, bf16

Runs tools/bench_train.py (MCDM training: cached vs online conditions; on a GPU ms/step at SD 1.5 size
with and without EMA and torch.compile), tools/bench_edit.py (mask-guided editing: our time per UNet row
against diffusers' InstructPix2Pix; on a GPU seconds per edit) and tools/bench_generate.py (pairs per
minute; on a GPU seconds per pair at 512 x 1024), each as its own script would with the settings below,
then prints one table: figure, value, target. Ratios are the figures to compare across machines; absolute
CPU times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_edit  # noqa: E402
import bench_generate  # noqa: E402
import bench_train  # noqa: E402

# (figure, script, its arguments, key of the returned figures, target)
CPU = (
    ("MCDM training: cached / online samples per s (mini)", bench_train, ["--ema"], "cached_over_online", ">= 1.8"),
    ("editing: ours / InstructPix2Pix time per UNet row (tiny)", bench_edit, [], "ours_over_instruct_pix2pix_per_row", "<= 1.0"),
    ("pair generation: pairs per minute (mini, as configs/mini/generate.yaml: s_d 0, source alone)", bench_generate,
     ["--batches", "2", "--s-d", "0", "--source-alone"], "pairs_per_min", ""),
)  # fmt: skip
SD15 = ["--sd15", "--device", "cuda", "--size", "512"]
GPU = (
    ("MCDM training ms/step, sd15 512, batch 4, bf16", bench_train,
     [*SD15, "--batch", "4", "--precision", "bf16-mixed", "--only-cached"], "cached_ms_per_step", ""),
    ("  + EMA", bench_train,
     [*SD15, "--batch", "4", "--precision", "bf16-mixed", "--only-cached", "--ema"], "cached_ms_per_step", ""),
    ("  + EMA + torch.compile", bench_train,
     [*SD15, "--batch", "4", "--precision", "bf16-mixed", "--only-cached", "--ema", "--compile"], "cached_ms_per_step", ""),
    ("editing s/edit, sd15 512, bf16", bench_edit,
     [*SD15, "--dtype", "bfloat16", "--batch", "1", "--only-ours"], "ours_s_per_edit", "<= 0.25 (H100)"),
    ("pair generation s/pair, sd15 512 x 1024, bf16", bench_generate,
     [*SD15, "--dtype", "bfloat16", "--batch", "4", "--batches", "2"], "s_per_pair", ""),
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU figures (needs CUDA)")
    args = parser.parse_args(argv)
    rows = []
    for figure, script, script_args, key, target in GPU if args.gpu else CPU:
        print(f"\n== {figure}: python tools/{Path(script.__file__).name} {' '.join(script_args)}")
        value = script.measure(script.parse(script_args))[key]
        rows.append((figure, value, target))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'value':>10}  target")
    for figure, value, target in rows:
        print(f"{figure:<{width}}  {value:>10.3f}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
