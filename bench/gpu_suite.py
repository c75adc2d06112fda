"""The GPU check in one command: every hot path of lmcot at paper shapes, each figure beside the card's limit.

    python bench/gpu_suite.py --all [--budget-s 450] [--out DIR]   # one card, under 8 minutes
    python bench/gpu_suite.py --all --smoke                        # the same code on CPU, tiny sizes (make test)
    python bench/gpu_suite.py --only distill                       # one measurement, in this process

Why one command: a GPU is lent here for minutes, on a machine with torch and transformers but without
Ray, DeepSpeed or TRL. Nothing below imports those: models are random-init from the published configs
shipped in ``lmcot/known_models/`` (the figures measure compute paths, not quality), with lmcot's tiny
tokenizers, and nothing touches the hub. Each measurement is lmcot's own code:

- ``gen_xxl``: FLAN-T5-XXL-sized large LM, 32 rows x 1,024-token prompts x 128 new tokens, through
  :class:`lmcot.models.generation.HFGenerator`: eager vs the ``paper`` preset's fast path (static cache,
  prompt buckets, compiled decoding);
- ``gen_large_k5``: FLAN-T5-Large-sized small LM, k = 5 sampled rationales per prompt, eager vs fast path;
- ``judge_xxl``: ``score_yes_no`` (P(yes)) over 1,024-token prompts, eager vs compiled;
- ``distill``: the distill stage's own step (:class:`lmcot.training.sft_step.SFTStep`: its collator, loss
  and optimizer) on a T5-Large-sized model at the preset's micro-batch and source/target lengths, eager,
  with gradient checkpointing, and with checkpointing + compile;
- ``refine``: one seq2seq GRPO step at the preset's shapes (:func:`lmcot.training.grpo_seq2seq.grpo_step`:
  rollouts, the XXL-sized judge scoring the preset's rewards through :func:`lmcot.training.rewards.score_batch`,
  loss and backward), policy, reference and judge on one card.

Limits: decoding against the time to read the decoder's weights and KV caches once per step at the card's
HBM bandwidth plus the prefill's FLOPs at peak bf16 (``x_floor``, 1.0 is the limit); judging and training
as MFU; the refinement step against the sum of its parts' limits. Every row carries the peak memory the
card reserved and ``lmcot plan``'s estimate (:mod:`lmcot.planning.memory`) for the same shape.

Budget: the benches run one process each (one cannot starve the next of memory), in priority order; each
gets what is left of ``--budget-s`` as its timeout and one whose expected cost no longer fits is skipped
with a row saying so. Output: one JSON line per figure on stdout (and ``DIR/results.jsonl``), then a
markdown table (``DIR/table.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import (card_name, decode_floor_s, known_model, param_counts, peak_flops,  # noqa: E402
                          prefill_flops, seq2seq_train_flops)

XXL, LARGE = "google/flan-t5-xxl", "google/flan-t5-large"
BENCHES = ("gen_xxl", "judge_xxl", "gen_large_k5", "distill", "refine")
EXPECTED_S = {"gen_xxl": 110, "judge_xxl": 70, "gen_large_k5": 90, "distill": 120, "refine": 120}
"""Expected seconds per bench on an H200 (compile warm-ups of 40-70 s each included): a bench whose
expectation exceeds what is left of the budget is skipped, so the run ends in time."""
WORDS = ["river", "castle", "founded", "album", "director", "born", "capital", "season", "team", "novel"]


# -- helpers ----------------------------------------------------------------------------------------------
def preset(smoke: bool):
    """The config whose shapes are measured: ``paper`` (FLAN-T5 on GPUs), shrunk for the smoke run."""
    from lmcot.config import load_config

    if not smoke:
        return load_config("paper")
    return load_config("paper", ["small.max_input_tokens=64", "large.max_input_tokens=64",
                                 "generation.rationale_max_new_tokens=4", "generation.answer_max_new_tokens=2",
                                 "generation.batch_size=8", "generation.max_batch_tokens=0",
                                 "generation.compile=false", "generation.length_buckets=[32,64]",
                                 "distill.per_device_batch_size=2", "distill.max_source_tokens=48",
                                 "distill.max_target_tokens=8", "refine.num_generations=2"])


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def reset_peak():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory(row: dict, estimate_bytes: int) -> dict:
    """The card's reserved peak (CUDA context excluded) beside ``lmcot plan``'s estimate, in GiB."""
    from lmcot.planning.memory import GIB

    row["plan_gib"] = round(estimate_bytes / GIB, 1)
    if torch.cuda.is_available():
        row["peak_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 1)
        row["plan_over_peak"] = round(estimate_bytes / max(torch.cuda.max_memory_reserved(), 1), 2)
    return row


def shape_of(lm):
    from lmcot.planning.memory import Shape

    return Shape.from_config(lm.model.config, lm.family)


def text_of(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def prompts_of(fitter, count: int, tokens: int, seed: int = 0) -> list[str]:
    """``count`` distinct prompts of at most ``tokens`` tokens as the model receives them (fitted counts)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = text_of(rng, tokens * 2).split()
        lo, hi = 0, len(words)
        while lo < hi:  # the longest prefix that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fitter.count(fitter.format(" ".join(words[:mid]))) <= tokens else (lo, mid - 1)
        out.append(" ".join(words[:lo]))
    return out


