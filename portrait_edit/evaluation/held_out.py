"""The mini world's held-out streams, defined once: no training stage draws from them.

- EVAL_SEED: the evaluation's portraits (`held_out_pair`) and each evaluation item's edit seed
  (`edit_seed`), the same for every row of a table and for every page that evaluates them;
- TUNE_SEED: where an edit's settings are picked (the guidance scales, the mask's lambda range), apart
  from the evaluation's portraits;
- BASE_EVAL_SEED: the mini base models' evaluation (VAE, CLIP, classifier, text-to-image, ControlNet).
"""

from __future__ import annotations

from portrait_edit.data.jobs import sample_seed
from portrait_edit.world import WorldPair, make_pair

EVAL_SEED = 20_26_12
TUNE_SEED = 424242
BASE_EVAL_SEED = 20_26_11  # the mini base's own evaluation (tools/eval_mini_base.py)


def held_out_pair(index: int, direction: str, size: int = 64, seed: int = EVAL_SEED) -> WorldPair:
    """Held-out portrait `index` of the stream `seed`, edited (exactly) in `direction`."""
    return make_pair(sample_seed(seed, index), direction, size=size)


def edit_seed(item: int, seed: int = EVAL_SEED) -> int:
    """The edit seed of evaluation item `item` of the stream `seed` (every method edits it with this)."""
    return sample_seed(seed + 1, item)
