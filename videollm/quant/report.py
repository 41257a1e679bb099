"""What quantization cost and saved: weight bytes before/after, per-layer scheme, output error.

The error is measured on a fixed prompt set against the model's own full-precision form: mean
KL(p_float || p_quant) of the next-token distributions at every prompt position, and how often the
two agree on the top-1 token.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import InvalidRequestError
from ..protocols import HasCausalLM, LanguageModel, SupportsStaticDecode, Tokenizer, VideoLanguageModel, VisionTower
from .backends import library_scheme, tensor_bytes
from .linear import QuantLinear

if TYPE_CHECKING:
    from .api import BackboneQuantization

logger = logging.getLogger(__name__)

#: fixed prompt set for the error figures (plain text, no special tokens)
PROMPTS: tuple[str, ...] = (
    "The video shows a person walking a dog in the park. The dog is",
    "Question: What color is the car that drives past the camera? Answer:",
    "In the kitchen, the chef slices the onions, heats the pan and then",
    "A red ball rolls off the table, bounces twice on the floor and",
    "Describe the scene: two children are building a sandcastle on the beach while",
    "The capital of France is Paris. The capital of Germany is",
    "Step 1: open the box. Step 2: take out the manual. Step 3:",
    "def add(a, b):\n    return",
)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # (1, L) ids → (1, L, V) logits


def module_bytes(module: nn.Module) -> int:
    """Bytes of parameters and buffers as held in memory (packed weights counted as packed; ties once)."""
    seen: set[int] = set()
    total = 0
    for m in module.modules():
        if isinstance(m, QuantLinear):
            total += m.weight_bytes()
            continue
        for t in chain(m.parameters(recurse=False), m.buffers(recurse=False)):
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            total += tensor_bytes(t)
    return total


def layer_table(module: nn.Module, prefix: str = "") -> list[dict[str, Any]]:
    """One row per linear layer: name, scheme, engine, shape, bytes."""
    rows = []
    for name, m in module.named_modules():
        full = f"{prefix}{name}"
        if isinstance(m, QuantLinear):
            rows.append({"name": full, "scheme": m.scheme, "engine": f"native:{m.kernel}", "group": m.group,
                         "zero_point": m.zero is not None,
                         "shape": [m.out_features, m.in_features], "bytes": m.weight_bytes()})
            continue
        lib = library_scheme(m)
        if lib is not None or isinstance(m, nn.Linear):
            scheme, engine = lib or ("none", "float")
            w = m.weight
            rows.append({"name": full, "scheme": scheme, "engine": engine, "group": None,
                         "shape": list(w.shape), "bytes": module_bytes(m)})
    return rows


@torch.no_grad()
def reference_logprobs(logits_fn: LogitsFn, tokenizer: Tokenizer, prompts: Sequence[str] = PROMPTS
                       ) -> list[torch.Tensor]:
    """log-softmax of the next-token logits at every position of each prompt (float32, CPU)."""
    out = []
    for text in prompts:
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out.append(torch.log_softmax(logits_fn(ids)[0].float(), dim=-1).cpu())
    return out


def compare_logprobs(ref: Sequence[torch.Tensor], test: Sequence[torch.Tensor]) -> tuple[float, float, int]:
    """(mean KL(ref || test) in nats, top-1 agreement, positions) over all prompt positions."""
    kls, agree, n = [], 0, 0
    for r, t in zip(ref, test, strict=True):
        kls.append((r.exp() * (r - t)).sum(-1))
        agree += int((r.argmax(-1) == t.argmax(-1)).sum())
        n += r.shape[0]
    return float(torch.cat(kls).mean()), agree / max(1, n), n


def backbone_logits_fn(backbone: LanguageModel) -> LogitsFn:
    """All-position logits of a backbone's LLM on text ids: one forward through its text decoder where it
    offers one (`SupportsStaticDecode`), else token by token through `lm_forward` with its cache (any
    `LanguageModel`, e.g. videollm-mini)."""
    if isinstance(backbone, SupportsStaticDecode):
        decoder, head = backbone.text_decoder()

        def full(ids: torch.Tensor) -> torch.Tensor:
            emb = backbone.embed_ids(ids.to(backbone.device))
            out = decoder(inputs_embeds=emb, use_cache=False, return_dict=True)
            return head(out.last_hidden_state)

        return full
    if not isinstance(backbone, LanguageModel):
        raise InvalidRequestError(f"{getattr(backbone, 'name', type(backbone).__name__)} offers no language model "
                                  "to measure")

    def stepwise(ids: torch.Tensor) -> torch.Tensor:
        emb = backbone.embed_ids(ids.to(backbone.device))
        cache, rows = None, []
        for i in range(emb.shape[1]):
            logits, cache = backbone.lm_forward(emb[:, i : i + 1], cache)
            rows.append(logits)
        return torch.stack(rows, dim=1)

    return stepwise


def causal_lm_logits_fn(model: nn.Module) -> LogitsFn:
    dev = next(model.parameters()).device
    return lambda ids: model(input_ids=ids.to(dev), use_cache=False).logits


def probe_frames(n: int = 2, size: int = 64) -> torch.Tensor:
    """Deterministic uint8 frames (n, H, W, 3) with smooth structure, for the vision-encoder error."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    frames = [torch.stack((x * (i + 1) % 1.0, y, (x + y) / 2 * (i + 1) % 1.0), dim=-1) for i in range(n)]
    return (torch.stack(frames) * 255).to(torch.uint8)


