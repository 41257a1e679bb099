"""videollm-mini float vs quantized, as a user runs it: `videollm ask --sample bikes ... --json`, runs alternating.

Each run is a fresh `videollm` process (imports, load and quantization included: `process_s`); the answer's
`timings` give the stages. Prints the per-run rows and the medians as a Markdown table.
    taskset -c 0 python bench/bench_mini_quant.py [--runs 5] [--variants "" "--quant int4"] [--out runs/mq.json]
"""
from __future__ import annotations

import argparse
import json
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
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    process_s = time.perf_counter() - t
    answer = json.loads(done.stdout)
    quant_warnings = [w for w in answer.get("warnings", []) if "probe prompts" in w]
    return {"variant": variant or "float", "process_s": process_s, "text": answer["text"],
            "tokens": answer.get("generated_tokens"), "agreement_warning": bool(quant_warnings),
            **{k: answer.get("timings", {}).get(k) for k in STAGES}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["", "--quant int4"])
    ap.add_argument("--sample", default="bikes")
    ap.add_argument("--question", default="What is the man riding?")
    ap.add_argument("--videollm", default=str(Path(sys.executable).with_name("videollm")))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for i in range(args.runs):
        for variant in args.variants:
            row = {"run": i + 1, **run_once(args.videollm, args.sample, args.question, variant)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    medians = []
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == (variant or "float")]
        med = {k: statistics.median(r[k] for r in mine) for k in (*STAGES, "process_s", "tokens")}
        texts = sorted({r["text"] for r in mine})
        medians.append([variant or "float", med["tokens"], med["vision"], med["prefill"], med["generate"],
                        med["stages_total"], med["wall"], med["process_s"], sum(r["agreement_warning"] for r in mine),
                        " / ".join(texts)])
    print(table(["variant", "tokens", "vision s", "prefill s", "generate s", "stages total s", "answer wall s",
                 "process s", "agreement warnings", "answer"], medians))
    print(environment())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": command_line(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
