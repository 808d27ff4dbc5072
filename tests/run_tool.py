"""Run a tools/ script as a user does: a separate Python process, its output captured."""

import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def run_tool(name: str, *args: object) -> subprocess.CompletedProcess:
    """`python tools/<name>.py args...` -> the finished process (returncode, stdout, stderr as text)."""
    return subprocess.run(
        [sys.executable, str(TOOLS / f"{name}.py"), *map(str, args)], capture_output=True, text=True
    )
