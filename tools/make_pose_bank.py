"""Write a pose bank (data/pose_bank.py): OpenPose COCO-18 keypoints that pair generation draws from.

    python tools/make_pose_bank.py --world --count 1000 --out data/mini/pose_bank.json
    python tools/make_pose_bank.py --images /data/headshots --detector lllyasviel/Annotators --out bank.json

--world samples mini-world head-shot poses (the shipped mini bank). --images runs controlnet_aux's
OpenposeDetector over a folder of images (the paper: SD images of "a person, head shot") and keeps, per
image, the detected person with the most keypoints; images without a person are skipped and counted.
The detector weights (body_pose_model.pth, hand_pose_model.pth, facenet.pth) come from a hub id or a local
folder (offline: HF_HUB_OFFLINE=1 with them cached); a missing one is named before anything runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from portrait_edit.data.pose_bank import PoseBank, load_openpose_detector, world_pose_bank
from portrait_edit.images import IMAGE_SUFFIXES, image_files, load_image
from portrait_edit.world.pose import KEYPOINT_NAMES


def keypoints_of(poses) -> np.ndarray | None:
    """controlnet_aux PoseResults of one image -> float32 (18, 3) fractions of the person with the most
    detected body keypoints (visible 1), or None when nobody was found."""
    best = max(poses, key=lambda p: sum(k is not None for k in p.body.keypoints), default=None)
    if best is None or not any(k is not None for k in best.body.keypoints):
        return None
    out = np.zeros((len(KEYPOINT_NAMES), 3), np.float32)
    for i, k in enumerate(best.body.keypoints[: len(KEYPOINT_NAMES)]):
        if k is not None:
            out[i] = (k.x, k.y, 1.0)
    return out


def detect_bank(folder: Path, detector_source: str, count: int | None) -> tuple[PoseBank, int]:
    try:
        detector = load_openpose_detector(detector_source)
    except ValueError as exc:
        raise SystemExit(f"make_pose_bank: error: {exc}") from None
    files = list(image_files(folder).values())
    if not files:
        raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    found, skipped = [], 0
    for path in tqdm(files, desc="detecting poses", unit="image"):
        try:
            image = np.asarray(load_image(path))
        except ValueError as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            skipped += 1
            continue
        keypoints = keypoints_of(detector.detect_poses(image))
        if keypoints is None:
            skipped += 1
            continue
        found.append(keypoints)
        if count is not None and len(found) == count:
            break
    if not found:
        raise SystemExit(f"no person detected in the {len(files)} images under {folder}")
    return PoseBank(np.stack(found), source=f"OpenposeDetector({detector_source}) on {folder}"), skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--world", action="store_true", help="sample mini-world poses")
    what.add_argument("--images", type=Path, help="folder of head-shot images to detect poses in")
    parser.add_argument("--detector", default="lllyasviel/Annotators", help="OpenposeDetector weights")
    parser.add_argument("--count", type=int, default=None, help="poses to keep (world: default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="world pose stream")
    parser.add_argument("--out", type=Path, required=True, help="the bank's JSON file")
    args = parser.parse_args(argv)
    if args.world:
        bank, skipped = world_pose_bank(args.count or 1000, args.seed), 0
    else:
        bank, skipped = detect_bank(args.images, args.detector, args.count)
    bank.command = "python tools/make_pose_bank.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    bank.save(args.out)
    print(f"wrote {len(bank)} poses to {args.out}" + (f" ({skipped} images skipped)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
