"""videollm-mini float vs quantized, as a user runs it: `videollm ask --sample bikes ... --json`, runs alternating.

Each run is a fresh `videollm` process (imports, load and quantization included: `process_s` wall, `cpu_s` its
user + system CPU time); the answer's `timings` give the stages. Prints the per-run rows and the medians as a
Markdown table.
    taskset -c 0 python bench/bench_mini_quant.py [--runs 5] [--variants "" "--quant int4"] [--out runs/mq.json]

`--load [QUANT ...]` instead times the model load alone (fresh processes, alternating; the quantized-weights
cache is used as `ask` uses it). `--weight-error` instead measures int4's weight error on mini's real weights
against their Q4_1 source grid (|float − dequantized| in units of each block's step d, at groups 32 and 128, and
bfloat16 casting for scale).
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import command_line, environment, table

STAGES = ("vision", "prefill", "generate", "stages_total", "wall")


def run_once(videollm: str, sample: str, question: str, variant: str) -> dict:
    cmd = [videollm, "ask", "--sample", sample, question, "--model", "videollm-mini", "--json", *shlex.split(variant)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    process_s = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    answer = json.loads(done.stdout)
    quant_warnings = [w for w in answer.get("warnings", []) if "probe prompts" in w]
    return {"variant": variant or "float", "process_s": process_s, "cpu_s": cpu_s, "text": answer["text"],
            "tokens": answer.get("generated_tokens"), "agreement_warning": bool(quant_warnings),
            **{k: answer.get("timings", {}).get(k) for k in STAGES}}


def weight_error() -> dict:
    """int4 re-quantization of every Q4_1 tensor of the packaged GGUF, against the block's own codes and step."""
    import gguf
    import numpy as np
    import torch
    from gguf.quants import dequantize

    from videollm.backbones.mini import assets
    from videollm.quant.paretoq import quantize_int4_asym

    def dequant(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int, k: int) -> torch.Tensor:
        n = codes.shape[0]
        w = (codes.float() - 8).view(n, -1, group) * scale[..., None] + zero[..., None]
        return w.reshape(n, -1)[:, :k]

    acc = {"weights": 0, "blocks": 0, "full_range_blocks": 0, "same_codes_g32": 0, "exact_g32": 0}
    sums = {"g32": 0.0, "g128": 0.0, "bf16_cast": 0.0}
    peaks = dict.fromkeys(sums, 0.0)
    for t in gguf.GGUFReader(str(assets.gguf_path())).tensors:
        if t.tensor_type.name != "Q4_1":
            continue
        raw = np.asarray(t.data).reshape(-1, 20)  # per block: fp16 d, fp16 m, 16 bytes of codes (low nibbles first)
        d = torch.from_numpy(raw[:, 0:2].copy().view(np.float16).astype(np.float32)[:, 0])[:, None]
        q = torch.from_numpy(np.concatenate([raw[:, 4:] & 0x0F, raw[:, 4:] >> 4], axis=1).astype(np.int64))
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)).half().float()
        k = w.shape[1]
        c32, s32, z32 = quantize_int4_asym(w, 32)
        c128, s128, z128 = quantize_int4_asym(w, 128)
        errs = {"g32": dequant(c32, s32, z32, 32, k), "g128": dequant(c128, s128, z128, 128, k),
                "bf16_cast": w.bfloat16().float()}
        for name, approx in errs.items():
            e = (approx - w).reshape(-1, 32).abs() / d
            sums[name] += e.sum().item()
            peaks[name] = max(peaks[name], e.max().item())
            if name == "g32":
                acc["exact_g32"] += int((e == 0).sum())
        acc["weights"] += w.numel()
        acc["blocks"] += q.shape[0]
        acc["full_range_blocks"] += int(((q.min(1).values == 0) & (q.max(1).values == 15)).sum())
        acc["same_codes_g32"] += int((c32[:, :k].reshape(-1, 32).long() == q).sum())
    n = acc["weights"]
    return {**acc, **{f"mean_err_over_d_{k}": v / n for k, v in sums.items()},
            **{f"max_err_over_d_{k}": v for k, v in peaks.items()}}


#: one fresh process: the model cache's load of videollm-mini, quantization (or the quantized-weights cache) included
LOAD_SCRIPT = """
import json, sys, time
from videollm.models import get_model
t = time.perf_counter()
get_model("videollm-mini", device="cpu", quant=sys.argv[1])
print(json.dumps({"load_s": time.perf_counter() - t}))
"""


def load_once(quant: str) -> float:
    done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, quant], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["load_s"]


def load_times(runs: int, quants: list[str]) -> None:
    """`--load`: `get_model` alone, alternating, each in a fresh process ("int4+none" is `ask --quant int4`)."""
    times: dict[str, list[float]] = {q: [] for q in quants}
    for _ in range(runs):
        for q in quants:
            times[q].append(load_once(q))
            print(json.dumps({"quant": q, "load_s": times[q][-1]}), flush=True)
    print(table(["quant", "load s (median)", "runs"],
                [[q, statistics.median(t), " / ".join(f"{x:.2f}" for x in t)] for q, t in times.items()]))
    print(environment())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["", "--quant int4"])
    ap.add_argument("--sample", default="bikes")
    ap.add_argument("--question", default="What is the man riding?")
    ap.add_argument("--videollm", default=str(Path(sys.executable).with_name("videollm")))
    ap.add_argument("--out", default=None)
    ap.add_argument("--weight-error", action="store_true", help="measure int4's weight error against Q4_1 instead")
    ap.add_argument("--load", nargs="*", metavar="QUANT", default=None,
                    help="time the model load alone for these quant settings (default: none int4+none) instead")
    args = ap.parse_args()
    if args.load is not None:
        load_times(args.runs, args.load or ["none", "int4+none"])
        return 0
    if args.weight_error:
        print(json.dumps(weight_error(), indent=2))
        return 0
    rows = []
    for i in range(args.runs):
        for variant in args.variants:
            row = {"run": i + 1, **run_once(args.videollm, args.sample, args.question, variant)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    medians = []
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == (variant or "float")]
        med = {k: statistics.median(r[k] for r in mine) for k in (*STAGES, "process_s", "cpu_s", "tokens")}
        texts = sorted({r["text"] for r in mine})
        medians.append([variant or "float", med["tokens"], med["vision"], med["prefill"], med["generate"],
                        med["stages_total"], med["wall"], med["process_s"], med["cpu_s"],
                        sum(r["agreement_warning"] for r in mine),
                        " / ".join(texts)])
    print(table(["variant", "tokens", "vision s", "prefill s", "generate s", "stages total s", "answer wall s",
                 "process s", "process CPU s", "agreement warnings", "answer"], medians))
    print(environment())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": command_line(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
