"""Distillation training throughput: 2 Ray Train workers with DeepSpeed ZeRO-2 against one process.

CPU mode (default), run: ``.venv/bin/python bench/distill_throughput.py`` on a quiet
machine (on a shared one, ``nice -n -10`` as root: the priority is inherited by the Ray
cluster it starts, and both sides run at it).

Both sides train the same model (by default a random T5, ``--d-model`` 256 and
``--layers`` 4, about 10M parameters, so training steps, not communication start-up,
dominate; see ``bench_models.py``) on the same pairs (the shipped synthetic training
questions with rationales, prompts fitted to ``--context-tokens``) with the same global
batch and the same number of optimizer steps:

- one process: ``lmcot.stages.distill.build_trainer(..., zero=False)``, the stage's own
  HF trainer without Ray Train or DeepSpeed, batch ``2 x --per-device`` on one rank, in
  a Ray task holding both CPUs (so it runs at the same CPU priority as Ray's workers);
  once with 1 torch thread and once with 2 (the machine's cores);
- ray: ``lmcot.stages.distill.run`` on a local 2-CPU Ray cluster: 2 workers of 1 CPU,
  ZeRO-2 over gloo, ``--per-device`` each.

Throughput is samples/s per window of ``--window`` optimizer steps (time inside the
steps only: start-up, checkpoint saving and evaluation excluded on both sides; the Ray
side measures it in ``RayReportCallback`` between checkpoints). The first window is
warm-up; the best and the median of the others are compared. Also printed: the Ray
run's wall time (worker group, DeepSpeed init and export included), the last logged
training loss of each side (same data and steps: they should agree) and the load
average during each side.

GPU mode, run: ``python bench/distill_throughput.py --gpu`` on one CUDA GPU. Needs only
torch and transformers (no hub, no Ray, no DeepSpeed): a FLAN-T5-Large-sized T5
(``T5Config`` as google/flan-t5-large, 783M parameters, random init) trained in bf16 on
synthetic batches with fused AdamW, optionally ``torch.compile``d. Prints one JSON line:
tokens/s (source + target), samples/s, and MFU against the GPU's dense bf16 peak, with
FLOPs counted as 6 x parameters x tokens (encoder on source, decoder and head on target)
plus attention score/value products.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# -- GPU mode (torch + transformers only) --------------------------------------------------
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def flan_t5_large_config(dropout: float):
    from transformers import T5Config

    return T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24,
                    num_heads=16, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=dropout,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def t5_train_flops(model, batch: int, src: int, tgt: int) -> tuple[float, float]:
    """(6ND FLOPs, attention FLOPs) of one training step (forward + backward = 3x forward)."""
    cfg = model.config
    emb = model.shared.weight.numel()
    enc = sum(p.numel() for p in model.encoder.parameters()) - emb
    dec = sum(p.numel() for p in model.decoder.parameters()) - emb
    head = model.lm_head.weight.numel()
    dense = 6.0 * batch * (enc * src + (dec + head) * tgt)
    inner = cfg.num_heads * cfg.d_kv
    per_fwd = 4 * inner * (cfg.num_layers * src * src + cfg.num_decoder_layers * (tgt * tgt + tgt * src))
    return dense, 3.0 * batch * per_fwd


def gpu_bench(args) -> dict:
    import torch
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = T5ForConditionalGeneration(flan_t5_large_config(args.dropout)).to(device, dtype=torch.bfloat16)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(2, model.config.vocab_size, (args.batch, args.src), device=device, generator=g)
    labels = torch.randint(2, model.config.vocab_size, (args.batch, args.tgt), device=device, generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    forward = torch.compile(model, mode=args.compile_mode) if args.compile else model

    def step():
        loss = forward(**data).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / args.steps
    dense, attention = t5_train_flops(model, args.batch, args.src, args.tgt)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.0)
    return {
        "bench": "distill_gpu_t5_large", "device": name, "torch": torch.__version__,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6), "dtype": "bf16",
        "compile": args.compile and args.compile_mode, "dropout": args.dropout, "batch": args.batch, "src_len": args.src,
        "tgt_len": args.tgt, "step_s": round(seconds, 4), "warmup_s": round(warm_s, 1),
        "samples_per_s": round(args.batch / seconds, 1),
        "tokens_per_s": round(args.batch * (args.src + args.tgt) / seconds),
        "mfu": round((dense + attention) / seconds / (peak * 1e12), 4),
        "mfu_6nd_only": round(dense / seconds / (peak * 1e12), 4), "peak_tflops": peak,
        "max_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None,
    }


# -- CPU mode: Ray Train + ZeRO-2 against one process --------------------------------------
def write_rationales(run_dir, cfg) -> int:
    """Kept rationale rows for every shipped training question (the schema generate-rationales writes)."""
    import pandas as pd

    from lmcot.datasets.context import build_context
    from lmcot.datasets.data import load_split
    from lmcot.models.loading import context_tokenizer

    teacher = context_tokenizer(cfg.large)
    rows = []
    for spec in cfg.data.datasets:
        for ex in load_split(spec, "train"):
            rows.append({"dataset": spec.name, "id": ex.id, "sample": 0, "question": ex.question, "kept": True,
                         "context": build_context(ex, mode=cfg.data.context_mode, tokenizer=teacher,
                                                  max_tokens=cfg.data.context_max_tokens),
                         "rationale": f"{' and '.join(ex.gold_titles)} are the facts to connect. "
                                      f"The answer is {ex.answer}."})
    run_dir.rationales.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(run_dir.rationales / "part-000000.parquet")
    return len(rows)


def one_process(cfg, prep, threads: int, out_dir: str) -> dict:
    """The stage's HF trainer in one process (no Ray Train, no DeepSpeed), global batch on one rank.

    Runs as a Ray task holding both CPUs, so it is scheduled like the Ray Train workers
    (Ray gives its worker processes their own CPU priority): the comparison is fair.
    """
    import dataclasses

    import torch
    from transformers import TrainerCallback

    from lmcot.stages.distill import build_trainer

    torch.set_num_threads(threads)
    dc = dataclasses.replace(cfg.distill, per_device_batch_size=2 * cfg.distill.per_device_batch_size)
    window = cfg.distill.save_steps

    class Timer(TrainerCallback):
        """Seconds spent in optimizer steps, per window of ``save_steps`` steps (as the Ray side reports)."""

        t0 = None
        seconds: dict = {}

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            w = (state.global_step - 1) // window
            self.seconds[w] = self.seconds.get(w, 0.0) + time.perf_counter() - self.t0

    config = {"model": cfg.small.name_or_path, "family": prep["family"], "seed": cfg.seed, "output_dir": out_dir}
    trainer, _ = build_trainer(config, dc, {"train": prep["train"], "val": None, "samples": []}, zero=False)
    timer = Timer()
    trainer.add_callback(timer)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    rates = [window * dc.per_device_batch_size / timer.seconds[w] for w in sorted(timer.seconds)]
    return {"windows": rates, "train_loss": losses[-1], "niceness": os.nice(0)}


def cpu_bench(args) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LMCOT_TINY_DIR", str(ROOT / "artifacts" / "tiny-models"))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / "artifacts" / "torch-extensions"))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    sys.path.insert(0, str(ROOT))
    from lmcot.config import load_config
    from lmcot.runs.rundir import RunDir
    from lmcot.stages import distill
    from lmcot.stages.cluster import ensure_ray

    from bench_models import parameter_count, random_t5

    model = args.model or str(random_t5(args.d_model, args.layers))
    steps = args.steps
    cfg = load_config("tiny", [
        f"small.name_or_path={model}", f"data.context_max_tokens={args.context_tokens}",
        f"distill.max_steps={steps}", f"distill.save_steps={args.window}", f"distill.eval_steps={steps}",
        f"distill.scaling.checkpoints_to_keep={steps // args.window + 1}",
        "distill.eval_fraction=0.0", "distill.sample_rationales=0", f"distill.logging_steps={steps}",
        f"distill.per_device_batch_size={args.per_device}", f"distill.max_source_tokens={args.context_tokens + 96}",
        "distill.max_target_tokens=48", "distill.scaling.num_workers=2", "distill.scaling.zero_stage=2",
        "distill.learning_rate=0.0005",
    ])
    with tempfile.TemporaryDirectory(prefix="lmcot-bench-distill-") as tmp:
        run_dir = RunDir(Path(tmp) / "run")
        n = write_rationales(run_dir, cfg)
        prep = distill.prepare(cfg, run_dir)
        results = {"bench": "distill_throughput_cpu", "model": model, "pairs": n, "steps": steps,
                   "params_m": round(parameter_count(model) / 1e6, 1) if not args.model else None,
                   "global_batch": 2 * args.per_device, "prompt_tokens_mean": round(
                       prep["train"].token_counts()[0] / len(prep["train"]), 1)}
        import ray

        ensure_ray(num_cpus=2)
        single = ray.remote(num_cpus=2)(one_process)
        for threads in (1, 2):
            load = os.getloadavg()[0]
            r = ray.get(single.remote(cfg, prep, threads, str(Path(tmp) / f"single-{threads}")))
            results[f"one_process_{threads}thread"] = summarize(r["windows"], r["train_loss"], load)
            results["one_process_niceness"] = r["niceness"]
            print(f"one process, {threads} torch thread(s): {results[f'one_process_{threads}thread']}", flush=True)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        out = distill.run(cfg, run_dir)
        results["ray_2workers_zero2"] = summarize(out["samples_per_second_windows"], out["train_loss"], load)
        results["ray_run_wall_s"] = round(time.perf_counter() - t0, 1)
    ray = results["ray_2workers_zero2"]
    for stat in ("best", "median"):
        base = max(results["one_process_1thread"][stat], results["one_process_2thread"][stat])
        results[f"ratio_{stat}"] = round(ray[stat] / base, 2)
    return results


def summarize(windows: list[float], loss: float, load_before: float) -> dict:
    """Best and median samples/s over the windows after the first (warm-up), the last loss, the load."""
    timed = sorted(windows[1:] or windows)
    return {"best": round(timed[-1], 2), "median": round(timed[len(timed) // 2], 2),
            "windows": [round(w, 2) for w in windows], "train_loss": round(loss, 3),
            "loadavg": round((load_before + os.getloadavg()[0]) / 2, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="FLAN-T5-Large-sized bf16 training step on one GPU")
    p.add_argument("--model", default="", help="CPU mode: the small LM (default: a random T5 of --d-model/--layers)")
    p.add_argument("--d-model", type=int, default=256, help="CPU mode: width of the default random T5 [256]")
    p.add_argument("--layers", type=int, default=4, help="CPU mode: encoder and decoder layers of the default T5 [4]")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per side (CPU) or timed steps (GPU)")
    p.add_argument("--window", type=int, default=10, help="CPU mode: steps per throughput window [10]")
    p.add_argument("--per-device", type=int, default=8, help="CPU mode: batch per Ray worker [8]")
    p.add_argument("--context-tokens", type=int, default=256, help="CPU mode: context budget of each prompt")
    p.add_argument("--batch", type=int, default=16, help="GPU mode: batch")
    p.add_argument("--src", type=int, default=512, help="GPU mode: source tokens")
    p.add_argument("--tgt", type=int, default=128, help="GPU mode: target tokens")
    p.add_argument("--warmup", type=int, default=3, help="GPU mode: untimed steps (compilation happens here)")
    p.add_argument("--compile", action="store_true", help="GPU mode: torch.compile the model")
    p.add_argument("--compile-mode", default="default", help="GPU mode: torch.compile mode [default]")
    p.add_argument("--dropout", type=float, default=0.1, help="GPU mode: dropout (flan-t5-large: 0.1)")
    p.add_argument("--device", default="cuda", help="GPU mode: device (cpu only to check the script)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="GPU mode: dense bf16 peak (default: by name)")
    args = p.parse_args(argv)
    if args.gpu:
        if args.steps == 30:
            args.steps = 10
        print(json.dumps(gpu_bench(args)), flush=True)
        return
    results = cpu_bench(args)
    print(json.dumps(results), flush=True)
    print(f"\n2 workers ZeRO-2 vs the best one-process trainer: {results['ratio_best']}x (best windows), "
          f"{results['ratio_median']}x (median windows)")


if __name__ == "__main__":
    main()
