"""What made a result: the code revision (HEAD's commit, `+dirty` with uncommitted changes) and the command."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from portrait_edit.paths import REPO_ROOT


def git_revision(exclude: tuple[str, ...] = ("data/mini",)) -> str:
    """HEAD's commit, with `+dirty` when the work tree has uncommitted changes outside `exclude` (the
    mini base's weights are written there by the tools and are not a change of the code); "unknown"
    outside a git checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", *(f":(exclude){p}" for p in exclude)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_command() -> str:
    """The command line of this process as a user would type it (`portrait-edit validate --config ...`)."""
    program = Path(sys.argv[0]).name
    if program in ("portrait-edit", "__main__.py"):
        program = "portrait-edit"
    return shlex.join([program, *sys.argv[1:]])
