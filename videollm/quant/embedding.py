"""Quantized token embeddings: a lookup that dequantizes only the rows it is asked for.

The LM head and the embedding table are the largest matrices of a small LLM (Qwen2-0.5B: 151,936 × 896,
a quarter of its weights, tied). Quantizing the head as a `QuantLinear` gives decode its packed kernel;
`QuantEmbedding` then serves the lookup from the same packed rows when the weights are tied (nothing is
stored twice), or from its own packed copy when they are not.
"""
from __future__ import annotations

import torch
from torch import nn

from .linear import QuantLinear


class QuantEmbedding(nn.Module):
    """`nn.Embedding` replacement over a packed (vocab, hidden) `QuantLinear`.

    Tied: the source is the LM head, held without registering it (so it is saved once, as the head).
    """

    def __init__(self, source: QuantLinear, tied: bool, dtype: torch.dtype = torch.float32,
                 padding_idx: int | None = None):
        super().__init__()
        self.tied, self.dtype, self.padding_idx = tied, dtype, padding_idx
        self.num_embeddings, self.embedding_dim = source.out_features, source.in_features
        if tied:
            object.__setattr__(self, "_source", source)  # not a submodule: owned by the model's head
        else:
            self.source = source

    @property
    def table(self) -> QuantLinear:
        return self._source if self.tied else self.source

    def tie_to(self, head: QuantLinear) -> None:
        """Point a tied embedding at a (re)built head, e.g. after loading a checkpoint."""
        object.__setattr__(self, "_source", head)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"token id out of range [0, {self.num_embeddings})")
        rows = self.table.dequantize(torch.float32, rows=flat.cpu() if self.table.scale.device.type == "cpu" else flat)
        return rows.to(self.dtype).reshape(*input_ids.shape, self.embedding_dim)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, scheme: str, group_size: int | None, zero_point: bool = False
                       ) -> QuantEmbedding:
        """An untied embedding with its own packed table (no matmul kernel: lookups only)."""
        lin = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False, device="meta")
        lin.weight = emb.weight
        q = QuantLinear.from_linear(lin, scheme, group_size, kernel="dequant", zero_point=zero_point)
        return cls(q, tied=False, dtype=emb.weight.dtype, padding_idx=emb.padding_idx)

    def extra_repr(self) -> str:
        t = self.table
        return (f"{self.num_embeddings}, {self.embedding_dim}, scheme={t.scheme}, group={t.group}, "
                f"tied={self.tied}")
