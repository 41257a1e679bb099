"""STORM at toy scale: does the temporal encoder keep what temporal pooling alone loses?

Task (`videollm.synthetic.flash_order_set`): 4 noisy grey frames with a red and a green full-frame flash at two
random frames, in either order; "Which colour flashed first? A. red B. green". With k = 4 the whole clip is
averaged into one pooled frame, which is identical for both orders up to noise: pooling without the encoder,
or any per-frame map before it, is at chance by construction. STORM (1 bidirectional layer, post-projector) is
trained with `train_storm` on `tiny-random` (vision tower and LLM frozen, random weights) and scored on
held-out clips by the A-vs-B next-token logit.

    python bench/storm_toy.py --seed 0 --steps 150 --batch-size 2 --lr 1e-2
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch

from common import command_line, environment

from videollm.backbones.tiny import build_tiny_random
from videollm.compressors.storm import StormCompressor, StormConfig
from videollm.compressors.storm_train import StormTrainConfig, TrainExample, choice_accuracy, train_storm
from videollm.synthetic import FLASH_QUESTION, flash_order_set
from videollm.video import Video


def examples(n: int, seed: int) -> list[TrainExample]:
    return [TrainExample(Video.from_frames(torch.from_numpy(f), fps=4.0), FLASH_QUESTION, a)
            for f, a in flash_order_set(n, seed)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--test", type=int, default=48)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bb = build_tiny_random(seed=args.seed)
    train, test = examples(args.train, 1000 + args.seed), examples(args.test, 2000 + args.seed)
    storm = StormConfig(temporal_pool=4, sample_stride=1, causal=args.causal)
    base = StormCompressor(bb, storm)
    acc_base = choice_accuracy(bb, base, test)
    print(f"pooling k=4 without the encoder: held-out accuracy {acc_base:.3f}", flush=True)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        comp = train_storm(bb, train, StormTrainConfig(output=out, steps=args.steps, batch_size=args.batch_size,
                                                       lr=args.lr, warmup_steps=10, save_every=0, seed=args.seed,
                                                       cache_features=True, storm=storm))
    secs = time.perf_counter() - t
    acc_train, acc_test = choice_accuracy(bb, comp, train), choice_accuracy(bb, comp, test)
    print(f"STORM k=4 trained {args.steps} steps x {args.batch_size} in {secs:.0f} s: train {acc_train:.3f}, "
          f"held-out {acc_test:.3f} (pooling alone {acc_base:.3f})")
    print(f"{environment()}; `{command_line()}`")


if __name__ == "__main__":
    main()
