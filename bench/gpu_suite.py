"""GPU figures for docs/benchmarks.md: lmcot's generation and judging paths, and training throughput/MFU.

Run on one CUDA GPU, no hub, no Ray and (for the generation suite) no DeepSpeed needed; models
are random-init from the published configs shipped in ``lmcot/known_models/`` (so the numbers
measure the compute paths, not quality):

    python bench/gpu_suite.py --suite generation [--quick]   # issue 12 items 1-2: eager vs fast paths
    python bench/gpu_suite.py --smoke                        # the same code on CPU, tiny sizes (a test runs it)
    python bench/gpu_suite.py [--quick]                      # everything, training included

Generation suite (through ``lmcot.models.generation.HFGenerator``, the code every stage uses; each
measurement in its own process, one warm-up call that compiles, then a timed call):

- ``gen_xxl``: FLAN-T5-XXL-sized answers/teacher rationales, 32 rows of 1024-token prompts,
  128 new tokens, greedy: eager (today's path) vs static cache + compiled decoding.
- ``gen_large_k5``: FLAN-T5-Large-sized rationales, k=5 samples per prompt: eager at 32 rows
  (``batch_size // n`` = 6 prompts, today's preset) vs static + compile at 160 rows under a
  token budget.
- ``judge_xxl``: ``score_yes_no`` on FLAN-T5-XXL-sized, 64 prompts of 1024 tokens, batches of 32:
  eager vs compiled encoder (with ``--attn`` to pick sdpa/eager/flex_attention).

Each figure is printed with its ratio to the card's limit: decoding against the time to read
the decoder weights and the KV caches once per step at the card's HBM bandwidth plus the
prefill FLOPs at peak bf16 (``x floor``: 1.0 is the limit); judging as MFU (encoder FLOPs,
attention included, over peak bf16). A markdown table closes the run.

Training suite (kept from before):
- ``distill_zero2``: FLAN-T5-Large-sized seq2seq (783M parameters) trained with DeepSpeed
  ZeRO-2 in bf16 through ``deepspeed.initialize`` (one rank): samples/s, tokens/s, MFU.
- ``hf_trainer_step``: the same model and batch through a plain torch bf16 autocast loop, as
  the reference the DeepSpeed path is compared with.
- ``generate_t5_large`` / ``generate_causal_0p5b``: plain HF ``generate`` of a T5-Large-sized and a
  Qwen2.5-0.5B-sized model in bf16 (new tokens per second), outside lmcot (the 2026-11-26 figures).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), 989e12)


def hbm_bandwidth() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in HBM_BYTES_PER_S.items() if k in name), 3.35e12)


def t5_large():
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24,
                   num_heads=16, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg)


def qwen_0p5b():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=4096)
    return Qwen2ForCausalLM(cfg)


def seq2seq_flops_per_sample(model, src: int, tgt: int) -> float:
    """6 * params * tokens, encoder params on source tokens, decoder + head on target tokens."""
    enc = sum(p.numel() for p in model.encoder.parameters()) - model.shared.weight.numel()
    dec = sum(p.numel() for p in model.decoder.parameters()) - model.shared.weight.numel()
    head = model.lm_head.weight.numel()
    return 6.0 * (enc * src + (dec + head) * tgt)


def batch(bs: int, src: int, tgt: int, vocab: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(2, vocab, (bs, src), device="cuda", generator=g)
    labels = torch.randint(2, vocab, (bs, tgt), device="cuda", generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def timed_steps(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_deepspeed(bs, src, tgt, steps):
    import deepspeed

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    deepspeed.init_distributed(dist_backend="nccl")
    model = t5_large()
    model.gradient_checkpointing_enable() if os.environ.get("LMCOT_BENCH_CKPT") else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    config = {"train_micro_batch_size_per_gpu": bs, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
              "bf16": {"enabled": True}, "gradient_clipping": 1.0, "zero_allow_untested_optimizer": True,
              "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    data = batch(bs, src, tgt, model.config.vocab_size)

    def step():
        loss = engine(**data).loss
        engine.backward(loss)
        engine.step()

    seconds = timed_steps(step, 3, steps)
    flops = seq2seq_flops_per_sample(model, src, tgt) * bs * steps
    result = {"bench": "distill_zero2", "model": "t5-large-sized (random init)", "params_m": round(
        sum(p.numel() for p in model.parameters()) / 1e6), "batch": bs, "src_len": src, "tgt_len": tgt,
        "samples_per_s": round(bs * steps / seconds, 1), "tokens_per_s": round(bs * (src + tgt) * steps / seconds),
        "mfu": round(flops / seconds / peak_flops(), 3)}
    del engine, model, opt
    torch.cuda.empty_cache()
    return result


def bench_plain(bs, src, tgt, steps):
    model = t5_large().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    data = batch(bs, src, tgt, model.config.vocab_size)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = timed_steps(step, 3, steps)
    flops = seq2seq_flops_per_sample(model, src, tgt) * bs * steps
    result = {"bench": "plain_torch_autocast", "batch": bs, "samples_per_s": round(bs * steps / seconds, 1),
              "mfu": round(flops / seconds / peak_flops(), 3)}
    del model, opt
    torch.cuda.empty_cache()
    return result


@torch.inference_mode()
def bench_generate(name, build, bs, src, new_tokens):
    model = build().to("cuda", dtype=torch.bfloat16).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(2, vocab, (bs, src), device="cuda")
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    model.generate(**kwargs)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(**kwargs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del model
    torch.cuda.empty_cache()
    return {"bench": name, "batch": bs, "prompt_len": src, "new_tokens": new_tokens,
            "new_tokens_per_s": round(bs * new_tokens / seconds), "seconds": round(seconds, 2)}


# -- generation suite: lmcot's HFGenerator, eager vs static cache + compile -----------------------------

SMOKE = dict(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4)
"""--smoke: the real configs shrunk to CPU size (same families, vocabularies and conventions)."""


def known_model(name: str, smoke: bool = False):
    """A random-init model of a published config in lmcot/known_models, with lmcot's tiny tokenizer
    of the same family (its 2,048 ids fit the real vocabularies), as a LoadedModel."""
    from importlib import resources

    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from lmcot.models.loading import LoadedModel, load_tokenizer, resolve_model_path

    entry = json.loads((resources.files("lmcot") / "known_models" / (name.replace("/", "--") + ".json")).read_text())
    fields = dict(entry["config"])
    family = "seq2seq" if fields.get("is_encoder_decoder") else "causal"
    if smoke:
        fields.update(SMOKE if family == "seq2seq" else dict(hidden_size=64, intermediate_size=128,
                                                             num_hidden_layers=2, num_attention_heads=4,
                                                             num_key_value_heads=2))
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cls = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    with torch.device(device):
        model = cls.from_config(config, dtype=dtype).eval()
    tiny = resolve_model_path("tiny:t5-large" if family == "seq2seq" else "tiny:causal-large")
    tokenizer = load_tokenizer(tiny, family)
    return LoadedModel(model=model, tokenizer=tokenizer, family=family, path=name, device=device)


def prompts_of(generator, count: int, tokens: int, seed: int = 0) -> list[str]:
    """``count`` distinct prompts of at most ``tokens`` tokens as the model receives them (fitted counts)."""
    import random

    rng = random.Random(seed)
    words = ["river", "castle", "founded", "album", "director", "born", "capital", "season", "team", "novel"]
    out = []
    for _ in range(count):
        text = " ".join(rng.choice(words) for _ in range(tokens * 2))
        lo, hi = 0, len(text.split())
        while lo < hi:  # longest prefix of words that fits the target
            mid = (lo + hi + 1) // 2
            if generator.fitter.count(generator.fitter.format(" ".join(text.split()[:mid]))) <= tokens:
                lo = mid
            else:
                hi = mid - 1
        out.append(" ".join(text.split()[:lo]))
    return out


def param_counts(model) -> dict:
    """Parameters read per decoding step and run per prefill token (embedding lookups excluded)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    if model.config.is_encoder_decoder:
        enc = sum(p.numel() for p in model.encoder.parameters()) - embed
        dec = sum(p.numel() for p in model.decoder.parameters()) - embed + model.lm_head.weight.numel()
        return {"total": total, "prefill": enc, "decode": dec}
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return {"total": total, "prefill": total - (0 if tied else embed), "decode": total - (0 if tied else embed)}


