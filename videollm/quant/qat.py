"""Quantization-aware fine-tuning with data-free self-distillation (LLM-QAT; ParetoQ's quantizers).

LLM-QAT (Liu et al., 2023) needs no dataset: the full-precision model writes its own training text —
each sequence starts from a random vocabulary token, continues greedily for 3–5 tokens, then samples —
and the student (same model with fake-quantized weights and learnable ParetoQ alphas) learns to match
the teacher's next-token distributions: KL(teacher || student) over all positions, no temperature, no
CE term. Training runs through accelerate, so the same loop uses one CPU, one GPU or many
(`accelerate launch`). `convert_qat` then packs the learned weights and alphas into `QuantLinear`s.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import require
from ..protocols import HasCausalLM, SupportsQuantization, VideoLanguageModel
from ..protocols import require as require_capability
from .api import _linear_names, _set_child
from .config import WeightQuantConfig
from .linear import QuantLinear
from .paretoq import fake_quant, init_alpha

logger = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


class QATLinear(nn.Module):
    """Float weight + learnable alpha; forward uses the ParetoQ fake-quantized weight (STE)."""

    def __init__(self, linear: nn.Linear, scheme: str, group_size: int | None):
        super().__init__()
        self.scheme = scheme
        self.group_size = None if scheme == "int8" else group_size
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False) if linear.bias is not None else None
        self.alpha = nn.Parameter(init_alpha(self.weight, scheme, self.group_size).to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quant(self.weight, self.alpha, self.scheme, self.group_size)
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def prepare_qat(module: nn.Module, config: WeightQuantConfig,
                filter_fn: Callable[[nn.Module, str], bool] | None = None) -> list[str]:
    """Swap linear layers for `QATLinear` in place; returns their names.

    int4 QAT learns ParetoQ's symmetric LSQ alpha whatever `config.symmetric` says (no learned zero points).
    """
    names = _linear_names(module, filter_fn)
    for name in names:
        _set_child(module, name, QATLinear(module.get_submodule(name), config.scheme, config.group_size))
    return names


def convert_qat(module: nn.Module) -> list[str]:
    """Replace every `QATLinear` by a packed `QuantLinear` holding its learned weight and alpha."""
    names = [n for n, m in module.named_modules() if isinstance(m, QATLinear)]
    for name in names:
        m = module.get_submodule(name)
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.weight.device)
        with torch.no_grad():
            lin.weight.copy_(m.weight)
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        _set_child(module, name, QuantLinear.from_linear(lin, m.scheme, m.group_size, alpha=m.alpha.detach().float()))
    return names


@torch.no_grad()
def generate_distillation_data(teacher: LogitsFn, vocab_size: int, num_sequences: int, length: int,
                               greedy_prefix: tuple[int, int] = (3, 5), top_k: int = 50, seed: int = 0,
                               exclude_ids: set[int] | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """LLM-QAT's data-free corpus: random first token, greedy to 3–5 tokens, then top-k sampling.

    `teacher(ids)` returns logits (B, L, V). Sequences are generated as one batch without a KV cache:
    meant for short distillation sequences (LLM-QAT uses up to 2048 tokens on many GPUs).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in (exclude_ids or set())])
    first = allowed[torch.randint(len(allowed), (num_sequences,), generator=g)]
    prefix = torch.randint(greedy_prefix[0], greedy_prefix[1] + 1, (num_sequences,), generator=g)
    ids = first[:, None].to(device)
    for step in range(1, length):
        logits = teacher(ids)[:, -1].float().cpu()
        greedy = logits.argmax(-1)
        k = min(top_k, logits.shape[-1])
        vals, idx = logits.topk(k, dim=-1)
        pick = torch.multinomial(torch.softmax(vals, -1), 1, generator=g).squeeze(-1)
        sampled = idx.gather(-1, pick[:, None]).squeeze(-1)
        nxt = torch.where(step < prefix, greedy, sampled)
        ids = torch.cat((ids, nxt[:, None].to(ids.device)), dim=1)
    return ids.cpu()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """LLM-QAT's KD loss: KL(teacher || student) per token, averaged over tokens (no temperature)."""
    v = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, v).float(), dim=-1)
    t = F.softmax(teacher_logits.reshape(-1, v).float(), dim=-1)
    return F.kl_div(s, t, reduction="batchmean")


@dataclass
class QATConfig:
    steps: int = 100
    lr: float = 2e-5  # ParetoQ's AdamW learning rate (weights and alphas together, no weight decay)
    batch_size: int = 4
    num_sequences: int = 64
    seq_len: int = 64
    seed: int = 0


class TextLM(nn.Module):
    """ids → logits over a backbone's language model + head, as one module accelerate can prepare."""

    def __init__(self, embed: nn.Module, language_model: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.embed, self.language_model, self.lm_head = embed, language_model, lm_head

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.language_model(inputs_embeds=self.embed(input_ids), use_cache=False, return_dict=True)
        return self.lm_head(out.last_hidden_state)


def train_qat(student: nn.Module, teacher: nn.Module, data: torch.Tensor, config: QATConfig,
              accelerator: Any = None) -> list[float]:
    """Distil `teacher` into the fake-quantized `student` on `data` (B, L ids); returns per-step losses.

    Both modules map ids → logits. Only `student`'s trainable parameters (weights, alphas) are updated.
    """
    accelerate = require("accelerate", "eval", "quantization-aware training")
    acc = accelerator or accelerate.Accelerator(cpu=not torch.cuda.is_available())
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=config.batch_size,
                                         shuffle=True, generator=torch.Generator().manual_seed(config.seed))
    student, opt, loader = acc.prepare(student, opt, loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.steps))
    teacher = teacher.to(acc.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    losses: list[float] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, desc="QAT", disable=config.steps < 20)
    while len(losses) < config.steps:
        for (ids,) in loader:
            with torch.no_grad():
                t_logits = teacher(ids)
            loss = distillation_loss(student(ids), t_logits)
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
            bar.update(1)
            if len(losses) >= config.steps:
                break
    bar.close()
    student.eval()
    return losses


def qat_backbone(backbone: VideoLanguageModel, scheme: str, group_size: int | None = 128,
                 config: QATConfig | None = None, accelerator: Any = None) -> list[float]:
    """Data-free QAT of a backbone's LLM, leaving packed `QuantLinear`s in place. Returns the losses."""
    from .api import backbone_parts

    config = config or QATConfig()
    lm, _ = backbone_parts(require_capability(backbone, SupportsQuantization, "QAT"))
    model = require_capability(backbone, HasCausalLM, "QAT").causal_lm()
    head = model.get_output_embeddings()
    teacher = TextLM(model.get_input_embeddings(), copy.deepcopy(lm), head)
    student = TextLM(model.get_input_embeddings(), lm, head)
    for p in student.parameters():
        p.requires_grad_(False)
    prepare_qat(lm, WeightQuantConfig(scheme=scheme, group_size=group_size))
    special = set(backbone.tokenizer.all_special_ids)
    data = generate_distillation_data(teacher, head.out_features, config.num_sequences, config.seq_len,
                                      seed=config.seed, exclude_ids=special, device=backbone.device)
    losses = train_qat(student, teacher, data, config, accelerator)
    convert_qat(lm)
    return losses
