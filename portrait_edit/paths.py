"""Where the project's shipped assets live.

`data/` at the repository root holds the small shipped assets (mini-world weights, pose bank, prompt
templates). Set PORTRAIT_EDIT_DATA to use another copy (for example on a cluster's shared disk).
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PORTRAIT_EDIT_DATA", REPO_ROOT / "data"))
PRESETS_DIR = Path(__file__).resolve().parent / "loading" / "presets"