def attn_width(config) -> tuple[int, int]:
    """(layers, heads x head_dim) of the prefill's self-attention, (kv layers, kv width) for the cache."""
    if config.is_encoder_decoder:
        return config.num_layers, config.num_heads * config.d_kv
    head = config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_attention_heads * head


def prefill_flops(model, rows: int, prompt: int) -> float:
    """2 x params x tokens + attention (QK^T and AV: 4 x prompt^2 x width per layer) for ``rows`` prompts."""
    layers, width = attn_width(model.config)
    return rows * (2.0 * param_counts(model)["prefill"] * prompt + 4.0 * layers * prompt * prompt * width)


def decode_floor_s(model, rows: int, prompt: int, new: int) -> float:
    """The card's limit for ``new`` decoding steps: read the decoder weights and the KV caches once per
    step at HBM bandwidth (bf16), plus the prefill at peak bf16."""
    cfg = model.config
    if cfg.is_encoder_decoder:  # cross-attention cache (prompt) + self-attention cache (~new/2 on average)
        kv = rows * cfg.num_decoder_layers * 2 * cfg.num_heads * cfg.d_kv * (prompt + new / 2)
    else:
        head = cfg.hidden_size // cfg.num_attention_heads
        kv = rows * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head * (prompt + new / 2)
    per_step = 2.0 * (param_counts(model)["decode"] + kv) / hbm_bandwidth()
    return new * per_step + prefill_flops(model, rows, prompt) / peak_flops()


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> tuple[float, object]:
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - start, out


