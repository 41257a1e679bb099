"""`longvu-qwen2-7b` / `longvu-llama3.2-3b`: the released LongVU models (Vision-CAIR/LongVU_Qwen2_7B,
Vision-CAIR/LongVU_Llama3_2_3B), loaded without CUDA.

A checkpoint (`model_type` `cambrian_qwen` or `cambrian_llama`) holds the LLM and the connector
(`longvu_connector.py`); the two vision towers are loaded apart, as the release does: SigLIP-so400m
(`google/siglip-so400m-patch14-384`, last hidden state before its post-LayerNorm) and DINOv2-giant
(`facebook/dinov2-giant` at 378 px, last hidden state after its LayerNorm, CLS dropped). Both 27×27 patch maps
are resized to 24×24 (bilinear, float32) and fed to the SVA, whose 12×12 output is projected and gets
the learned newline after every row: 12 × 13 = 156 tokens per frame, the grid this backbone reports.

LongVU's compressor uses three more things only this backbone has (`SupportsDedupFeatures`,
`SupportsLowResTokens`): the model's own DINOv2 features for frame dedup, the 8×8 low-resolution copy made
from the SVA output *before* the projector, and the token counts the released gates divide by (144 and 64,
without newlines). Frames are padded to a square with the tower's mean colour, as released; see
docs/longvu.md ("released checkpoints") for what differs from the release and why.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import require
from ..device import resolve_device, resolve_dtype
from ..errors import ModelLoadError
from ..runtime.decode_step import forward_last
from .base import Backbone, left_pad
from .longvu_connector import LongVUConnector
from .presets import register_preset

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

QWEN_MODEL_ID = "Vision-CAIR/LongVU_Qwen2_7B"
LLAMA_MODEL_ID = "Vision-CAIR/LongVU_Llama3_2_3B"
#: the towers the release loads at run time (siglip_encoder.py:13, dino_encoder.py:13); config names only pick the class
SIGLIP_ID = "google/siglip-so400m-patch14-384"
DINO_ID = "facebook/dinov2-giant"
#: a checkpoint directory may carry its towers here (the tiny test checkpoint does); else the hub ids above
TOWER_DIRS = {"siglip": "vision_towers/siglip", "dino": "vision_towers/dinov2"}
IMAGE_TOKEN = "<image>"
SYSTEM = "You are a helpful assistant."
#: the released `qwen` conversation (conversation.py: conv_qwen), as a template with one `<image>` placeholder
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: checkpoint keys (after `model.`) that belong to the connector, not the LLM
CONNECTOR_PREFIXES = ("mm_projector", "mm_projector_aux_", "vision_sampler_", "vision_query", "image_newline")
FAMILY_LLMS = {"cambrian_qwen": "Qwen2", "cambrian_llama": "Llama"}


@dataclass(frozen=True)
class LongVUSettings:
    """The config fields the forward path reads (released config.json names)."""

    image_token_len: int = 144
    query_num: int = 144
    lowres_token: int = 8
    highres: bool = True
    tower_tokens: tuple[int, ...] = (576, 576)
    connector_depth: int = 3
    dino_threshold: float = 0.83
    drop_threshold: float = 0.7
    tokenizer_model_max_length: int | None = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "LongVUSettings":
        queries = cfg.get("query_num_list") or [cfg.get("image_token_len", 144)]
        if int(cfg.get("num_query_group", 1)) != 1 or len(queries) != 1:
            raise ValueError("only one SVA query group is supported (the released checkpoints have one)")
        if not cfg.get("connector_only", True):
            raise ValueError("connector_only=false (SVA layers inside the LLM) is not supported; "
                             "the released checkpoints are connector-only")
        if cfg.get("mm_projector_type", "sva") != "sva":
            raise ValueError(f"mm_projector_type {cfg.get('mm_projector_type')!r}: only 'sva' is supported")
        if cfg.get("frame_pos"):
            raise ValueError("frame_pos=true is not supported (the released checkpoints have it off)")
        max_len = cfg.get("tokenizer_model_max_length")
        return cls(image_token_len=int(cfg.get("image_token_len", 144)), query_num=int(queries[0]),
                   lowres_token=int(cfg.get("lowres_token", 8)), highres=bool(cfg.get("highres", False)),
                   tower_tokens=tuple(int(t) for t in cfg.get("mm_vision_tower_aux_token_len_list", [576, 576])),
                   connector_depth=int(cfg.get("connector_depth", 3)),
                   dino_threshold=float(cfg.get("dino_threshold", 0.83)),
                   drop_threshold=float(cfg.get("drop_threshold", 0.7)),
                   tokenizer_model_max_length=int(max_len) if max_len else None)


def preprocess(frames: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...],
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (n, H, W, 3) → (n, 3, size, size): centred on a square of int(mean·255) (the release's
    `expand2square`), resized (bicubic, antialiased: PIL's resize), rescaled and normalised."""
    x = frames.to(device).permute(0, 3, 1, 2).float()
    n, c, h, w = x.shape
    if h != w:
        s = max(h, w)
        fill = torch.tensor([float(int(m * 255)) for m in mean], device=device).view(1, c, 1, 1)
        canvas = fill.expand(n, c, s, s).clone()
        top, left = (s - h) // 2, (s - w) // 2
        canvas[:, :, top : top + h, left : left + w] = x
        x = canvas
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp_(0, 255).round_().div_(255.0)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s_ = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return ((x - m) / s_).to(dtype)


