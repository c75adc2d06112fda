"""GPU figures for docs/benchmarks.md: DeepSpeed training throughput/MFU and generation throughput.

Run on one CUDA GPU, no hub and no Ray needed (models are random-init from configs sized
like the real ones, so the numbers measure the compute paths, not quality):

    python bench/gpu_suite.py [--quick]

Prints one JSON line per measurement:
- ``distill_zero2``: FLAN-T5-Large-sized seq2seq (783M parameters) trained with DeepSpeed
  ZeRO-2 in bf16 through ``deepspeed.initialize`` (one rank): samples/s, tokens/s, MFU.
- ``hf_trainer_step``: the same model and batch through a plain torch bf16 autocast loop, as
  the reference the DeepSpeed path is compared with.
- ``generate_t5_large`` / ``generate_causal_0p5b``: batched HF ``generate`` throughput of a
  T5-Large-sized and a Qwen2.5-0.5B-sized model in bf16 (new tokens per second).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), 989e12)


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


BENCHES = {
    "generate_t5_large": lambda steps, bs: bench_generate("generate_t5_large", t5_large, 64, 512, 64),
    "generate_causal_0p5b": lambda steps, bs: bench_generate("generate_causal_0p5b", qwen_0p5b, 64, 512, 64),
    "plain": lambda steps, bs: bench_plain(bs, 512, 128, steps),
    "deepspeed": lambda steps, bs: bench_deepspeed(bs, 512, 128, steps),
}


def main():
    import subprocess
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=list(BENCHES), help="run one measurement in this process")
    parser.add_argument("--batch", type=int, default=8, help="training micro-batch (samples of 512+128 tokens)")
    args = parser.parse_args()
    steps = 5 if args.quick else 15
    if args.only:
        try:
            print(json.dumps(BENCHES[args.only](steps, args.batch)), flush=True)
        except Exception as exc:  # report and go on: one failed path must not hide the others
            print(json.dumps({"bench": args.only, "error": f"{type(exc).__name__}: {exc}"[:400]}), flush=True)
        return
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "peak_bf16_tflops": peak_flops() / 1e12}), flush=True)
    for name in BENCHES:  # one process each, so memory of one cannot starve the next
        extra = ["--quick"] if args.quick else []
        subprocess.run([sys.executable, __file__, "--only", name, "--batch", str(args.batch), *extra], check=False)


if __name__ == "__main__":
    main()