def _generator(lm, name: str, limit: int, **config):
    from lmcot.config import GenerationConfig, ModelSpec
    from lmcot.models.generation import HFGenerator

    return HFGenerator(ModelSpec(name, max_input_tokens=limit), loaded=lm, config=GenerationConfig(**config))


def bench_lmcot_generate(bench, model_name, *, prompts, prompt_len, new, n, modes, smoke=False):
    """``HFGenerator.generate`` per mode (a dict of GenerationConfig fields): warm-up (compiles) + timed call."""
    lm = known_model(model_name, smoke)
    lm.model.generation_config.min_new_tokens = new  # every row decodes ``new`` tokens (random weights stop anywhere)
    lm.model.generation_config.suppress_tokens = [lm.tokenizer.pad_token_id]
    sampling = dict(temperature=0.7, seed=0) if n > 1 else {}
    rows = []
    for label, fields in modes.items():
        gen = _generator(lm, model_name, prompt_len + 64, **fields)
        texts = prompts_of(gen, prompts, prompt_len)
        call = lambda: gen.generate(texts, max_new_tokens=new, n=n, **sampling)  # noqa: E731
        warm, _ = _timed(call)
        seconds, out = _timed(call)
        made = sum(g.completion_tokens for g in out)
        fitted = max(g.prompt_tokens for g in out)
        row = {"bench": bench, "mode": label, "model": model_name, "prompts": prompts, "n": n,
               "batch_rows": gen.batch_size, "max_batch_tokens": gen.config.max_batch_tokens, "prompt_len": fitted,
               "new_tokens": new, "seconds": round(seconds, 3), "first_call_s": round(warm, 1),
               "new_tokens_per_s": round(made / seconds, 1)}
        if torch.cuda.is_available() and not smoke:
            floor = decode_floor_s(lm.model, prompts * n, fitted, new)
            row["x_floor"] = round(seconds / floor, 2)
        rows.append(row)
        del gen
    return rows


