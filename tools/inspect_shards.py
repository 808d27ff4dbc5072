"""Inspect pair shards: counts, keys, member sizes, directions, leftovers, and a contact sheet of pairs
(data/shard_report.py).

    python tools/inspect_shards.py out/pairs/ --sheet out/sheet.png --n 8
    python tools/inspect_shards.py 'out/pairs/pairs-*.tar' --json
"""

from __future__ import annotations

import argparse
import json
import sys

from portrait_edit.data.shard_report import inspect_shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="shard directory, glob or brace pattern")
    parser.add_argument("--sheet", default=None, help="write a contact-sheet PNG of the first pairs here")
    parser.add_argument("--n", type=int, default=8, help="pairs on the contact sheet")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = inspect_shards(args.path, sheet=args.sheet, n=args.n)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
        return 0
    print(
        f"{report['shards']} shard(s), {report['samples']} sample(s), {report['skipped']} skipped as corrupt"
    )
    print(f"keys: {report['first_key']} .. {report['last_key']}")
    if report["duplicate_keys"]:
        print(f"DUPLICATE keys ({len(report['duplicate_keys'])}): {report['duplicate_keys'][:10]}")
    if report["temporary_files"]:
        print(f"LEFTOVER temporary files (unfinished run? rerun generation): {report['temporary_files']}")
    for field, s in report["field_bytes"].items():
        print(f"  {field:<20} bytes mean {s['mean']:.0f}  min {s['min']}  max {s['max']}")
    if report["directions"]:
        print("directions: " + ", ".join(f"{d}={c}" for d, c in report["directions"].items()))
    if report["sheet"]:
        print(f"wrote contact sheet to {report['sheet']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
