"""Identity retrieval: does a face's nearest neighbour (cosine) show the same identity?"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_retrieval_top1(features: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
    """Per-sample hit of nearest-neighbour retrieval among the OTHER samples.

    Args:
        features: float (N, F) (e.g. flattened c_id (N, K * D), or CLIP image features); compared by cosine.
        identities: long (N,) identity ids; each id should appear at least twice (else that sample's
            neighbour can never match).

    Returns:
        bool (N,): True where the most cosine-similar other sample has the same identity (ties: the lower
        index). Its mean is the top-1 accuracy (chance = 1 / (identities - 1) with two samples each).
    """
    if features.ndim != 2 or identities.shape != (features.shape[0],) or features.shape[0] < 2:
        raise ValueError(
            f"need features (N, F) with N >= 2 and identities (N,); got {tuple(features.shape)}, "
            f"{tuple(identities.shape)}"
        )
    unit = F.normalize(features.float(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(float("-inf"))  # a sample never retrieves itself
    return identities[similarity.argmax(dim=1)] == identities


def identity_contrastive_loss(
    queries: torch.Tensor, keys: torch.Tensor, identities: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE between two views of each person: row i of `queries` should be more cosine-similar
    to row i of `keys` than to any other person's row, and the other way round.

    Args:
        queries, keys: float (B, F): features of view 1 and view 2 of the same B faces' people.
        identities: long (B,): identity ids; other rows of the same identity are left out of the negatives
            (a batch can draw one person twice).
        temperature: the softmax temperature over cosine similarities.

    Returns:
        float scalar: the mean over both directions of -log softmax(cos / temperature) at the positive.
    """
    if queries.shape != keys.shape or queries.ndim != 2 or identities.shape != (queries.shape[0],):
        raise ValueError(
            f"need queries and keys (B, F) alike and identities (B,); got {tuple(queries.shape)}, "
            f"{tuple(keys.shape)}, {tuple(identities.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = F.normalize(queries.float(), dim=1) @ F.normalize(keys.float(), dim=1).T / temperature
    same = identities[:, None] == identities[None, :]
    logits = logits.masked_fill(
        same & ~torch.eye(len(identities), dtype=torch.bool, device=logits.device), float("-inf")
    )
    target = torch.arange(len(identities), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
