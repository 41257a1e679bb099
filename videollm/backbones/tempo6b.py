"""`tempo-6b`: the released Tempo model (Vision-CAIR/Tempo-6B), loaded without CUDA or flash-attention.

Three parts, all in one checkpoint (key layout of the released `TempoQwenForCausalLM`):

| keys | what |
| --- | --- |
| `model.vision_tower_aux_list.0.vlm.model.{visual,language_model}.*` | the SVLM, Qwen3-VL-2B without its LM head |
| `model.vision_tower_aux_list.0.compression_tokens` | K learned memory tokens, (1, K, 2048) |
| `model.mm_projector.*` | projector 2048 → the LLM width (`mm_projector_type`, e.g. `mlp2x_gelu`) |
| `model.{embed_tokens,layers,norm}.*`, `lm_head.weight` | the answering LLM, Qwen3-4B |

The SVLM reads a segment's frames and the query, then K memory tokens appended after the prompt; their last
hidden states, projected, are the segment's tokens (`encode_segments`). Relevance comes from the same pass:
the hidden state just before the first memory token against the base SVLM's LM-head rows of "Yes" and
"No": sigmoid(h · (W[Yes] − W[No])). The base SVLM (named in the checkpoint's `mm_vision_tower_aux_list`)
provides its config, tokenizer and those two rows (its embedding rows when its embeddings are tied).

Frames are turned into Qwen3-VL patches here (resize to ≤ 512 px long side in multiples of 32, mean/std
0.5, temporal patch 2, the processor's patch order), so neither qwen-vl-utils nor a CUDA build is needed.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import require
from ..device import resolve_device, resolve_dtype
from ..errors import InvalidRequestError, ModelLoadError
from ..runtime.decode_step import forward_last
from .base import Backbone
from .presets import register_preset

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "Vision-CAIR/Tempo-6B"
SVLM_PREFIX = "model.vision_tower_aux_list.0."
PROJECTOR_PREFIX = "model.mm_projector."
VIDEO_TOKEN = "<video>"
#: the SVLM's inference prompt in the released code (system turn; the user turn is frames + "\nQuery:\n…")
SVLM_SYSTEM = ("You are a query-conditioned visual compressor. Store in the provided memory tokens the minimal "
               "visual information needed to answer the Query. Ignore irrelevant details. Now, before compressing, "
               "answer exactly 'Yes' or 'No': is this segment relevant to the Query?")
LLM_SYSTEM = "You are a helpful assistant."
#: ChatML with a <video> placeholder for the compressed segments (the released `qwen` conversation)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<video>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_SIDE, FACTOR = 512, 32
MEAN = STD = (0.5, 0.5, 0.5)


# ---- pieces ------------------------------------------------------------------------------------------
def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """The released projector types: linear, mlpNx_gelu, identity (same module order, so keys match)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    m = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if m:
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(1, int(m.group(1))):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    if kind == "identity":
        return nn.Identity()
    raise ModelLoadError("tempo", ValueError(f"unknown mm_projector_type {kind!r}"))


class _VLM(nn.Module):
    """Holds the Qwen3-VL model under `.model` so state-dict keys read `vlm.model.visual...` as released."""

    def __init__(self, config: Any):
        super().__init__()
        transformers = require("transformers", purpose="tempo-6b (Qwen3-VL)")
        self.model = transformers.Qwen3VLModel(config)


class TempoSVLM(nn.Module):
    """Qwen3-VL + K memory tokens + the Yes/No router vector (W[Yes] − W[No] of the base SVLM's LM head)."""

    def __init__(self, config: Any, num_memory: int):
        super().__init__()
        self.config = config
        self.vlm = _VLM(config)
        d = config.text_config.hidden_size
        self.compression_tokens = nn.Parameter(torch.zeros(1, num_memory, d))
        self.register_buffer("router", torch.zeros(d), persistent=False)

    @property
    def num_memory(self) -> int:
        return int(self.compression_tokens.shape[1])


def frame_size(height: int, width: int, max_side: int = MAX_SIDE, factor: int = FACTOR) -> tuple[int, int]:
    """Long side ≤ max_side, both sides multiples of `factor` (patch 16 × merge 2), at least one factor."""
    scale = min(1.0, max_side / max(height, width))
    return (max(factor, int(round(height * scale / factor)) * factor),
            max(factor, int(round(width * scale / factor)) * factor))


