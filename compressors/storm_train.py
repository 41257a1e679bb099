"""Training STORM's encoder: vision tower and LLM frozen, next-token loss on the answer tokens, through accelerate.

`videollm train storm --model ID --data JSON --videos DIR --output DIR` reads the LLaVA-Video /
LLaVA-OneVision layout (a list of `{"video": path, "conversations": [{"from": "human", "value": ...},
{"from": "gpt", "value": ...}]}`; the first human/gpt pair of each record is used), runs each video through
the frozen tower (and, for `post_projector`, the frozen projector), then the STORM encoder with the same
pooling and sampling as at inference (fixed by `--temporal-pool` / `--sample-stride` / `--spatial-pool` or
chosen from `--budget`), and trains the encoder on the cross-entropy of the answer tokens. With
`pre_projector` the new Linear that replaces the projector trains with it (the paper's stage 1).

One command runs on one process, several GPUs or several nodes (`accelerate launch -m videollm train storm
...`). Checkpoints (`accelerate.save_state`) land in OUTPUT/checkpoints/step-N and `--resume` continues from
the newest; the result is OUTPUT/config.json + model.safetensors, loaded with
`--compressor storm --compressor-option weights=OUTPUT`.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from videollm.errors import InvalidRequestError
from videollm.protocols import (
    SupportsSequenceLogits,
    TrainableVideoLanguageModel,
    VideoLanguageModel,
    require,
)
from videollm.video import Video

from .storm import StormCompressor, StormConfig, apply_plan

logger = logging.getLogger(__name__)

PLACEHOLDERS = ("<video>", "<image>")


@dataclass
class TrainExample:
    """A conversation about one video: the first question and answer, then any further turns (`followups`).
    `video` is loaded lazily (a path) or given (frames in memory)."""

    video: Video | Callable[[], Video]
    question: str
    answer: str
    followups: tuple[tuple[str, str], ...] = ()

    def load(self) -> Video:
        return self.video if isinstance(self.video, Video) else self.video()

    @property
    def turns(self) -> list[tuple[str, str]]:
        return [(self.question, self.answer), *self.followups]


@dataclass
class StormTrainConfig:
    output: str
    steps: int | None = None  # None: `epochs` passes over the data
    epochs: int = 1
    batch_size: int = 1  # conversations per optimizer step per process, run as one padded batch
    lr: float = 1e-3
    projector_lr: float | None = None  # None: lr (only with storm.train_projector)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    eos_loss: bool = True  # include each turn's end token in the loss (off: the answer's own tokens only)
    train_encoder: bool = True  # False with storm.train_projector: the pooling-only baseline with a trained projector
    budget: int | None = None  # pooling chosen as at inference when temporal_pool etc. are unset
    save_every: int = 500
    seed: int = 0
    resume: bool = False
    mixed_precision: str = "no"  # accelerate's: no | fp16 | bf16
    cache_features: bool = False  # keep each video's frozen tower output in memory (small sets, many epochs)
    storm: StormConfig = field(default_factory=lambda: StormConfig(temporal_pool=4))


# -- data --------------------------------------------------------------------------------------------

def _clean(question: str) -> str:
    for ph in PLACEHOLDERS:
        question = question.replace(ph + "\n", "").replace(ph, "")
    return question.strip()


def conversation_turns(turns: list[Any]) -> list[tuple[str, str]]:
    """(question, answer) for every human turn followed by a non-empty gpt turn, in order."""
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for t in turns:
        if not isinstance(t, dict):
            continue
        if t.get("from") == "human":
            pending = str(t.get("value", ""))
        elif t.get("from") == "gpt" and pending is not None and str(t.get("value", "")).strip():
            pairs.append((_clean(pending), str(t["value"]).strip()))
            pending = None
    return pairs


def read_llava_json(data: str | Path, videos: str | Path, num_frames: int = 32) -> list[TrainExample]:
    """The LLaVA-Video layout, checked up front (before any model loads): every video must exist."""
    from videollm.video import SamplingConfig, load_video

    data, videos = Path(data), Path(videos)
    if not data.is_file():
        raise InvalidRequestError(f"training data not found: {data}")
    if not videos.is_dir():
        raise InvalidRequestError(f"videos folder not found: {videos}")
    try:
        records = json.loads(data.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidRequestError(f"{data} is not a JSON file: {err}") from err
    if not isinstance(records, list) or not records:
        raise InvalidRequestError(f"{data} must hold a non-empty list of {{'video', 'conversations'}} records")
    sampling = SamplingConfig(num_frames=num_frames)
    out: list[TrainExample] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "video" not in rec or not isinstance(rec.get("conversations"), list):
            raise InvalidRequestError(f"{data} record {i} lacks 'video' or 'conversations'")
        pairs = conversation_turns(rec["conversations"])
        if not pairs:
            raise InvalidRequestError(f"{data} record {i} needs a 'human' turn followed by a non-empty 'gpt' turn")
        path = videos / rec["video"]
        if not path.is_file():
            raise InvalidRequestError(f"{data} record {i}: video not found: {path}")
        (q, a), more = pairs[0], tuple(pairs[1:])
        out.append(TrainExample(lambda p=path: load_video(p, sampling), q, a, more))
    return out


# -- token layout of a conversation -------------------------------------------------------------------

_ANSWER_MARK, _QUESTION_MARK = "\ue000videollm:answer\ue001", "\ue000videollm:question\ue001"


@dataclass
class ConversationIds:
    """A conversation's tokens around the video: `before` + video + `after` is the first prompt (it ends with
    the assistant prefix); `rest` are the following segments, each (ids, is_target)."""

    before: list[int]
    after: list[int]
    rest: list[tuple[list[int], bool]]

    @property
    def num_targets(self) -> int:
        return sum(len(ids) for ids, target in self.rest if target)


def _render(backbone: VideoLanguageModel, messages: list[dict[str, Any]], generation: bool) -> str:
    return backbone.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                                  chat_template=backbone.chat_template)


def _msg(role: str, text: str, video: bool = False) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "video"}] if video else []
    return {"role": role, "content": parts + [{"type": "text", "text": text}]}


def conversation_ids(backbone: VideoLanguageModel, turns: Sequence[tuple[str, str]], eos_loss: bool = True
                     ) -> ConversationIds:
    """Tokenize a multi-turn conversation with the backbone's chat template, marking every answer's tokens
    (and its end-of-turn token when `eos_loss`) as targets; prompts, template text and the video are not.
    Template text is tokenized with special tokens, user text with them split into plain text."""
    if not turns:
        raise InvalidRequestError("a training conversation needs at least one question and answer")
    prompt = backbone.prompt_ids(turns[0][0])
    first = [_msg("user", "Q", video=True)]
    with_answer = _render(backbone, first + [_msg("assistant", _ANSWER_MARK)], False)
    tail = backbone.text_ids(with_answer.split(_ANSWER_MARK, 1)[1])  # what the template puts after an answer
    eos = backbone.eos_token_ids
    if tail and tail[0] in eos:
        end, between = tail[:1], tail[1:]
    else:  # a template without an end-of-turn token: the model's EOS closes the answer
        end, between = [backbone.tokenizer.eos_token_id], tail
    rest: list[tuple[list[int], bool]] = []
    for i, (question, answer) in enumerate(turns):
        if i:
            nxt = _render(backbone, first + [_msg("assistant", "A"), _msg("user", _QUESTION_MARK)], True)
            base = _render(backbone, first + [_msg("assistant", "A")], False)
            pre, post = nxt[len(base):].split(_QUESTION_MARK, 1)
            rest.append((backbone.text_ids(pre) + backbone.text_ids(question, user=True) + backbone.text_ids(post),
                         False))
        rest.append((backbone.text_ids(answer), True))
        rest.append((list(end), eos_loss))
        if i < len(turns) - 1 and between:
            rest.append((list(between), False))
    return ConversationIds(list(prompt.before), list(prompt.after), rest)


def conversation_inputs(backbone: VideoLanguageModel, ids: ConversationIds, visual: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds (L, D), labels (L,)): the video's tokens spliced in as at inference; labels are the token ids
    of target positions and -100 elsewhere."""
    dev, dt = backbone.device, backbone.dtype
    parts = [backbone.embed_ids(ids.before), visual.to(dev, dt)]
    suffix = backbone.visual_suffix()
    if suffix is not None:
        parts.append(suffix.to(dev, dt))
    parts.append(backbone.embed_ids(ids.after))
    n_prompt = sum(p.shape[0] for p in parts)
    labels = [-100] * n_prompt
    for seg, target in ids.rest:
        parts.append(backbone.embed_ids(seg))
        labels += seg if target else [-100] * len(seg)
    embeds = torch.cat(parts)
    if embeds.shape[0] > backbone.max_context:
        raise InvalidRequestError(f"a training sequence of {embeds.shape[0]} tokens exceeds the model's context of "
                                  f"{backbone.max_context}; lower --frames or pool more")
    return embeds, torch.tensor(labels, device=embeds.device)