@dataclass
class QuantReport:
    model: str
    llm_scheme: str = "none"
    vision_scheme: str = "none"
    head_scheme: str = "none"  # LM head + embeddings
    group_size: int | None = None
    backend: str = "auto"
    llm_bytes_before: int = 0
    llm_bytes_after: int = 0
    vision_bytes_before: int = 0
    vision_bytes_after: int = 0
    mean_kl: float | None = None  # nats, KL(float || quantized) of next-token distributions
    top1_agreement: float | None = None
    # the same with the LM head/embeddings still float: the difference is what quantizing the head costs
    mean_kl_float_head: float | None = None
    top1_float_head: float | None = None
    positions: int = 0
    vision_cosine: float | None = None  # mean cosine similarity of vision features vs float
    layers: list[dict[str, Any]] = field(default_factory=list)
    #: what `quantize_backbone` did (saved in a quantized checkpoint's manifest); not part of the printed report
    quantization: BackboneQuantization | None = field(default=None, repr=False, compare=False)

    def to_dict(self, layers: bool = True) -> dict[str, Any]:
        d = asdict(self)
        d.pop("quantization")
        if not layers:
            d.pop("layers")
        return d

    def summary(self) -> str:
        def mb(b: float) -> str:
            return f"{b / 2**20:.2f} MiB"

        lines = [(f"model: {self.model}  llm={self.llm_scheme} head={self.head_scheme} vision={self.vision_scheme} "
                  f"group={self.group_size} backend={self.backend}"),
                 f"LLM weights:    {mb(self.llm_bytes_before)} → {mb(self.llm_bytes_after)}"]
        if self.vision_bytes_before:
            lines.append(f"vision weights: {mb(self.vision_bytes_before)} → {mb(self.vision_bytes_after)}")
        if self.mean_kl is not None:
            lines.append(f"vs float on {self.positions} prompt positions: mean KL {self.mean_kl:.5f} nats, "
                         f"top-1 agreement {self.top1_agreement:.1%}")
        if self.mean_kl_float_head is not None:
            d_kl = self.mean_kl - self.mean_kl_float_head
            lines.append(f"  of which the LM head ({self.head_scheme}): KL {d_kl:+.5f}"
                         f" nats, top-1 {self.top1_agreement - self.top1_float_head:+.1%} (float head: KL "
                         f"{self.mean_kl_float_head:.5f}, top-1 {self.top1_float_head:.1%})")
        if self.vision_cosine is not None:
            lines.append(f"vision features vs float: mean cosine {self.vision_cosine:.5f}")
        counts: dict[tuple[str, str], int] = {}
        for row in self.layers:
            key = (row["scheme"], row["engine"])
            counts[key] = counts.get(key, 0) + 1
        lines.append("layers: " + ", ".join(f"{n}× {s} ({e})" for (s, e), n in sorted(counts.items())))
        return "\n".join(lines)


def _vision_features(backbone: VisionTower) -> torch.Tensor:
    return backbone.encode_frames(probe_frames()).float().flatten(0, 2)