def to_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(n, L, D) patch tokens on a square map → (n, side², D), bilinear in float32 when the map differs
    (the release's `interpolate` to 576 tokens)."""
    n, length, d = tokens.shape
    src = math.isqrt(length)
    if src == side:
        return tokens
    x = tokens.view(n, src, src, d).permute(0, 3, 1, 2)
    x = F.interpolate(x.float(), size=(side, side), mode="bilinear", align_corners=False).to(tokens.dtype)
    return x.permute(0, 2, 3, 1).reshape(n, side * side, d)


class LongVUBackbone(Backbone):
    """SigLIP + DINOv2 → SVA connector → Qwen2 or Llama, driven stage by stage."""

    def __init__(self, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, siglip: nn.Module, dino: nn.Module,
                 connector: LongVUConnector,
                 settings: LongVUSettings, name: str = QWEN_MODEL_ID, siglip_size: int = 384, dino_size: int = 378,
                 notice: str | None = None):
        self.llm = llm.eval()
        self.towers = nn.ModuleDict({"siglip": siglip, "dino": dino}).eval()
        self.connector = connector.eval()
        self.settings = settings
        self.tokenizer = tokenizer
        if IMAGE_TOKEN not in tokenizer.get_vocab():  # one id, as the release's -200: never embedded (spliced)
            tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        if getattr(tokenizer, "chat_template", None) is None:
            self.chat_template = CHATML_TEMPLATE
        self.name = name
        self.notice = notice
        self.siglip_size, self.dino_size = siglip_size, dino_size
        p = next(llm.parameters())
        self.device, self.dtype = p.device, p.dtype

    # ---- sizes ------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.llm.config.hidden_size)

    @property
    def frame_grid(self) -> tuple[int, int]:
        s = self.connector.final_side
        return s, s + 1  # the last column is the row newline

    @property
    def reduced_frame_grid(self) -> tuple[int, int]:
        s = self.connector.lowres_token
        return s, s + 1

    @property
    def gate_tokens_per_frame(self) -> tuple[int, int]:
        """(full, low-res) tokens per frame the released gates divide by: newlines not counted."""
        return self.connector.final_side ** 2, self.connector.lowres_token ** 2

    @property
    def max_context(self) -> int:
        return int(self.llm.config.max_position_embeddings)

    @property
    def video_token(self) -> str:
        return IMAGE_TOKEN

    # ---- vision -----------------------------------------------------------------------------------
    def _siglip(self, frames: torch.Tensor) -> torch.Tensor:
        x = preprocess(frames, self.siglip_size, SIGLIP_MEAN, SIGLIP_STD, self.device, self.dtype)
        out = self.towers["siglip"](pixel_values=x, output_hidden_states=True, return_dict=True)
        return to_grid(out.hidden_states[-1], self.connector.tower_sides[0])

    def _dino(self, frames: torch.Tensor) -> torch.Tensor:
        x = preprocess(frames, self.dino_size, DINO_MEAN, DINO_STD, self.device, self.dtype)
        out = self.towers["dino"](pixel_values=x, return_dict=True)
        return to_grid(out.last_hidden_state[:, 1:], self.connector.tower_sides[1])

    @torch.inference_mode()
    def dedup_features(self, frames: torch.Tensor) -> torch.Tensor:
        """The model's own DINOv2 features (n, 576, 1536): what the release's `select_frame` compares."""
        return self._dino(frames)

    @torch.inference_mode()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames → both towers' 24×24 maps, concatenated on channels (n, 24, 24, 1152 + 1536)."""
        s, d = self._siglip(frames), self._dino(frames)
        side = self.connector.tower_sides[0]
        return torch.cat([s, d.to(s.dtype)], dim=-1).view(s.shape[0], side, side, -1)

    def _split(self, features: torch.Tensor) -> list[torch.Tensor]:
        n = features.shape[0]
        ds = int(self.connector.mm_projector_aux_0[0].in_features)
        flat = features.reshape(n, -1, features.shape[-1])
        return [flat[..., :ds], flat[..., ds:]]

    def _sva(self, features: torch.Tensor, frame_hw: tuple[int, int] | None) -> torch.Tensor:
        return self.connector.sample([f.to(self.dtype) for f in self._split(features)], frame_hw)

    @torch.inference_mode()
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Features (n, 24, 24, Ds + Dd) → tokens (n, 12, 13, H). Without the frame size the SVA sees every
        key (square frames); `frame_tokens` passes the size so padded cells are masked as released."""
        return self.connector.to_llm(self._sva(features, None))

    @torch.inference_mode()
    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        hw = (int(frames.shape[1]), int(frames.shape[2]))
        return self.connector.to_llm(self._sva(self.encode_frames(frames), hw))

    @torch.inference_mode()
    def frame_tokens_multires(self, frames: torch.Tensor) -> torch.Tensor:
        """Full and low-res tokens of the same frames, flat: (n, 12·13 + 8·9, H), full grid first."""
        hw = (int(frames.shape[1]), int(frames.shape[2]))
        grid = self._sva(self.encode_frames(frames), hw)
        full, low = self.connector.to_llm(grid), self.connector.lowres(grid)
        n = full.shape[0]
        return torch.cat([full.reshape(n, -1, full.shape[-1]), low.reshape(n, -1, low.shape[-1])], dim=1)

    def quantizable_modules(self) -> dict[str, nn.Module]:
        """The LLM (no embeddings, no head), both towers (`--vision-quant`) and the connector (vision role)."""
        return {"llm": self.llm.model, "vision": self.towers, "connector": self.connector}

    def causal_lm(self) -> nn.Module:
        return self.llm

    def text_decoder(self) -> tuple[nn.Module, nn.Module]:
        return self.llm.model, self.llm.lm_head

    # ---- text ---------------------------------------------------------------------------------------
    def input_embeddings(self) -> torch.nn.Embedding:
        return self.llm.get_input_embeddings()

    def render_prompt(self, user_text: str, system: str | None = None) -> str:
        """The released prompt: system "You are a helpful assistant.", user "<image>\\n{question}", rendered by
        the checkpoint tokenizer's own template (ChatML for Qwen2, Llama-3's for Llama). Llama's template writes
        its BOS; prompts are tokenized without adding another, which is what the release gets by dropping
        `input_ids[0]` (the tokenizer's duplicate)."""
        messages = [{"role": "system", "content": system or SYSTEM},
                    {"role": "user", "content": f"{IMAGE_TOKEN}\n{user_text}"}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  chat_template=self.chat_template)

    @torch.inference_mode()
    def lm_forward(self, inputs_embeds: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        hidden, cache = forward_last(self.llm.model, inputs_embeds.to(self.device, self.dtype), cache)
        return self.llm.lm_head(hidden).float()[:, -1], cache

    @torch.inference_mode()
    def batch_last_logits(self, prompts: list[torch.Tensor]) -> torch.Tensor:
        embeds, mask, positions = left_pad([p.to(self.device, self.dtype) for p in prompts])
        out = self.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                             return_dict=True)
        return self.llm.lm_head(out.last_hidden_state[:, -1]).float()

    def sequence_logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        out = self.llm.model(inputs_embeds=inputs_embeds.to(self.dtype), use_cache=False, return_dict=True)
        return self.llm.lm_head(out.last_hidden_state).float()

    @classmethod
    def from_pretrained(cls, model_id: str = QWEN_MODEL_ID, device: str | torch.device | None = "auto",
                        dtype: str | torch.dtype | None = "auto", **kwargs: Any) -> "LongVUBackbone":
        return load_longvu(model_id, device=device, dtype=dtype, **kwargs)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {**super().describe(), "reduced_grid": list(self.reduced_frame_grid), "sva_queries": s.query_num,
                "dino_threshold": s.dino_threshold, "drop_threshold": s.drop_threshold}


# ---- loading -----------------------------------------------------------------------------------------
def _local_dir(model: str, **hub: Any) -> Path:
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, **hub))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from .tempo6b import _state_dict as read

    return read(path)


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(LLM keys, connector keys without `model.`) of a released checkpoint."""
    llm, conn = {}, {}
    for key, value in state.items():
        rest = key[len("model."):] if key.startswith("model.") else None
        if rest is not None and rest.startswith(CONNECTOR_PREFIXES):
            conn[rest] = value
        else:
            llm[key] = value
    return llm, conn


def _load_strict(name: str, model_id: str, module: nn.Module, sd: dict[str, torch.Tensor],
                 optional: tuple[str, ...] = ()) -> None:
    """Every checkpoint key consumed and every module weight given; else an error naming the keys."""
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # a shape that does not fit the config: name it, no traceback
        raise ModelLoadError(model_id, ValueError(f"{name} weights do not fit config.json: {err}")) from err
    missing = [m for m in missing if m not in optional]
    if missing or unexpected:
        raise ModelLoadError(model_id, KeyError(f"{name} keys do not match the LongVU layout: missing {missing[:8]}"
                                                f"{' …' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                                                f"{' …' if len(unexpected) > 8 else ''}"))


def _tower(kind: str, source: str, dtype: torch.dtype, hub: dict[str, Any]) -> nn.Module:
    transformers = require("transformers", purpose="LongVU's vision towers")
    cls = transformers.SiglipVisionModel if kind == "siglip" else transformers.Dinov2Model
    try:
        return cls.from_pretrained(source, dtype=dtype, **hub)
    except (OSError, ValueError) as err:
        raise ModelLoadError(source, err) from err


def build_llm(family: str, cfg: dict[str, Any]) -> nn.Module:
    """The LLM of a `cambrian_qwen` / `cambrian_llama` config: transformers' Qwen2 or Llama causal LM."""
    transformers = require("transformers", purpose="LongVU's LLM")
    kind = FAMILY_LLMS[family]
    fields = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "auto_map", "_name_or_path")}
    if kind == "Qwen2":  # the released CambrianQwen class forces rope_scaling=None
        fields["rope_scaling"] = None
    config = getattr(transformers, f"{kind}Config")(**fields)
    return getattr(transformers, f"{kind}ForCausalLM")(config)