def bench_lmcot_judge(bench, model_name, *, prompts, prompt_len, modes, smoke=False):
    """``HFGenerator.score_yes_no`` per mode, with the largest P(yes) difference from the first mode."""
    lm = known_model(model_name, smoke)
    rows, reference = [], None
    for label, fields in modes.items():
        attn = fields.pop("attn", None)
        if attn:
            lm.model.set_attn_implementation(attn)
        gen = _generator(lm, model_name, prompt_len + 64, **fields)
        texts = prompts_of(gen, prompts, prompt_len)
        warm, _ = _timed(lambda: gen.score_yes_no(texts))
        seconds, scores = _timed(lambda: gen.score_yes_no(texts))
        reference = reference or scores
        row = {"bench": bench, "mode": label, "model": model_name, "prompts": prompts, "batch_rows": gen.batch_size,
               "prompt_len": prompt_len, "seconds": round(seconds, 3), "first_call_s": round(warm, 1),
               "prompts_per_s": round(prompts / seconds, 2),
               "max_abs_diff_p_yes": round(max(abs(a - b) for a, b in zip(reference, scores)), 6)}
        if torch.cuda.is_available() and not smoke:
            row["mfu"] = round(prefill_flops(lm.model, prompts, prompt_len) / seconds / peak_flops(), 3)
        rows.append(row)
    return rows


def generation_benches(quick: bool, attn: str, smoke: bool) -> dict:
    """The measurements of the generation suite at the GPU presets' shapes (or CPU smoke shapes)."""
    xxl, large = "google/flan-t5-xxl", "google/flan-t5-large"
    fast = dict(static_cache=True, compile=not smoke, length_buckets=(256, 512, 768, 1024))
    if smoke:  # tiny sizes on CPU: the static-cache path without compile (compiling on 2 cores takes minutes)
        return {
            "gen_xxl": lambda: bench_lmcot_generate(
                "gen_xxl", xxl, prompts=4, prompt_len=48, new=4, n=1, smoke=True,
                modes={"eager": dict(batch_size=4), "static": dict(batch_size=4, static_cache=True)}),
            "gen_large_k5": lambda: bench_lmcot_generate(
                "gen_large_k5", large, prompts=4, prompt_len=48, new=4, n=2, smoke=True,
                modes={"eager": dict(batch_size=4), "static": dict(batch_size=8, static_cache=True)}),
            "judge_xxl": lambda: bench_lmcot_judge(
                "judge_xxl", xxl, prompts=4, prompt_len=48, smoke=True,
                modes={"eager": dict(batch_size=4), "static": dict(batch_size=4, static_cache=True)}),
        }
    new = 64 if quick else 128
    return {
        "gen_xxl": lambda: bench_lmcot_generate(
            "gen_xxl", xxl, prompts=32, prompt_len=1024, new=new, n=1,
            modes={"eager": dict(batch_size=32), "static+compile": dict(batch_size=32, **fast)}),
        "gen_large_k5": lambda: bench_lmcot_generate(
            "gen_large_k5", large, prompts=32, prompt_len=1024, new=new, n=5,
            modes={"eager, 32 rows": dict(batch_size=32),
                   "static+compile, 160 rows": dict(batch_size=160, max_batch_tokens=160 * (1024 + new), **fast)}),
        "judge_xxl": lambda: bench_lmcot_judge(
            "judge_xxl", xxl, prompts=64, prompt_len=1024,
            modes={"eager": dict(batch_size=32), f"compile ({attn})": dict(batch_size=32, attn=attn, **fast)}),
    }


