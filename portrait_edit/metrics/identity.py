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
