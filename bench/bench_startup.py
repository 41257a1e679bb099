"""How fast the CLI answers when no model is needed: `--help`, `list`, an argument error, a missing file.

Each command runs in a fresh process (what a user waits for), several times; the median is reported, and
whether torch was imported at all. Usage: `python bench/bench_startup.py [--repeat 5]`.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS: dict[str, list[str]] = {
    "videollm --help": ["--help"],
    "videollm ask --help": ["ask", "--help"],
    "videollm list": ["list"],
    "bad argument (--budget x)": ["ask", "v.mp4", "q", "--budget", "x"],
    "unknown compressor": ["ask", "--sample", "bikes", "q", "--compressor", "nope"],
    "missing video file": ["ask", "/nonexistent.mp4", "q"],
}

PROBE = ("import sys, runpy; sys.argv = ['videollm', *sys.argv[1:]]; code = 0\n"
         "try:\n    runpy.run_module('videollm', run_name='__main__')\n"
         "except SystemExit as e:\n    code = e.code\n"
         "print('TORCH_IMPORTED=' + str('torch' in sys.modules), file=sys.stderr)\n"
         "sys.exit(code)")


def run_once(args: list[str]) -> tuple[float, int, bool]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    seconds = time.perf_counter() - start
    return seconds, proc.returncode, "TORCH_IMPORTED=True" in proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    base = statistics.median(run_once_python() for _ in range(a.repeat))
    print(f"python -c pass (interpreter start): {base:.3f} s\n")
    print("| command | median s | exit | torch imported |\n|---|---|---|---|")
    for label, args in COMMANDS.items():
        runs = [run_once(args) for _ in range(a.repeat)]
        print(f"| `{label}` | {statistics.median(r[0] for r in runs):.3f} | {runs[0][1]} | {runs[0][2]} |")


def run_once_python() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