def conversation_loss(backbone: TrainableVideoLanguageModel, visuals: Sequence[torch.Tensor],
                      ids: Sequence[ConversationIds]) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy over the target tokens of a batch of conversations, as one right-padded
    forward (causal attention: padding after a sequence cannot change its logits). (mean loss, targets)."""
    seqs = [conversation_inputs(backbone, i, v) for v, i in zip(visuals, ids)]
    longest = max(e.shape[0] for e, _ in seqs)
    embeds = torch.stack([F.pad(e, (0, 0, 0, longest - e.shape[0])) for e, _ in seqs])
    labels = torch.stack([F.pad(lab, (0, longest - lab.shape[0]), value=-100) for _, lab in seqs])
    logits = backbone.sequence_logits(embeds)
    n = int((labels[:, 1:] != -100).sum())
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    return loss, n


def answer_loss(backbone: TrainableVideoLanguageModel, visual: torch.Tensor, question: str, answer: str,
                eos_loss: bool = True) -> torch.Tensor:
    """Cross-entropy of one answer's tokens (and its end-of-turn token) given the prompt with `visual` (N, D)."""
    return conversation_loss(backbone, [visual], [conversation_ids(backbone, [(question, answer)], eos_loss)])[0]


# -- the trainable part ---------------------------------------------------------------------------------