def quantize_backbone_with_report(backbone: VideoLanguageModel, llm: str = "none", vision: str = "none",
                                  group_size: int | None = 128, backend: str = "auto",
                                  prompts: Sequence[str] | None = PROMPTS,
                                  symmetric: bool | None = None, head: str = "auto") -> QuantReport:
    """Quantize in place and measure against the float model (reference outputs are taken first).

    The LLM error is measured twice when the head is quantized: with the head still float, then with it
    quantized, so the report shows what the head costs on its own.
    """
    from .api import backbone_parts, quantize_backbone, quantize_head, resolve_head

    lm, vt = backbone_parts(backbone)
    # the LM head and embeddings are quantized only where the backbone offers its causal LM (`HasCausalLM`);
    # videollm-mini reads its word vectors directly and keeps them float
    causal = backbone.causal_lm() if isinstance(backbone, HasCausalLM) else None
    head_scheme = resolve_head(head, llm) if causal is not None else "none"

    def llm_modules() -> nn.ModuleList:
        return nn.ModuleList([lm] + ([causal.get_output_embeddings()] if causal is not None else []))

    rep = QuantReport(model=backbone.name, llm_scheme=llm, vision_scheme=vision, group_size=group_size,
                      backend=backend)
    rep.llm_bytes_before = module_bytes(llm_modules())
    rep.vision_bytes_before = module_bytes(vt)
    fn = backbone_logits_fn(backbone)
    measure = bool(prompts) and (llm != "none" or head_scheme != "none")
    ref = reference_logprobs(fn, backbone.tokenizer, prompts) if measure else None
    ref_v = _vision_features(backbone) if vision != "none" else None
    done = quantize_backbone(backbone, llm=llm, vision=vision, group_size=group_size, backend=backend,
                             symmetric=symmetric, head="none")
    if head_scheme != "none":
        if ref is not None:
            rep.mean_kl_float_head, rep.top1_float_head, _ = compare_logprobs(
                ref, reference_logprobs(fn, backbone.tokenizer, prompts))
        if causal is not None and quantize_head(causal, head_scheme, group_size, backend, symmetric):
            rep.head_scheme = done.head = head_scheme
        else:
            rep.mean_kl_float_head = rep.top1_float_head = None
    rep.llm_bytes_after = module_bytes(llm_modules())
    rep.vision_bytes_after = module_bytes(vt)
    if ref is not None:
        rep.mean_kl, rep.top1_agreement, rep.positions = compare_logprobs(
            ref, reference_logprobs(fn, backbone.tokenizer, prompts)
        )
    if ref_v is not None:
        rep.vision_cosine = float(torch.nn.functional.cosine_similarity(ref_v, _vision_features(backbone), -1).mean())
    head_rows = layer_table(causal.get_output_embeddings(), "lm_head") if causal is not None else []
    rep.layers = layer_table(lm, "language_model.") + head_rows + layer_table(vt, "vision_tower.")
    rep.quantization = done
    return rep


def quantize_causal_lm_with_report(model: nn.Module, tokenizer: Tokenizer, scheme: str, group_size: int | None = 128,
                                   backend: str = "auto", prompts: Sequence[str] = PROMPTS,
                                   name: str = "causal-lm", symmetric: bool | None = None,
                                   head: str = "auto") -> QuantReport:
    """The same for a plain causal LM (e.g. a GGUF checkpoint): every linear layer, then head + embeddings."""
    from .api import quantize_, quantize_head, resolve_head
    from .config import config_for

    rep = QuantReport(model=name, llm_scheme=scheme, group_size=group_size, backend=backend)
    rep.llm_bytes_before = module_bytes(model)
    fn = causal_lm_logits_fn(model)
    ref = reference_logprobs(fn, tokenizer, prompts)
    cfg = config_for(scheme, group_size, backend, symmetric)
    if cfg is not None:
        quantize_(model, cfg, filter_fn=lambda m, n: not n.endswith("lm_head"))
    head_scheme = resolve_head(head, scheme)
    if head_scheme != "none":
        rep.mean_kl_float_head, rep.top1_float_head, _ = compare_logprobs(ref,
                                                                          reference_logprobs(fn, tokenizer, prompts))
        if quantize_head(model, head_scheme, group_size, backend, symmetric):
            rep.head_scheme = head_scheme
        else:
            rep.mean_kl_float_head = rep.top1_float_head = None
    rep.llm_bytes_after = module_bytes(model)
    rep.mean_kl, rep.top1_agreement, rep.positions = compare_logprobs(ref, reference_logprobs(fn, tokenizer, prompts))
    rep.layers = layer_table(model)
    return rep