def markdown(rows: list[dict]) -> str:
    """The generation suite's rows as the table docs/benchmarks.md records."""
    lines = ["| bench | mode | rows/batch | prompt | result | vs first mode | limit | first call s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    first: dict[str, float] = {}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['bench']} | error | | | {r['error'][:80]} | | | |")
            continue
        key, unit = ("new_tokens_per_s", "new tok/s") if "new_tokens_per_s" in r else ("prompts_per_s", "prompts/s")
        base = first.setdefault(r["bench"], r[key])
        limit = (f"{r['x_floor']}x floor" if "x_floor" in r else f"MFU {100 * r['mfu']:.0f} %" if "mfu" in r else "-")
        if "max_abs_diff_p_yes" in r:
            limit += f"; P(yes) diff {r['max_abs_diff_p_yes']:.1e}"
        lines.append(f"| {r['bench']} | {r['mode']} | {r['batch_rows']} | {r['prompt_len']} | {r[key]:,} {unit} | "
                     f"{r[key] / base:.2f}x | {limit} | {r['first_call_s']} |")
    return "\n".join(lines)


BENCHES = {
    "generate_t5_large": lambda steps, bs: bench_generate("generate_t5_large", t5_large, 64, 512, 64),
    "generate_causal_0p5b": lambda steps, bs: bench_generate("generate_causal_0p5b", qwen_0p5b, 64, 512, 64),
    "plain": lambda steps, bs: bench_plain(bs, 512, 128, steps),
    "deepspeed": lambda steps, bs: bench_deepspeed(bs, 512, 128, steps),
}


def run_one(name: str, args) -> list[dict]:
    """One measurement in this process: its rows, or one row naming the error (the others go on)."""
    gen = generation_benches(args.quick, args.attn, args.smoke)
    try:
        if name in gen:
            return gen[name]()
        return [BENCHES[name](5 if args.quick else 15, args.batch)]
    except Exception as exc:  # report and go on: one failed path must not hide the others
        return [{"bench": name, "error": f"{type(exc).__name__}: {exc}"[:400]}]


def main(argv=None):
    import subprocess
    import sys

    names = ["gen_xxl", "gen_large_k5", "judge_xxl", *BENCHES]
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps / 64 new tokens instead of 128")
    parser.add_argument("--suite", choices=["generation", "training", "all"], default="all")
    parser.add_argument("--only", choices=names, help="run one measurement in this process")
    parser.add_argument("--smoke", action="store_true", help="generation suite on CPU at tiny sizes, in-process")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flex_attention"],
                        help="attention implementation of the compiled judge")
    parser.add_argument("--batch", type=int, default=8, help="training micro-batch (samples of 512+128 tokens)")
    args = parser.parse_args(argv)
    if args.only:
        for row in run_one(args.only, args):
            print(json.dumps(row), flush=True)
        return
    if args.smoke:  # CPU, one process: the generation suite's code paths at tiny sizes
        rows = [row for name in ("gen_xxl", "gen_large_k5", "judge_xxl") for row in run_one(name, args)]
        for row in rows:
            print(json.dumps(row), flush=True)
        print(markdown(rows))
        return rows
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "peak_bf16_tflops": peak_flops() / 1e12, "hbm_tb_s": hbm_bandwidth() / 1e12}), flush=True)
    chosen = {"generation": names[:3], "training": list(BENCHES), "all": names}[args.suite]
    rows = []
    for name in chosen:  # one process each, so memory of one cannot starve the next
        extra = (["--quick"] if args.quick else []) + ["--attn", args.attn, "--batch", str(args.batch)]
        done = subprocess.run([sys.executable, __file__, "--only", name, *extra], check=False,
                              stdout=subprocess.PIPE, text=True)
        for line in done.stdout.splitlines():
            print(line, flush=True)
            if line.startswith("{") and name in names[:3]:
                rows.append(json.loads(line))
    if rows:
        print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