def load_longvu(model_id: str = QWEN_MODEL_ID, device: str | torch.device | None = "auto",
                dtype: str | torch.dtype | None = "auto", siglip: str | None = None, dino: str | None = None,
                notice: str | None = None, **kwargs: Any) -> LongVUBackbone:
    """Load a released LongVU checkpoint (hub id or directory). `siglip` / `dino`: the towers (default: the
    checkpoint's `vision_towers/` folder when present, else the hub ids the release loads)."""
    transformers = require("transformers", purpose="LongVU")
    hub = {k: v for k, v in kwargs.items() if k == "local_files_only"}
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    root = _local_dir(model_id, **hub)
    cfg = json.loads((root / "config.json").read_text())
    family = cfg.get("model_type")
    if family not in FAMILY_LLMS:
        raise ModelLoadError(model_id, ValueError(f"model_type {family!r} is not a LongVU checkpoint "
                                                  f"({', '.join(FAMILY_LLMS)})"))
    try:
        settings = LongVUSettings.from_config(cfg)
    except ValueError as err:
        raise ModelLoadError(model_id, err) from err
    llm_sd, conn_sd = split_state(_state_dict(root))
    towers = {}
    for kind, override, default in (("siglip", siglip, SIGLIP_ID), ("dino", dino, DINO_ID)):
        local = root / TOWER_DIRS[kind]
        towers[kind] = _tower(kind, override or (str(local) if local.is_dir() else default), dt, hub)
    dims = [int(towers["siglip"].config.hidden_size), int(towers["dino"].config.hidden_size)]
    query = conn_sd.get("vision_query")
    if query is None:
        raise ModelLoadError(model_id, KeyError("model.vision_query missing: not a LongVU (SVA) checkpoint"))
    dim = int(cfg.get("vision_hidden_size") or query.shape[-1])
    if "model.embed_tokens.weight" in llm_sd:  # the release resizes the table to len(tokenizer): weights decide
        cfg["vocab_size"] = int(llm_sd["model.embed_tokens.weight"].shape[0])
    llm = build_llm(family, cfg)
    connector = LongVUConnector(dims, dim, int(llm.config.hidden_size), list(settings.tower_tokens),
                                settings.query_num, settings.image_token_len, settings.connector_depth,
                                settings.lowres_token)
    tied = bool(getattr(llm.config, "tie_word_embeddings", False))
    _load_strict("LLM", model_id, llm, llm_sd, optional=("lm_head.weight",) if tied else ())
    _load_strict("connector", model_id, connector, conn_sd)
    # config=: AutoTokenizer would re-read config.json, whose cambrian_* model_type transformers does not know
    # (a "model of type cambrian_qwen" warning on every load)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(root), config=llm.config)
    sc, dc = towers["siglip"].config, towers["dino"].config
    siglip_size = int(sc.image_size)
    # DINOv2 runs on SigLIP's patch grid (27 × 14 = 378 px, the release's `res`), not at its own 518
    dino_size = siglip_size // int(sc.patch_size) * int(dc.patch_size)
    for module in (llm, connector, *towers.values()):
        module.to(dev, dt)
    return LongVUBackbone(llm, tokenizer, towers["siglip"], towers["dino"], connector, settings,
                          name=str(model_id), siglip_size=siglip_size, dino_size=dino_size, notice=notice)


register_preset("longvu-qwen2-7b", QWEN_MODEL_ID)(load_longvu)
register_preset("longvu-llama3.2-3b", LLAMA_MODEL_ID)(load_longvu)

__all__ = ["LongVUBackbone", "LongVUSettings", "load_longvu", "preprocess", "split_state", "to_grid"]
