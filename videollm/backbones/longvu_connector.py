"""LongVU's connector in the released key layout: two aux projectors, the spatial vision aggregator (SVA), the
final MLP projector, the learned query and the row newline.

The released `CambrianMetaModel` (Vision-CAIR/LongVU, longvu/cambrian_arch.py) keeps these next to the LLM
under `model.`; the vision towers themselves are not in the checkpoint. Names and shapes here follow it so a
released state dict loads key for key:

| keys (under `model.`) | what |
| --- | --- |
| `mm_projector_aux_{i}.{0,2,3}` | per tower: Linear(Dv_i → D), GELU, Linear(D → D), LayerNorm(D) |
| `vision_sampler_0.layers.{l}.*` | SVA layers: each query cell attends to its r×r window in every tower |
| `vision_query` | (1, D): the one learned query, repeated for every output cell |
| `mm_projector.{0,2}` | Linear(D → H), GELU, Linear(H → H) |
| `image_newline` | (H,): appended after every token row |

This is a re-implementation from the released equations (no released code is copied): the module only has
to produce the same numbers from the same weights, which tests/test_longvu_backbone.py checks against the
equations written out independently.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: the release hard-codes 16 heads in every SVA layer (vision_sampler.py, `num_heads = 16`)
SVA_HEADS = 16


class _SVAMLP(nn.Module):
    """Bias-free Linear → GELU → Linear (`proj_out`: keys `linear_1`, `linear_2`)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_hidden, bias=False)
        self.linear_2 = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x)))


def _norm_linear(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out, bias=False))


class _MultiKVAttention(nn.Module):
    """Queries attend to the concatenated keys/values of every tower (one LayerNorm + projection per tower)."""

    def __init__(self, dim: int, num_kvs: int, heads: int = SVA_HEADS):
        super().__init__()
        if dim % heads:
            raise ValueError(f"SVA width {dim} is not divisible by its {heads} heads")
        self.heads, self.num_kvs = heads, num_kvs
        self.q_proj = _norm_linear(dim, dim)
        for i in range(num_kvs):
            setattr(self, f"k_proj_{i}", _norm_linear(dim, dim))
            setattr(self, f"v_proj_{i}", _norm_linear(dim, dim))
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, queries: torch.Tensor, latents: list[torch.Tensor], masks: list[torch.Tensor] | None
                ) -> torch.Tensor:
        b, lq, d = queries.shape
        h = self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, x.shape[1], h, d // h).transpose(1, 2)

        q = split(self.q_proj(queries))
        k = split(torch.cat([getattr(self, f"k_proj_{i}")(x) for i, x in enumerate(latents)], dim=1))
        v = split(torch.cat([getattr(self, f"v_proj_{i}")(x) for i, x in enumerate(latents)], dim=1))
        mask = None
        if masks is not None:
            mask = torch.cat(masks, dim=-1).view(b, 1, 1, -1).expand(b, 1, lq, k.shape[2])
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, lq, d))


class SVALayer(nn.Module):
    """One "joint" SVA layer (the released `VisionCrossAttentionLayer`): q' = [q, W_c·ctx] W_in;
    q' += attn(q', towers + pos); out = MLP(LN(q')) + q."""

    def __init__(self, dim: int, kv_sizes: list[int], heads: int = SVA_HEADS):
        super().__init__()
        self.proj_context = nn.Linear(dim, dim, bias=False)
        self.proj_in = nn.Linear(2 * dim, dim, bias=False)
        self.proj_out = _SVAMLP(dim, dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.cross_attn = _MultiKVAttention(dim, len(kv_sizes), heads)
        self.kv_sizes = list(kv_sizes)
        for i, size in enumerate(kv_sizes):
            if size > 1:  # a 1×1 window has no position table in the release
                setattr(self, f"pos_embed_{i}", nn.Parameter(torch.zeros(size * size, dim)))

    def forward(self, queries: torch.Tensor, context: torch.Tensor, latents: list[torch.Tensor],
                masks: list[torch.Tensor] | None) -> torch.Tensor:
        residual = queries
        x = self.proj_in(torch.cat([queries, self.proj_context(context)], dim=-1))
        with_pos = [lat + getattr(self, f"pos_embed_{i}")[None].to(lat.dtype) if lat.shape[1] > 1 else lat
                    for i, lat in enumerate(latents)]
        x = x + self.cross_attn(x, with_pos, masks)
        return self.proj_out(self.norm(x)) + residual


class SVASampler(nn.Module):
    """`vision_sampler_0`: `connector_depth` SVA layers under `.layers`."""

    def __init__(self, dim: int, kv_sizes: list[int], depth: int, heads: int = SVA_HEADS):
        super().__init__()
        self.layers = nn.ModuleList([SVALayer(dim, kv_sizes, heads) for _ in range(depth)])

    def forward(self, queries: torch.Tensor, context: torch.Tensor, latents: list[torch.Tensor],
                masks: list[torch.Tensor] | None) -> torch.Tensor:
        for layer in self.layers:
            queries = layer(queries, context, latents, masks)
        return queries


def _aux_projector(d_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, dim), nn.GELU(), nn.Linear(dim, dim), nn.LayerNorm(dim))