def generator(lm, limit: int, gen):
    from lmcot.config import ModelSpec
    from lmcot.models.generation import HFGenerator

    return HFGenerator(ModelSpec(lm.path, max_input_tokens=limit), loaded=lm, config=gen)


def modes_of(gen, smoke: bool, **fast_overrides) -> dict:
    """``eager`` (no static cache, no compile) and the preset's fast path (compile off in the smoke run)."""
    import dataclasses

    eager = dataclasses.replace(gen, static_cache=False, compile=False)
    fast = dataclasses.replace(gen, **fast_overrides)
    return {"eager": eager, ("static" if smoke else "static+compile"): fast}


# -- generation and judging -------------------------------------------------------------------------------
def bench_generate(bench, name, *, prompts, prompt_len, new, n, smoke, eager_rows=None):
    """``HFGenerator.generate`` per mode: a warm-up (the full call where it compiles), then a timed call."""
    from lmcot.planning.memory import generation_bytes
    from lmcot.planning.plan import generator_rows

    cfg = preset(smoke)
    lm = known_model(name, smoke)
    lm.model.generation_config.min_new_tokens = new  # every row decodes ``new`` tokens (random weights stop anywhere)
    lm.model.generation_config.suppress_tokens = [lm.tokenizer.pad_token_id]
    sampling = dict(temperature=0.7, seed=0) if n > 1 else {}
    rows = []
    for label, gen in modes_of(cfg.generation, smoke).items():
        if label == "eager" and eager_rows:
            import dataclasses

            gen = dataclasses.replace(gen, batch_size=eager_rows, max_batch_tokens=0)
        g = generator(lm, prompt_len, gen)
        texts = prompts_of(g.fitter, prompts, prompt_len)
        reset_peak()
        warm_texts = texts if gen.compile or gen.static_cache else texts[: max(1, g.batch_size // n)]
        warm, _ = timed(lambda: g.generate(warm_texts, max_new_tokens=new, n=n, **sampling))
        seconds, out = timed(lambda: g.generate(texts, max_new_tokens=new, n=n, **sampling))
        fitted = max(o.prompt_tokens for o in out)
        batch = generator_rows(gen, gen.batch_size, fitted, new)
        row = {"bench": bench, "mode": label, "model": name, "prompts": prompts, "n": n, "batch_rows": batch,
               "prompt_len": fitted, "new_tokens": new, "seconds": round(seconds, 3), "first_call_s": round(warm, 1),
               "new_tokens_per_s": round(sum(o.completion_tokens for o in out) / seconds, 1)}
        if torch.cuda.is_available():
            row["x_floor"] = round(seconds / decode_floor_s(lm.model, prompts * n, fitted, new), 2)
        rows.append(memory(row, generation_bytes(shape_of(lm), rows=batch, prompt=fitted, new_tokens=new)))
    return rows


def bench_judge(bench, name, *, prompts, prompt_len, smoke):
    """``HFGenerator.score_yes_no`` per mode, with the largest P(yes) difference from eager."""
    from lmcot.planning.memory import generation_bytes

    cfg = preset(smoke)
    lm = known_model(name, smoke)
    rows, reference = [], None
    for label, gen in modes_of(cfg.generation, smoke, batch_size=32 if not smoke else 4).items():
        g = generator(lm, prompt_len, gen)
        texts = prompts_of(g.fitter, prompts, prompt_len)
        reset_peak()
        warm, _ = timed(lambda: g.score_yes_no(texts))
        seconds, scores = timed(lambda: g.score_yes_no(texts))
        reference = reference or scores
        row = {"bench": bench, "mode": label, "model": name, "prompts": prompts, "batch_rows": g.batch_size,
               "prompt_len": prompt_len, "seconds": round(seconds, 3), "first_call_s": round(warm, 1),
               "prompts_per_s": round(prompts / seconds, 2),
               "max_abs_diff_p_yes": round(max(abs(a - b) for a, b in zip(reference, scores)), 6)}
        if torch.cuda.is_available():
            row["mfu"] = round(prefill_flops(lm.model, prompts, prompt_len) / seconds / peak_flops(), 3)
        rows.append(memory(row, generation_bytes(shape_of(lm), rows=min(g.batch_size, prompts), prompt=prompt_len,
                                                 new_tokens=1)))
    return rows


# -- distillation -----------------------------------------------------------------------------------------
def bench_distill(smoke: bool):
    """The distill stage's step (collator, loss, optimizer of :mod:`lmcot.training.sft_step`) at the preset's
    micro-batch, source and target lengths: eager, gradient checkpointing, checkpointing + compile."""
    from lmcot.planning.memory import training_bytes
    from lmcot.training.sft_step import SFTStep

    dc = preset(smoke).distill
    warmups, steps = (1, 1) if smoke else (2, 5)
    batch, source, target = dc.per_device_batch_size, dc.max_source_tokens, dc.max_target_tokens
    rng = random.Random(0)
    variants = {"eager": (False, False), "checkpointing": (True, False)}
    if not smoke:  # compiling a training step on 2 CPU cores takes minutes
        variants["checkpointing+compile"] = (True, True)
    rows = []
    for label, (ckpt, compiled) in variants.items():
        row = {"bench": "distill", "mode": label, "model": LARGE, "batch_rows": batch, "prompt_len": source,
               "target_len": target}
        try:
            reset_peak()
            lm = known_model(LARGE, smoke, dtype=torch.float32)  # fp32 weights under bf16 autocast, as the trainer
            vocab = len(lm.tokenizer)
            data = [{"input_ids": [rng.randrange(2, vocab) for _ in range(source - 1)] + [1],
                     "labels": [rng.randrange(2, vocab) for _ in range(target - 1)] + [1]} for _ in range(batch)]
            step = SFTStep(lm.model, lm.tokenizer, lm.family, learning_rate=dc.learning_rate,
                           bf16=torch.cuda.is_available(), gradient_checkpointing=ckpt, compile=compiled)
            warm, _ = timed(lambda: [step(data) for _ in range(warmups)])
            seconds, losses = timed(lambda: [step(data) for _ in range(steps)])
            row.update(seconds_per_step=round(seconds / steps, 4), first_call_s=round(warm, 1),
                       samples_per_s=round(batch * steps / seconds, 2), loss=round(losses[-1], 4))
            if torch.cuda.is_available():
                row["mfu"] = round(seq2seq_train_flops(lm.model, batch, source, target) * steps / seconds
                                   / peak_flops(), 3)
            memory(row, training_bytes(shape_of(lm), batch=batch, source=source, target=target, zero_stage=0,
                                       world=1, bf16=True, checkpointing=ckpt))
            del step, lm
        except Exception as exc:  # one failed variant must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        rows.append(row)
    return rows


# -- refinement -------------------------------------------------------------------------------------------
def bench_refine(smoke: bool):
    """One seq2seq GRPO step at the preset's shapes: a warm-up step (compiles the judge), then a timed one."""
    from lmcot.planning.memory import generation_bytes, training_bytes
    from lmcot.prompting.prompts import ASPECTS
    from lmcot.prompting.roles import ROLES, rollout_tokens
    from lmcot.training.grpo_seq2seq import PlainEngine, grpo_step
    from lmcot.training.rewards import RewardJudge, reward_plan, score_batch

    cfg = preset(smoke)
    # random models give a flat task reward: a skipped step would time no backward pass
    rc, gen = dataclasses.replace(cfg.refine, skip_flat_steps=False), cfg.generation
    new = rollout_tokens(rc, gen)
    policy = known_model(LARGE, smoke)
    reference = known_model(LARGE, smoke) if rc.beta > 0 else None
    judge_lm = known_model(XXL, smoke)
    policy.model.generation_config.min_new_tokens = new  # full-length rollouts, as a trained policy writes
    small = generator(policy, cfg.small.max_input_tokens, gen)  # the small LM's fitter: prompts as served
    judge_gen = generator(judge_lm, cfg.large.max_input_tokens, gen)
    plan, aspects = reward_plan(rc.reward_weights, rc.aspect_mode, rc.quality_aspects)
    judge = RewardJudge(judge_gen, aspects=aspects, answer_max_new_tokens=ROLES["answer"].reserve(gen))
    rng = random.Random(0)
    limit = cfg.small.max_input_tokens
    rows = []
    for i in range(2 * rc.prompts_per_step):
        question, context = f"Who founded the {WORDS[i % len(WORDS)]}?", text_of(rng, 2 * limit)
        prompt = small.fitter.fit(ROLES["small"].build(question, context), ROLES["small"].reserve(gen)).text
        rows.append({"prompt": prompt, "question": question, "context": context, "answer": "castle"})

    def reward_fn(prompts, completions, columns):
        return score_batch(prompts, completions, plan=plan, aspect_mode=rc.aspect_mode, judge=judge,
                           task_metric=rc.task_metric, **columns)

    engine = PlainEngine(policy.model, rc.learning_rate)  # the model's own dtype: bf16 on the card
    reset_peak()
    step = lambda batch: grpo_step(engine, policy.tokenizer, batch, reward_fn=reward_fn, cfg=rc,  # noqa: E731
                                   max_new_tokens=new, ref_model=reference.model if reference else None,
                                   max_prompt_tokens=limit)
    warm, _ = timed(lambda: step(rows[: rc.prompts_per_step]))
    seconds, m = timed(lambda: step(rows[rc.prompts_per_step:]))
    rollouts, source = int(m["rollouts"]), limit
    row = {"bench": "refine", "mode": "grpo step", "model": f"{LARGE} policy, {XXL} judge", "batch_rows": rollouts,
           "prompt_len": source, "new_tokens": new, "seconds": round(seconds, 3), "first_call_s": round(warm, 1),
           "rollouts_per_s": round(rollouts / seconds, 2), "sample_s": round(m["sample_seconds"], 3),
           "reward_s": round(m["reward_seconds"], 3), "judge_calls": judge.calls, "loss": round(m["loss"], 4)}
    if torch.cuda.is_available():
        judged = rollouts * max(1, len([a for a in aspects if a in ASPECTS]))
        passes = 3 * rc.num_iterations + (reference is not None) + (rc.num_iterations > 1)
        floor = (decode_floor_s(policy.model, rollouts, source, new)
                 + decode_floor_s(judge_lm.model, rollouts, cfg.large.max_input_tokens, gen.answer_max_new_tokens)
                 + prefill_flops(judge_lm.model, judged, cfg.large.max_input_tokens) / peak_flops()
                 + passes / 3 * seq2seq_train_flops(policy.model, rollouts, source, new) / peak_flops())
        row["x_floor"] = round(seconds / floor, 2)
    shape = shape_of(policy)
    estimate = (training_bytes(shape, batch=rollouts, source=source, target=new, zero_stage=0, world=1, bf16=True,
                               checkpointing=False, master_weights=False)
                + shape.params * 2 * (reference is not None)
                + generation_bytes(shape_of(judge_lm), rows=rc.judge_batch_size, prompt=cfg.large.max_input_tokens,
                                   new_tokens=1))
    return [memory(row, estimate)]


# -- driver -----------------------------------------------------------------------------------------------
def run_bench(name: str, smoke: bool) -> list[dict]:
    """One bench in this process: its rows, or one row naming the error (the others go on)."""
    runs = {
        "gen_xxl": lambda: bench_generate("gen_xxl", XXL, prompts=2 if smoke else 32, prompt_len=48 if smoke else 1024,
                                          new=3 if smoke else 128, n=1, smoke=smoke),
        "gen_large_k5": lambda: bench_generate("gen_large_k5", LARGE, prompts=2 if smoke else 32,
                                               prompt_len=48 if smoke else 1024, new=3 if smoke else 128, n=5,
                                               smoke=smoke, eager_rows=5 if smoke else 32),
        "judge_xxl": lambda: bench_judge("judge_xxl", XXL, prompts=4 if smoke else 64, prompt_len=48 if smoke else 1024,
                                         smoke=smoke),
        "distill": lambda: bench_distill(smoke),
        "refine": lambda: bench_refine(smoke),
    }
    try:
        return runs[name]()
    except Exception as exc:
        return [{"bench": name, "error": f"{type(exc).__name__}: {exc}"[:400]}]


def markdown(rows: list[dict]) -> str:
    """The rows as the table docs/benchmarks.md records: each figure beside its limit and the plan's memory."""
    lines = ["| bench | mode | rows | prompt | result | limit | peak / plan GiB | first call s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    units = [("new_tokens_per_s", "new tok/s"), ("prompts_per_s", "prompts/s"), ("samples_per_s", "samples/s"),
             ("rollouts_per_s", "rollouts/s")]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['bench']} | {r.get('mode', '')} | | | {r.get('error') or r['skipped']} | | | |")
            continue
        key, unit = next((k, u) for k, u in units if k in r)
        limit = (f"{r['x_floor']}x floor" if "x_floor" in r else f"MFU {100 * r['mfu']:.1f} %" if "mfu" in r else "-")
        if "max_abs_diff_p_yes" in r:
            limit += f"; P(yes) diff {r['max_abs_diff_p_yes']:.1e}"
        lines.append(f"| {r['bench']} | {r['mode']} | {r['batch_rows']} | {r['prompt_len']} | {r[key]:,} {unit} | "
                     f"{limit} | {r.get('peak_gib', '-')} / {r['plan_gib']} | {r['first_call_s']} |")
    return "\n".join(lines)


def emit(rows: list[dict], out: Path | None) -> None:
    for row in rows:
        print(json.dumps(row), flush=True)
    if out:
        with open(out / "results.jsonl", "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="every bench (the default when --only is not given)")
    parser.add_argument("--only", choices=BENCHES, help="one bench, in this process")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, one process, seconds")
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock limit of the whole run")
    parser.add_argument("--out", type=Path, help="folder for results.jsonl and table.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    if args.only:
        rows = run_bench(args.only, args.smoke)
        emit(rows, None)
        return rows
    head = {"bench": "card", "device": card_name(), "torch": torch.__version__, "budget_s": args.budget_s}
    if torch.cuda.is_available():
        head.update(peak_bf16_tflops=peak_flops() / 1e12, memory_gib=round(
            torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    emit([head], args.out)
    rows = []
    for name in BENCHES:
        left = args.budget_s - (time.perf_counter() - started)
        if args.smoke:  # in-process: seconds on CPU
            got = run_bench(name, smoke=True)
        elif left < EXPECTED_S[name]:
            got = [{"bench": name, "skipped": f"budget: {left:.0f} s left, about {EXPECTED_S[name]} s needed"}]
        else:  # one process each, so the memory of one cannot starve the next
            try:
                done = subprocess.run([sys.executable, __file__, "--only", name], stdout=subprocess.PIPE, text=True,
                                      timeout=left, check=False)
                got = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
                got = got or [{"bench": name, "error": f"exit {done.returncode} without a result"}]
            except subprocess.TimeoutExpired:
                got = [{"bench": name, "error": f"stopped at the budget ({args.budget_s:.0f} s)"}]
        emit(got, args.out)
        rows += got
    table = markdown(rows)
    print(table)
    if args.out:
        (args.out / "table.md").write_text(f"card: {head['device']}\n\n{table}\n")
    print(f"wall: {time.perf_counter() - started:.0f} s", flush=True)
    return rows


if __name__ == "__main__":
    main()
