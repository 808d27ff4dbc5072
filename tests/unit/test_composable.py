"""Eq. 2 on the H x 2W canvas: closed form per half, and the batched shared-unconditional step against the
unbatched 6-call computation with a real (tiny) UNet."""

import torch
from torch.testing import assert_close

from portrait_edit.diffusion.composable import (
    composable_eps,
    guided,
    half_masks,
    split_branches,
    stack_branches,
)


def test_half_masks():
    m_a, m_b = half_masks(6)
    assert m_a.flatten().tolist() == [1, 1, 1, 0, 0, 0] and m_b.flatten().tolist() == [0, 0, 0, 1, 1, 1]


def test_each_half_is_the_closed_form_combination():
    g = torch.Generator().manual_seed(0)
    e = [torch.randn(2, 4, 3, 8, generator=g) for _ in range(4)]  # null, p, p_a, p_b
    out = composable_eps(*e, guidance=7.5, s_d=0.1, s_a=0.9, s_b=0.9)
    tilde = [e[0] + 7.5 * (x - e[0]) for x in e[1:]]  # e~(p), e~(p_a), e~(p_b)
    assert_close(out[..., :4], 0.1 * tilde[0][..., :4] + 0.9 * tilde[1][..., :4])
    assert_close(out[..., 4:], 0.1 * tilde[0][..., 4:] + 0.9 * tilde[2][..., 4:])


def test_batched_shared_unconditional_step_equals_six_separate_calls(tiny_sd):
    unet = tiny_sd.unet
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 16, generator=g)  # h x 2w canvas
    width = unet.config.cross_attention_dim
    states = {name: torch.randn(2, 77, width, generator=g) for name in ("p", "p_a", "p_b")}
    states["null"] = torch.randn(1, 77, width, generator=g)
    t = torch.tensor(500)
    calls = []

    def unet_eps(x, s):
        calls.append(len(x))
        return unet(x, t, encoder_hidden_states=s).sample

    with torch.no_grad():
        x, s = stack_branches(latents, states)
        e = split_branches(unet_eps(x, s))
        batched = composable_eps(e["null"], e["p"], e["p_a"], e["p_b"])
        assert calls == [8]
        # The same step as three separately guided predictions: 6 calls, each with its own null branch.
        null = states["null"].expand(2, -1, -1)
        tilde = {
            n: guided(unet_eps(latents, null), unet_eps(latents, states[n]), 7.5) for n in ("p", "p_a", "p_b")
        }
    m_a, m_b = half_masks(16)
    reference = 0.1 * tilde["p"] + 0.9 * m_a * tilde["p_a"] + 0.9 * m_b * tilde["p_b"]
    assert len(calls) == 7
    assert_close(batched, reference, atol=1e-5, rtol=1e-4)