def window_mask(height: int, width: int, side: int, query_side: int) -> torch.Tensor:
    """The released SVA key mask of one frame: (query_side², r²) booleans over a side×side tower grid.

    The frame was padded to a square; grid cells over the padding are masked. The release reads the frame
    size `(H, W)` as `(W, H)` (`unmask_attention_mask` unpacks `original_w, original_h = image_sizes[i]`,
    which every video path fills with `frame.shape[:2]`), and the released weights were trained that way, so
    this keeps the swap. A query cell whose whole window is masked attends to all of it.
    """
    ow, oh = height, width  # the release's swapped reading (see above)
    mask = torch.ones(side, side, dtype=torch.bool)
    if ow / oh > 1.0:  # current aspect is 1 (square grid)
        pad = (side - int(oh * (side / ow))) // 2
        if pad > 0:
            mask[:pad] = False
            mask[-pad:] = False
    else:
        pad = (side - int(ow * (side / oh))) // 2
        if pad > 0:
            mask[:, :pad] = False
            mask[:, -pad:] = False
    r = side // query_side
    cells = mask.view(query_side, r, query_side, r).permute(0, 2, 1, 3).reshape(query_side * query_side, r * r)
    cells[cells.sum(-1) == 0] = True
    return cells


class LongVUConnector(nn.Module):
    """Tower features → `query_num` SVA tokens → LLM-space tokens on a square grid, plus the row newline."""

    def __init__(self, tower_dims: list[int], dim: int, llm_dim: int, tower_tokens: list[int], query_num: int,
                 image_token_len: int, depth: int, lowres_token: int = 8):
        super().__init__()
        self.query_side = math.isqrt(query_num)
        self.final_side = math.isqrt(image_token_len)
        self.tower_sides = [math.isqrt(t) for t in tower_tokens]
        self.lowres_token = lowres_token
        kv_sizes = [s // self.query_side for s in self.tower_sides]
        for i, d in enumerate(tower_dims):
            setattr(self, f"mm_projector_aux_{i}", _aux_projector(d, dim))
        self.vision_sampler_0 = SVASampler(dim, kv_sizes, depth)
        self.vision_query = nn.Parameter(torch.zeros(1, dim))
        self.mm_projector = nn.Sequential(nn.Linear(dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))
        self.image_newline = nn.Parameter(torch.zeros(llm_dim))
        self.num_towers = len(tower_dims)

    def sample(self, features: list[torch.Tensor], frame_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Per-tower features (n, side_i², Dv_i) → SVA output (n, D, final, final) before `mm_projector`."""
        n = features[0].shape[0]
        qs = self.query_side
        aux = [getattr(self, f"mm_projector_aux_{i}")(f) for i, f in enumerate(features)]
        dim = aux[0].shape[-1]
        context = aux[0].mean(1)[:, None, None, :].expand(n, qs * qs, 1, dim).reshape(n * qs * qs, 1, dim)
        latents, masks = [], []
        for x, side in zip(aux, self.tower_sides):
            r = side // qs
            latents.append(x.view(n, qs, r, qs, r, dim).permute(0, 1, 3, 2, 4, 5).reshape(n * qs * qs, r * r, dim))
            if frame_hw is not None:
                m = window_mask(frame_hw[0], frame_hw[1], side, qs).to(x.device)
                masks.append(m.repeat(n, 1))
        queries = self.vision_query[0].view(1, 1, dim).expand(n * qs * qs, 1, dim).to(aux[0].dtype)
        out = self.vision_sampler_0(queries, context, latents, masks if frame_hw is not None else None)
        grid = out.view(n, qs, qs, dim).permute(0, 3, 1, 2)
        if qs != self.final_side:
            grid = F.interpolate(grid.float(), size=(self.final_side, self.final_side), mode="bilinear",
                                 align_corners=False).to(out.dtype)
        return grid

    def to_llm(self, grid: torch.Tensor) -> torch.Tensor:
        """SVA grid (n, D, h, w) → projected tokens with the newline after each row (n, h, w + 1, H)."""
        n, _, h, w = grid.shape
        x = self.mm_projector(grid.permute(0, 2, 3, 1))
        nl = self.image_newline.to(x.dtype).view(1, 1, 1, -1).expand(n, h, 1, x.shape[-1])
        return torch.cat([x, nl], dim=2)

    def lowres(self, grid: torch.Tensor) -> torch.Tensor:
        """The low-resolution copy: the SVA grid resized to lowres_token² (bilinear, in float32), projected."""
        side = self.lowres_token
        small = F.interpolate(grid.float(), size=(side, side), mode="bilinear", align_corners=False).to(grid.dtype)
        return self.to_llm(small)


__all__ = ["LongVUConnector", "SVALayer", "SVASampler", "window_mask"]