class StormTrainable(torch.nn.Module):
    """The modules that train ([own projector →] encoder), as one module for accelerate to wrap (DDP)."""

    def __init__(self, compressor: StormCompressor):
        super().__init__()
        self.encoder = compressor.encoder
        self.projector = compressor.projector
        object.__setattr__(self, "compressor", compressor)  # not a submodule: the backbone stays outside

    def forward(self, frozen: torch.Tensor) -> torch.Tensor:
        return self.compressor.encode(frozen)


def encode_batch(compressor: StormCompressor, module: Callable[[torch.Tensor], torch.Tensor],
                 frozen: Sequence[torch.Tensor], budget: int | None) -> list[torch.Tensor]:
    """Frozen inputs → trainable part → the inference pooling/sampling, one (tokens, D) per video; videos of
    one shape go through the encoder as one batch."""
    same = len({tuple(f.shape) for f in frozen}) == 1
    encoded = list(module(torch.stack(list(frozen)))) if same and len(frozen) > 1 else [module(f) for f in frozen]
    return [apply_plan(e, compressor.plan(f.shape[0], budget)).flatten(0, 2) for e, f in zip(encoded, frozen)]


def encode_pooled(compressor: StormCompressor, module: Callable[[torch.Tensor], torch.Tensor], video: Video,
                  budget: int | None, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """One video: frozen tower (and projector) → trainable part → pooling/sampling: (tokens, D).
    `tokens`: the frozen part's output when already computed."""
    if tokens is None:
        with torch.no_grad():
            tokens = compressor.frozen_inputs(video)
    return encode_batch(compressor, module, [tokens], budget)[0]


# -- the loop -------------------------------------------------------------------------------------------

def freeze_backbone(backbone: TrainableVideoLanguageModel) -> None:
    """No gradients for any of the backbone's own modules: only the compressor's trainable part learns."""
    for module in backbone.torch_modules():
        module.requires_grad_(False)


def train_storm(backbone: TrainableVideoLanguageModel, examples: Sequence[TrainExample], cfg: StormTrainConfig,
                compressor: StormCompressor | None = None) -> StormCompressor:
    """Train (or continue training) a STORM encoder (and optionally its own projector) on `examples`;
    saves to cfg.output and returns it."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    if not examples:
        raise InvalidRequestError("no training examples")
    if not cfg.train_encoder and not cfg.storm.train_projector:
        raise InvalidRequestError("nothing to train: train_encoder is off and train_projector is not set")
    require(backbone, SupportsSequenceLogits, "STORM training")  # all-position logits with autograd
    out = Path(cfg.output)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)
    freeze_backbone(backbone)
    if compressor is None:
        compressor = StormCompressor(backbone, cfg.storm, untrained_ok=True)
    compressor.encoder.requires_grad_(cfg.train_encoder)
    trainable = StormTrainable(compressor).train()
    groups = []
    if cfg.train_encoder:
        groups.append({"params": list(compressor.encoder.parameters()), "lr": cfg.lr})
    if compressor.projector is not None:
        groups.append({"params": list(compressor.projector.parameters()), "lr": cfg.projector_lr or cfg.lr})
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(examples) / (cfg.batch_size * accelerator.num_processes))
    total = cfg.steps or per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * s / total)))
    module, optimizer, schedule = accelerator.prepare(trainable, optimizer, schedule)
    ckpt_root = out / "checkpoints"
    step = 0
    if cfg.resume:
        done = sorted((int(p.name.split("-")[1]), p) for p in ckpt_root.glob("step-*") if p.is_dir())
        if done:
            step, path = done[-1]
            accelerator.load_state(str(path))
            logger.info("resumed from %s", path)
    rank, world = accelerator.process_index, accelerator.num_processes
    bar = tqdm(total=total, initial=step, desc="train storm", unit="step",
               disable=not accelerator.is_local_main_process)
    t0, seen, targets = time.perf_counter(), 0, 0
    features: dict[int, torch.Tensor] = {}
    token_ids: dict[int, ConversationIds] = {}
    while step < total:
        order = list(range(len(examples)))
        random.Random(cfg.seed + step // per_epoch).shuffle(order)  # same order on every rank; each takes a slice
        start = (step % per_epoch) * cfg.batch_size * world
        batch = order[start + rank * cfg.batch_size:start + (rank + 1) * cfg.batch_size] or order[:cfg.batch_size]
        frozen = []
        for i in batch:
            if i in features:
                frozen.append(features[i])
                continue
            with torch.no_grad():
                f = compressor.frozen_inputs(examples[i].load())
            if cfg.cache_features:
                features[i] = f
            frozen.append(f)
        for i in batch:  # token layouts are small: always cached
            if i not in token_ids:
                token_ids[i] = conversation_ids(backbone, examples[i].turns, cfg.eos_loss)
        visuals = encode_batch(compressor, module, frozen, cfg.budget)
        loss, n_targets = conversation_loss(backbone, visuals, [token_ids[i] for i in batch])
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        step += 1
        seen += len(batch) * world
        targets += n_targets * world
        bar.update(1)
        secs = time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{seen / secs:.2f}", answer_tok_s=f"{targets / secs:.1f}")
        if cfg.save_every and step % cfg.save_every == 0 and step < total:
            accelerator.save_state(str(ckpt_root / f"step-{step}"))
    bar.close()
    accelerator.wait_for_everyone()
    trainable.eval()
    compressor.trained = True
    if accelerator.is_main_process:
        accelerator.save_state(str(ckpt_root / f"step-{step}"))
        compressor.save_pretrained(out)
    return compressor


# -- CLI -------------------------------------------------------------------------------------------------

def register(sub: Any) -> None:
    """`videollm train storm ...` (called with the `train` command's subparsers)."""
    p = sub.add_parser("storm", help="train a STORM temporal encoder (tower and LLM frozen)")
    p.add_argument("--model", required=True, help="backbone preset, hub id or local path")
    p.add_argument("--data", required=True, help="LLaVA-Video JSON: [{video, conversations}]")
    p.add_argument("--videos", required=True, help="folder the records' video paths are relative to")
    p.add_argument("--output", required=True, help="where config.json + model.safetensors (and checkpoints) go")
    p.add_argument("--frames", type=int, default=32, help="frames sampled uniformly per video (paper: 32, then 128)")
    p.add_argument("--placement", choices=["post_projector", "pre_projector"], default="post_projector")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--causal", action="store_true", help="forward-only (streaming) encoder")
    p.add_argument("--train-projector", action="store_true",
                   help="post_projector: also train a copy of the backbone's projector (saved with the encoder)")
    p.add_argument("--projector-lr", type=float, default=None, help="learning rate of the projector (default --lr)")
    p.add_argument("--no-eos-loss", action="store_true", help="leave each answer's end-of-turn token out of the loss")
    p.add_argument("--cache-features", action="store_true",
                   help="keep every video's frozen tower output in memory (small data sets, many epochs)")
    p.add_argument("--temporal-pool", type=int, default=4, help="k used in training and kept for inference (paper: 4)")
    p.add_argument("--sample-stride", type=int, default=None)
    p.add_argument("--spatial-pool", default=None, help="tokens per frame or RxC")
    p.add_argument("--budget", type=int, default=None, help="choose the unset pooling options as inference would")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest OUTPUT/checkpoints/step-N")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_train_storm)


def cmd_train_storm(args: argparse.Namespace) -> int:
    from videollm.backbones import load_backbone

    spatial: int | str | None = args.spatial_pool
    if isinstance(spatial, str) and spatial.isdigit():
        spatial = int(spatial)
    if args.train_projector and args.placement == "pre_projector":
        raise InvalidRequestError("--train-projector applies to --placement post_projector (pre_projector always "
                                  "trains its own Linear)")
    storm = StormConfig(num_layers=args.layers, causal=args.causal, placement=args.placement,
                        temporal_pool=args.temporal_pool, sample_stride=args.sample_stride, spatial_pool=spatial,
                        train_projector=args.train_projector)
    storm.validate()
    for name in ("frames", "layers", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise InvalidRequestError(f"--{name.replace('_', '-')} must be >= 1")
    from videollm.backbones import check_model_name, require_capability

    check_model_name(args.model)
    require_capability(args.model, "training")
    examples = read_llava_json(args.data, args.videos, args.frames)  # user errors before the model loads
    cfg = StormTrainConfig(output=args.output, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, projector_lr=args.projector_lr, eos_loss=not args.no_eos_loss,
                           cache_features=args.cache_features, warmup_steps=args.warmup_steps, budget=args.budget,
                           save_every=args.save_every,
                           seed=args.seed, resume=args.resume, mixed_precision=args.mixed_precision, storm=storm)
    device = args.device
    if device == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # `accelerate launch`: one GPU per process
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    backbone = load_backbone(args.model, device=device, dtype="float32")
    comp = train_storm(backbone, examples, cfg)
    print(f"saved STORM weights to {args.output} ({comp.config.placement}, {comp.config.num_layers} layer(s), "
          f"k={comp.config.temporal_pool}); use: --compressor storm --compressor-option weights={args.output}")
    return 0


__all__ = ["ConversationIds", "StormTrainConfig", "StormTrainable", "TrainExample", "answer_loss", "choice_accuracy",
           "conversation_ids", "conversation_loss", "encode_batch", "encode_pooled", "read_llava_json", "register",
           "train_storm"]


@torch.no_grad()
def choice_accuracy(backbone: VideoLanguageModel, compressor: StormCompressor, examples: Sequence[TrainExample],
                    letters: Sequence[str] = ("A", "B"), budget: int | None = None) -> float:
    """Share of examples whose answer letter has the highest next-token logit after the prompt (MC scoring)."""
    tok = backbone.tokenizer
    ids = [tok(letter, add_special_tokens=False)["input_ids"][0] for letter in letters]
    right = 0
    for ex in examples:
        visual = compressor(ex.load(), query=ex.question, budget=budget)
        logits, _ = backbone.lm_forward(backbone.build_inputs(ex.question, visual).embeds)
        right += letters[int(torch.argmax(logits[0, ids]))] == ex.answer
    return right / len(examples)
