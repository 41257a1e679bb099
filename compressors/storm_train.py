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
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from videollm.errors import InvalidRequestError
from videollm.types import VisualTokens
from videollm.video import Video

from .storm import StormCompressor, StormConfig, spatial_average, temporal_average

logger = logging.getLogger(__name__)

PLACEHOLDERS = ("<video>", "<image>")


@dataclass
class TrainExample:
    """One question about one video; `video` is loaded lazily (a path) or given (frames in memory)."""

    video: Video | Callable[[], Video]
    question: str
    answer: str

    def load(self) -> Video:
        return self.video if isinstance(self.video, Video) else self.video()


@dataclass
class StormTrainConfig:
    output: str
    steps: int | None = None  # None: `epochs` passes over the data
    epochs: int = 1
    batch_size: int = 1  # examples per optimizer step per process (their losses averaged)
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    budget: int | None = None  # pooling chosen as at inference when temporal_pool etc. are unset
    save_every: int = 500
    seed: int = 0
    resume: bool = False
    mixed_precision: str = "no"  # accelerate's: no | fp16 | bf16
    cache_features: bool = False  # keep each video's frozen tower output in memory (small sets, many epochs)
    storm: StormConfig = field(default_factory=lambda: StormConfig(temporal_pool=4))


# -- data --------------------------------------------------------------------------------------------

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
        turns = rec["conversations"]
        human = next((t for t in turns if isinstance(t, dict) and t.get("from") == "human"), None)
        gpt = next((t for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
        if human is None or gpt is None or not str(gpt.get("value", "")).strip():
            raise InvalidRequestError(f"{data} record {i} needs a 'human' and a non-empty 'gpt' turn")
        path = videos / rec["video"]
        if not path.is_file():
            raise InvalidRequestError(f"{data} record {i}: video not found: {path}")
        question = str(human.get("value", ""))
        for ph in PLACEHOLDERS:
            question = question.replace(ph + "\n", "").replace(ph, "")
        out.append(TrainExample(lambda p=path: load_video(p, sampling), question.strip(), str(gpt["value"]).strip()))
    return out


# -- one example's loss --------------------------------------------------------------------------------

def answer_loss(backbone: Any, visual: torch.Tensor, question: str, answer: str) -> torch.Tensor:
    """Cross-entropy of the answer tokens (and the end-of-turn token) given the prompt with `visual` (N, D)."""
    vt = VisualTokens(visual, torch.zeros(visual.shape[0], dtype=torch.long), torch.full((visual.shape[0],), -1),
                      torch.zeros(1), 1)
    prompt = backbone.build_inputs(question, vt)
    tok = backbone.tokenizer
    ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    target = torch.tensor(ids, device=prompt.embeds.device)
    embeds = torch.cat([prompt.embeds, backbone.embed_ids(target[:-1]).to(prompt.embeds.dtype)[None]], dim=1)
    logits = backbone.sequence_logits(embeds)[0]
    n_prompt = prompt.embeds.shape[1]
    return F.cross_entropy(logits[n_prompt - 1:], target)


def encode_pooled(compressor: StormCompressor, encoder: torch.nn.Module, video: Video, budget: int | None,
                  tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Frozen tower (and projector) → trainable encoder → the inference pooling/sampling: (tokens, D).
    `tokens`: the frozen part's output when already computed."""
    plan = compressor.plan(len(video), budget)
    if tokens is None:
        with torch.no_grad():
            tokens = compressor.encoder_inputs(video)
    param = next(compressor.encoder.parameters())
    x = encoder(tokens.to(param.device, param.dtype))
    x = temporal_average(x, plan.temporal_pool)
    x = spatial_average(x, plan.grid)[::plan.sample_stride]
    return x.flatten(0, 2)


# -- the loop -------------------------------------------------------------------------------------------

def freeze_backbone(backbone: Any) -> None:
    for module in backbone_modules(backbone):
        module.requires_grad_(False)


def backbone_modules(backbone: Any) -> list[torch.nn.Module]:
    return [m for m in (getattr(backbone, "model", None), getattr(backbone, "llm", None),
                        getattr(backbone, "encoder", None)) if isinstance(m, torch.nn.Module)]


def train_storm(backbone: Any, examples: Sequence[TrainExample], cfg: StormTrainConfig,
                compressor: StormCompressor | None = None) -> StormCompressor:
    """Train (or continue training) a STORM encoder on `examples`; saves to cfg.output and returns it."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    if not examples:
        raise InvalidRequestError("no training examples")
    out = Path(cfg.output)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)
    freeze_backbone(backbone)
    if compressor is None:
        compressor = StormCompressor(backbone, cfg.storm, untrained_ok=True)
    compressor.encoder.train()
    params = [p for p in compressor.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(examples) / (cfg.batch_size * accelerator.num_processes))
    total = cfg.steps or per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * s / total)))
    encoder, optimizer, schedule = accelerator.prepare(compressor.encoder, optimizer, schedule)
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
    t0, seen = time.perf_counter(), 0
    cache: dict[int, tuple[Video, torch.Tensor]] = {}
    while step < total:
        order = list(range(len(examples)))
        random.Random(cfg.seed + step // per_epoch).shuffle(order)  # same order on every rank; each takes a slice
        start = (step % per_epoch) * cfg.batch_size * world
        batch = order[start + rank * cfg.batch_size:start + (rank + 1) * cfg.batch_size] or order[:cfg.batch_size]
        losses = []
        for i in batch:
            ex = examples[i]
            if i in cache:
                video, frozen = cache[i]
            else:
                video = ex.load()
                with torch.no_grad():
                    frozen = compressor.encoder_inputs(video)
                if cfg.cache_features:
                    cache[i] = (video, frozen)
            visual = encode_pooled(compressor, encoder, video, cfg.budget, frozen)
            losses.append(answer_loss(backbone, visual, ex.question, ex.answer))
        loss = torch.stack(losses).mean()
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        step += 1
        seen += len(batch) * world
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{seen / (time.perf_counter() - t0):.2f}")
        if cfg.save_every and step % cfg.save_every == 0 and step < total:
            accelerator.save_state(str(ckpt_root / f"step-{step}"))
    bar.close()
    accelerator.wait_for_everyone()
    compressor.encoder.eval()
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
    storm = StormConfig(num_layers=args.layers, causal=args.causal, placement=args.placement,
                        temporal_pool=args.temporal_pool, sample_stride=args.sample_stride, spatial_pool=spatial)
    storm.validate()
    for name in ("frames", "layers", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise InvalidRequestError(f"--{name.replace('_', '-')} must be >= 1")
    examples = read_llava_json(args.data, args.videos, args.frames)  # user errors before the model loads
    cfg = StormTrainConfig(output=args.output, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, warmup_steps=args.warmup_steps, budget=args.budget, save_every=args.save_every,
                           seed=args.seed, resume=args.resume, mixed_precision=args.mixed_precision, storm=storm)
    backbone = load_backbone(args.model, device=args.device, dtype="float32")
    comp = train_storm(backbone, examples, cfg)
    print(f"saved STORM weights to {args.output} ({comp.config.placement}, {comp.config.num_layers} layer(s), "
          f"k={comp.config.temporal_pool}); use: --compressor storm --compressor-option weights={args.output}")
    return 0


__all__ = ["StormTrainConfig", "TrainExample", "answer_loss", "choice_accuracy", "encode_pooled", "read_llava_json", "register",
           "train_storm"]


@torch.no_grad()
def choice_accuracy(backbone: Any, compressor: StormCompressor, examples: Sequence[TrainExample],
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
