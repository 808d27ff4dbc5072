"""MCDM condition dropout, reconstruction swap and multi-condition guidance against closed forms."""

import math

import pytest
import torch
from torch.testing import assert_close

from portrait_edit.diffusion.conditions import SUBSETS, apply_null, drop_masks, multi_guidance, swap_mask

N = 50_000


def within_3_sigma(hits: int, n: int, p: float) -> bool:
    return abs(hits - n * p) <= 3 * math.sqrt(n * p * (1 - p))


def test_every_guidance_branch_comes_out_of_dropout_at_its_rate():
    masks = drop_masks(N, torch.Generator().manual_seed(0), p_drop=0.2)
    image, spatial, text = masks["image"], masks["spatial"], masks["text"]
    branches = {  # the four branches of multi_guidance: (image kept, spatial kept, text kept)
        "e(0,0,0)": image & spatial & text,
        "e(im,0,0)": ~image & spatial & text,
        "e(im,s,0)": ~image & ~spatial & text,
        "e(im,s,p)": ~image & ~spatial & ~text,
    }
    expected = {"e(0,0,0)": 0.2 / 7, "e(im,0,0)": 0.2 / 7, "e(im,s,0)": 0.2 / 7, "e(im,s,p)": 0.8}
    for name, hits in branches.items():
        assert within_3_sigma(int(hits.sum()), N, expected[name]), (name, int(hits.sum()))
    # Every one of the 7 subsets appears at 0.2 / 7.
    flags = torch.stack([image, spatial, text], dim=1)
    for subset in SUBSETS:
        hits = int((flags == torch.tensor(subset)).all(dim=1).sum())
        assert within_3_sigma(hits, N, 0.2 / 7), (subset, hits)


def test_weights_choose_the_subsets():
    weights = [0.0] * 7
    weights[SUBSETS.index((False, False, True))] = 1.0  # only the text is ever dropped
    masks = drop_masks(N, torch.Generator().manual_seed(1), p_drop=0.2, weights=weights)
    assert not masks["image"].any() and not masks["spatial"].any()
    assert within_3_sigma(int(masks["text"].sum()), N, 0.2)
    with pytest.raises(ValueError, match="7 non-negative"):
        drop_masks(4, torch.Generator(), weights=[1.0, 2.0])


def test_reconstruction_swap_rate():
    assert within_3_sigma(int(swap_mask(N, torch.Generator().manual_seed(2), p_swap=0.05).sum()), N, 0.05)


def test_apply_null_replaces_dropped_rows_only():
    cond = torch.arange(6.0).reshape(3, 2)
    out = apply_null(cond, torch.tensor([[-1.0, -1.0]]), torch.tensor([False, True, False]))
    assert_close(out, torch.tensor([[0.0, 1.0], [-1.0, -1.0], [4.0, 5.0]]))


def test_multi_guidance_closed_form():
    e = [torch.full((1, 2), v) for v in (1.0, 2.0, 4.0, 8.0)]
    # 1 + 3 (2 - 1) + 3 (4 - 2) + 5 (8 - 4) = 1 + 3 + 6 + 20 = 30
    assert_close(multi_guidance(*e), torch.full((1, 2), 30.0))