def patchify(frames: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, list[int]]:
    """Normalised frames (T, C, H, W) → Qwen-VL flat patches (t*h*w, C*temporal*patch*patch) and [t, h, w].

    Frames are padded to a multiple of `temporal` by repeating the last one; patches are ordered by merge
    window (2×2 blocks contiguous), as Qwen3-VL's video processor does.
    """
    t, c, h, w = frames.shape
    if pad := -t % temporal:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
        t += pad
    gt, gh, gw = t // temporal, h // patch, w // patch
    x = frames.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), [gt, gh, gw]


# ---- the backbone ------------------------------------------------------------------------------------
class TempoBackbone(Backbone):
    """Qwen3 LLM driven stage by stage, with Tempo's SVLM as the segment encoder (`encode_segments`)."""

    chat_template = CHAT_TEMPLATE

    def __init__(self, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, svlm: TempoSVLM,
                 svlm_tokenizer: PreTrainedTokenizerBase, projector: nn.Module,
                 name: str = DEFAULT_MODEL_ID, max_side: int = MAX_SIDE):
        self.llm = llm.eval()
        self.svlm = svlm.eval()
        self.projector = projector.eval()
        self.tokenizer = tokenizer
        self.svlm_tokenizer = svlm_tokenizer
        if VIDEO_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
        self.name = name
        self.max_side = max_side
        p = next(llm.parameters())
        self.device, self.dtype = p.device, p.dtype
        vc = svlm.config.vision_config
        self._patch, self._merge, self._temporal = int(vc.patch_size), int(vc.spatial_merge_size), \
            int(vc.temporal_patch_size)
        st = svlm_tokenizer
        self._ids = {name: st.convert_tokens_to_ids(tok) for name, tok in
                     (("start", "<|vision_start|>"), ("end", "<|vision_end|>"), ("video", "<|video_pad|>"))}
        self._pad_id = st.pad_token_id if st.pad_token_id is not None else st.convert_tokens_to_ids("<|endoftext|>")

    # ---- sizes ------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.llm.config.hidden_size)

    @property
    def frame_grid(self) -> tuple[int, int]:
        return 1, self.svlm.num_memory  # per segment, not per frame: only the tempo compressor uses it

    @property
    def max_context(self) -> int:
        return int(self.llm.config.max_position_embeddings)

    @property
    def video_token(self) -> str:
        return VIDEO_TOKEN

    # ---- vision: only through the SVLM ----------------------------------------------------------------
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        raise InvalidRequestError("tempo-6b sees video only through its SVLM's memory tokens: use --compressor tempo")

    def project(self, features: torch.Tensor) -> torch.Tensor:
        raise InvalidRequestError("tempo-6b sees video only through its SVLM's memory tokens: use --compressor tempo")

    def _segment_inputs(self, frames: torch.Tensor, times: list[float], query: str
                        ) -> tuple[list[int], torch.Tensor, list[int]]:
        """One segment → SVLM prompt ids (video placeholders expanded), flat patches and its grid [t, h, w]."""
        if frames.shape[0] == 1:  # Qwen3-VL needs two frames per temporal patch: the reference duplicates
            frames, times = torch.cat([frames, frames]), times * 2
        h, w = frame_size(frames.shape[1], frames.shape[2], self.max_side, self._patch * self._merge)
        x = frames.to(self.device).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 255) / 255
        mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
        patches, grid = patchify(x, self._patch, self._merge, self._temporal)
        per_group = grid[1] * grid[2] // (self._merge ** 2)
        tok = self.svlm_tokenizer
        ids: list[int] = tok(f"<|im_start|>system\n{SVLM_SYSTEM}<|im_end|>\n<|im_start|>user\n",
                             add_special_tokens=False)["input_ids"]
        for g in range(grid[0]):  # Qwen3-VL: "<t seconds>" before each temporal group (its mean time)
            pair = times[g * self._temporal:(g + 1) * self._temporal] or times[-1:]
            ids += tok(f"<{sum(pair) / len(pair):.1f} seconds>", add_special_tokens=False)["input_ids"]
            ids += [self._ids["start"]] + [self._ids["video"]] * per_group + [self._ids["end"]]
        ids += tok(f"\nQuery:\n{query}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        return ids, patches, grid

    @torch.inference_mode()
    def encode_segments(self, segments: list[torch.Tensor], query: str, times: list[list[float]] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segments of uint8 frames → (projected memory tokens (S, K, D_llm), relevance (S,)), one batched pass."""
        times = times or [[i * 0.5 for i in range(len(s))] for s in segments]
        built = [self._segment_inputs(s, t, query.strip() or "Describe this content.") for s, t in zip(segments, times)]
        k = self.svlm.num_memory
        lengths = [len(ids) for ids, _, _ in built]
        width = max(lengths) + k
        b = len(built)
        input_ids = torch.full((b, width), self._pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(b, width, dtype=torch.long, device=self.device)
        memory = torch.zeros(b, width, dtype=torch.bool, device=self.device)
        for i, (ids, _, _) in enumerate(built):  # right padding; memory tokens right after each prompt
            input_ids[i, : len(ids)] = torch.as_tensor(ids, device=self.device)
            mask[i, : len(ids) + k] = 1
            memory[i, len(ids): len(ids) + k] = True
        vlm = self.svlm.vlm.model
        embeds = vlm.get_input_embeddings()(input_ids)
        pixels = torch.cat([p for _, p, _ in built]).to(self.device)
        grid = torch.as_tensor([g for _, _, g in built], dtype=torch.long, device=self.device)
        vis = vlm.get_video_features(pixels, grid, return_dict=True)
        video_mask = input_ids == self._ids["video"]
        video_embeds = torch.cat(list(vis.pooler_output)).to(embeds.dtype)
        embeds = embeds.masked_scatter(video_mask[..., None].expand_as(embeds), video_embeds)
        embeds[memory] = self.svlm.compression_tokens[0].to(embeds.dtype).repeat(b, 1)
        deepstack = [torch.cat(list(f)).to(embeds.dtype) for f in vis.deepstack_features]
        token_type = video_mask.int() * 2  # 0 text, 2 video (memory tokens count as text positions)
        position_ids, _ = vlm.get_rope_index(input_ids, token_type, None, grid, attention_mask=mask)
        out = vlm.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                 visual_pos_masks=video_mask, deepstack_visual_embeds=deepstack, use_cache=False)
        hidden = out.last_hidden_state
        mem = hidden[memory].reshape(b, k, -1)
        before = torch.as_tensor(lengths, device=self.device) - 1  # the position just before the first memory token
        h = hidden[torch.arange(b, device=self.device), before]
        relevance = torch.sigmoid(h.float() @ self.svlm.router.float())
        projected = self.projector(mem.to(next(self.projector.parameters(), mem).dtype))
        return projected.to(self.dtype), relevance.cpu()

    # ---- text ---------------------------------------------------------------------------------------
    def input_embeddings(self) -> torch.nn.Embedding:
        return self.llm.get_input_embeddings()

    def render_prompt(self, user_text: str, system: str | None = None) -> str:
        return super().render_prompt(user_text, system or LLM_SYSTEM)

    @torch.inference_mode()
    def lm_forward(self, inputs_embeds: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        hidden, cache = forward_last(self.llm.model, inputs_embeds.to(self.device, self.dtype), cache)
        return self.llm.lm_head(hidden).float()[:, -1], cache

    @classmethod
    def from_pretrained(cls, model_id: str = DEFAULT_MODEL_ID, device: str | torch.device | None = "auto",
                        dtype: str | torch.dtype | None = "auto", **kwargs: Any) -> "TempoBackbone":
        return load_tempo(model_id, device=device, dtype=dtype, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "svlm_memory_tokens": self.svlm.num_memory,
                "svlm_hidden": int(self.svlm.config.text_config.hidden_size)}


# ---- loading -----------------------------------------------------------------------------------------
def _local_dir(model: str) -> Path:
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: sharded or single safetensors, or pytorch_model.bin."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if files:
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(str(f)))
        return out
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"no safetensors or pytorch_model.bin in {path}")
    out = {}
    for f in bins:
        out.update(torch.load(f, map_location="cpu", weights_only=True))
    return out


def _yes_no_rows(svlm_dir: Path, svlm_cfg: Any, tokenizer: Any, tempo_state: dict[str, torch.Tensor]) -> torch.Tensor:
    """W_lm[Yes] − W_lm[No] of the base SVLM: its embedding rows when tied (as Qwen3-VL-2B), else its LM head."""
    yes, no = (tokenizer.convert_tokens_to_ids(t) for t in ("Yes", "No"))
    if yes is None or no is None or yes == tokenizer.unk_token_id or no == tokenizer.unk_token_id:
        yes = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
        no = tokenizer("No", add_special_tokens=False)["input_ids"][0]
    tied = getattr(svlm_cfg, "tie_word_embeddings", False) or \
        getattr(svlm_cfg.text_config, "tie_word_embeddings", False)
    if tied:
        w = tempo_state[SVLM_PREFIX + "vlm.model.language_model.embed_tokens.weight"]
    else:
        base = _state_dict(svlm_dir)
        w = base.get("lm_head.weight")
        if w is None:
            raise ModelLoadError(str(svlm_dir), KeyError("the base SVLM has no lm_head.weight for the Yes/No router"))
    return (w[yes] - w[no]).float()


@register_preset("tempo-6b", "Vision-CAIR/Tempo-6B")
def load_tempo(model_id: str = DEFAULT_MODEL_ID, device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = "auto", svlm: str | None = None, **_: Any) -> TempoBackbone:
    """Load a Tempo checkpoint (hub id or directory). `svlm`: the base SVLM (default: the checkpoint's
    `mm_vision_tower_aux_list[0]`, e.g. Qwen/Qwen3-VL-2B-Instruct) for its config, tokenizer and Yes/No rows."""
    transformers = require("transformers", purpose="tempo-6b")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    root = _local_dir(model_id)
    cfg = json.loads((root / "config.json").read_text())
    svlm_id = svlm or (cfg.get("mm_vision_tower_aux_list") or [None])[0]
    if not svlm_id:
        raise ModelLoadError(model_id, ValueError("config.json names no SVLM (mm_vision_tower_aux_list)"))
    svlm_dir = _local_dir(svlm_id)
    svlm_cfg = transformers.AutoConfig.from_pretrained(str(svlm_dir))
    state = _state_dict(root)
    mem = state.get(SVLM_PREFIX + "compression_tokens")
    if mem is None:
        raise ModelLoadError(model_id, KeyError(f"{SVLM_PREFIX}compression_tokens missing: not a Tempo checkpoint"))
    llm_cfg = transformers.Qwen3Config(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures",
                                                                                        "auto_map")})
    llm_cfg.tie_word_embeddings = bool(cfg.get("tie_word_embeddings", False))
    llm = transformers.Qwen3ForCausalLM(llm_cfg)
    svlm_mod = TempoSVLM(svlm_cfg, int(mem.shape[1]))
    proj = build_projector(cfg.get("mm_projector_type", "linear"), int(svlm_cfg.text_config.hidden_size),
                           int(llm_cfg.hidden_size))
    parts: dict[str, dict[str, torch.Tensor]] = {"svlm": {}, "proj": {}, "llm": {}}
    for key, value in state.items():
        if key.startswith(SVLM_PREFIX):
            parts["svlm"][key[len(SVLM_PREFIX):]] = value
        elif key.startswith(PROJECTOR_PREFIX):
            parts["proj"][key[len(PROJECTOR_PREFIX):]] = value
        else:
            parts["llm"][key] = value
    for name, module, sd in (("LLM", llm, parts["llm"]), ("SVLM", svlm_mod, parts["svlm"]),
                             ("projector", proj, parts["proj"])):
        missing, unexpected = module.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not (name == "LLM" and m == "lm_head.weight" and llm_cfg.tie_word_embeddings)]
        if missing or unexpected:
            raise ModelLoadError(model_id, KeyError(f"{name} keys do not match the Tempo layout: missing "
                                                    f"{missing[:5]}, unexpected {unexpected[:5]}"))
    svlm_tok = transformers.AutoTokenizer.from_pretrained(str(svlm_dir))
    svlm_mod.router.copy_(_yes_no_rows(svlm_dir, svlm_cfg, svlm_tok, state))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(root))
    for module in (llm, svlm_mod, proj):
        module.to(dev, dt)
    return TempoBackbone(llm, tokenizer, svlm_mod, svlm_tok, proj, name=str(model_id))


__all__ = ["DEFAULT_MODEL_ID", "TempoBackbone", "TempoSVLM", "build_projector", "frame_size", "load_tempo", "patchify"]
