"""STORM at toy scale: does the temporal encoder keep what temporal pooling alone loses?

Task (`videollm.synthetic.flash_order_set`): 4 noisy grey frames with a red and a green full-frame flash at two
random frames, in either order; "Which colour flashed first? A. red B. green". With k = 4 the whole clip is
averaged into one pooled frame, which is identical for both orders up to noise: pooling without the encoder,
or any per-frame map before it (a trained projector included), is at chance by construction. STORM (1
bidirectional layer, post-projector) is trained with `train_storm` on `tiny-random` (vision tower and LLM
frozen, random weights; loss on the answer letter only, `eos_loss=False`) and scored on held-out clips by
the A-vs-B next-token logit. With `--train-projector` both arms train a copy of the projector for the same
steps: the baseline trains the projector alone (encoder off), STORM trains projector + encoder.

    taskset -c 0 python bench/storm_toy.py --seeds 0 1 2 --steps 300 --batch-size 16 --lr 1e-2
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch
from common import command_line, environment, table

from videollm.backbones.tiny import build_tiny_random
from videollm.compressors.storm import StormCompressor, StormConfig
from videollm.compressors.storm_train import StormTrainConfig, TrainExample, choice_accuracy, train_storm
from videollm.synthetic import FLASH_QUESTION, flash_order_set
from videollm.video import Video


def examples(n: int, seed: int) -> list[TrainExample]:
    return [TrainExample(Video.from_frames(torch.from_numpy(f), fps=4.0), FLASH_QUESTION, a)
            for f, a in flash_order_set(n, seed)]


def train(bb, data: list[TrainExample], args: argparse.Namespace, seed: int, encoder: bool
          ) -> tuple[StormCompressor, float]:
    storm = StormConfig(temporal_pool=4, sample_stride=1, causal=args.causal, train_projector=args.train_projector)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        comp = train_storm(bb, data, StormTrainConfig(
            output=out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=10, save_every=0,
            seed=seed, eos_loss=False, cache_features=True, train_encoder=encoder, storm=storm))
    return comp, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--train-projector", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        bb = build_tiny_random(seed=seed)
        train_set, test_set = examples(args.train, 1000 + seed), examples(args.test, 2000 + seed)
        if args.train_projector:  # the fair baseline: the same pooling, the projector trained alone
            base, base_secs = train(bb, train_set, args, seed, encoder=False)
            base_txt = "pooling + trained projector"
        else:
            base, base_secs = StormCompressor(bb, StormConfig(temporal_pool=4, sample_stride=1)), 0.0
            base_txt = "pooling alone (untrained encoder = identity)"
        acc_base = choice_accuracy(bb, base, test_set)
        comp, secs = train(bb, train_set, args, seed, encoder=True)
        acc_train, acc_test = choice_accuracy(bb, comp, train_set), choice_accuracy(bb, comp, test_set)
        secs_txt = f"{secs:.0f}" + (f" (baseline {base_secs:.0f})" if base_secs else "")
        rows.append([seed, f"{args.steps} × {args.batch_size}", f"{args.lr:g}", base_txt, f"{acc_base:.3f}",
                     f"{acc_train:.3f}", f"{acc_test:.3f}", secs_txt])
        print(table(["seed", "steps × batch", "lr", "baseline", "baseline held-out", "STORM k=4 train",
                     "STORM k=4 held-out", "train s"], rows[-1:]), flush=True)
    print(f"\n{environment()}; {args.train} training and {args.test} held-out clips per seed; "
          f"`{command_line()}`\n")
    print(table(["seed", "steps × batch", "lr", "baseline", "baseline held-out", "STORM k=4 train",
                 "STORM k=4 held-out", "train s"], rows))


if __name__ == "__main__":
    main()
