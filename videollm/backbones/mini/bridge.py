"""The training-free vision→LLM bridge of `videollm-mini`: ImageNet classes as words the LLM already knows.

Each ImageNet class gets one vector in the LLM's input space: the mean of the input embeddings of its name's
tokens, rescaled to the typical token norm. A frame becomes `k` soft tokens, the vectors of its `k` most
probable classes in order of probability. Such tokens can be pooled or dropped by any compressor; a pooled
token is a mixture of class vectors, and `read_token` recovers the mixture's classes by greedy matching
pursuit against the class table. All functions here are pure tensor code, tested without the real models.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def imagenet_names() -> list[str]:
    """A short, readable name per ImageNet-1k class: the first synonym of timm's description."""
    from ..._compat import require

    require("timm", extra="mini", purpose="ImageNet class names")
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


def typical_norm(embedding: torch.Tensor) -> float:
    """Median L2 norm of the LLM's input embeddings: the scale soft tokens are given."""
    return float(embedding.float().norm(dim=-1).median())


def name_table(names: Sequence[str], tokenize: Callable[[str], list[int]], embedding: torch.Tensor,
               norm: float | None = None) -> torch.Tensor:
    """(C, D): mean input embedding of each name's tokens (as a word after a space), at the typical norm."""
    weight = embedding.float()
    norm = typical_norm(weight) if norm is None else norm
    rows = []
    for name in names:
        ids = tokenize(" " + name)
        if not ids:
            raise ValueError(f"name {name!r} tokenizes to nothing")
        rows.append(weight[torch.as_tensor(ids)].mean(0))
    table = torch.stack(rows)
    return F.normalize(table, dim=-1) * norm


@dataclass
class FrameClasses:
    """A frame's most probable classes, best first."""

    classes: list[int]
    probs: list[float]


def top_classes(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, C) probabilities → (n, k) values and indices, best first."""
    return probs.topk(k, dim=-1)


def soft_tokens(probs: torch.Tensor, table: torch.Tensor, k: int) -> torch.Tensor:
    """(n, C) class probabilities → (n, k, D): the class vectors of each frame's top-k classes, best first."""
    _, idx = top_classes(probs, k)
    return table[idx]


@dataclass
class TokenReading:
    classes: list[int]
    weights: list[float]  # least-squares coefficients, normalised to sum to 1
    residual: float  # fraction of the token's norm left unexplained


def read_token(token: torch.Tensor, table: torch.Tensor, max_atoms: int = 4, min_weight: float = 0.15
               ) -> TokenReading:
    """Which class vectors a (possibly pooled) soft token is made of: greedy orthogonal matching pursuit.

    A pure class vector is read back exactly (cosine 1); an average of a few class vectors is read back as
    those classes with roughly equal weights, because distinct names' vectors are far from parallel.
    """
    x = token.float()
    unit = F.normalize(table.float(), dim=-1)
    chosen: list[int] = []
    coef = torch.zeros(0)
    residual = x.clone()
    for _ in range(max_atoms):
        scores = unit @ residual
        if chosen:
            scores[chosen] = -float("inf")
        best = int(scores.argmax())
        if chosen and float(scores[best]) <= 0.05 * float(residual.norm() + 1e-8):
            break
        chosen.append(best)
        basis = table[chosen].float().T  # (D, m)
        coef = torch.linalg.lstsq(basis, x[:, None]).solution[:, 0]
        residual = x - basis @ coef
        if float(residual.norm()) < 1e-3 * float(x.norm() + 1e-8):
            break
    coef = coef.clamp(min=0)
    total = float(coef.sum()) or 1.0
    weights = [float(c) / total for c in coef]
    keep = [(c, w) for c, w in zip(chosen, weights) if w >= min_weight]
    keep.sort(key=lambda cw: -cw[1])
    return TokenReading([c for c, _ in keep], [w for _, w in keep],
                        float(residual.norm() / (x.norm() + 1e-8)))


def nearest_vocab(token: torch.Tensor, embedding: torch.Tensor, n: int = 5) -> list[int]:
    """Vocabulary ids whose input embeddings are closest in cosine to `token` (for tests and debugging)."""
    sims = F.normalize(embedding.float(), dim=-1) @ F.normalize(token.float(), dim=0)
    return sims.topk(n).indices.tolist()
