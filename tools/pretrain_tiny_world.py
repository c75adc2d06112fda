"""Pretrain the tiny world's two T5s from scratch, on CPU, on synthetic worlds the dev sets never use.

Why: lmcot's random tiny models only show plumbing (every accuracy is 0). These two
models make the method visible offline:

- ``large``: a T5 of a few M parameters, instruction-tuned on lmcot's own prompt
  templates (:mod:`lmcot.prompting.prompts`): direct answer, CoT ending in the answer cue, answer
  from a given rationale (gold facts, gold facts + cue, or none), teacher rationale, and
  each judge aspect as yes/no. Rationales are the supporting-fact sentences; judge
  positives are those faithful rationales, negatives one corruption per aspect (wrong
  entity: factuality; unrelated sentences: relevance; shuffled steps: logicality and
  coherence; a contradiction: consistency; broken words: fluency; repeated words:
  naturalness and readability). Last comes the critic phase (``--critic-steps``,
  :func:`critic_pairs`): judge pairs side by side, and answers despite a misleading rationale.
- ``small``: a smaller T5 that has only learned the world's language (span denoising
  and continuation of its paragraphs), so writing rationales is what distillation
  must teach it.

Training data comes from ``tools/make_synthetic_data.py`` worlds of seeds derived from
``--seed`` (never the shipped world's seed, so the shipped dev sets stay unseen: new
names, new facts). Contexts are the gold paragraphs plus a few distractors, fitted to
``--context-tokens`` (the tiny preset's ``data.context_max_tokens``) with lmcot's own
:func:`lmcot.datasets.context.build_context`; prompts are lmcot's own templates, so the model is
trained on exactly what it will be served.

Deterministic from ``--seed`` at a fixed thread count: the learning rate depends on the
step alone, ``--minutes`` only decides where training stops (the steps taken are
recorded), and a rerun with ``--large-steps`` / ``--small-steps`` set to the recorded
numbers reproduces the weights (their sha256 is in ``tiny_world.json``). Plain torch loops, no Ray; run it niced::

    nice -n 19 python tools/pretrain_tiny_world.py --minutes 30 --out lmcot/weights/tiny_world
    python tools/pretrain_tiny_world.py --smoke --out /tmp/tw          # seconds
    python tools/pretrain_tiny_world.py --eval lmcot/weights/tiny_world  # dev EM/F1 through lmcot.inference.method
    python tools/pretrain_tiny_world.py --only large --continue-from lmcot/weights/tiny_world --out DIR \\
        --large-steps 6065 --critic-steps 3000                         # the critic phase alone
    python tools/pretrain_tiny_world.py --continue-from DIR --out DIR2 --rationale-steps 1500 \\
        --rationale-lr 5e-4 --rationale-max-target 192                 # one more rationale phase, longer targets
    python tools/pretrain_tiny_world.py --continue-from DIR --out DIR2 --small-more-steps 12000 \\
        --threads 1                                                    # the small T5, trained longer
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from lmcot.datasets.context import render_paragraph  # noqa: E402
from lmcot.datasets.data import Paragraph, parse_records  # noqa: E402
from lmcot.prompting import prompts  # noqa: E402
from lmcot.tinyworld import seeds  # noqa: E402
from lmcot.tinyworld import synthetic as world_gen  # noqa: E402
from lmcot.tinyworld.corruption import CORRUPTIONS, JUDGE_CORRUPTION, Corruptor  # noqa: E402,F401
from lmcot.tinyworld.pairs import (CRITIC_REPEAT, CRITIC_WARMUP, LARGE_TASK_WEIGHTS, MAX_SOURCE,  # noqa: E402
                                   MAX_TARGET, RATIONALE_TASK_WEIGHTS, READING_TASKS, critic_pairs, large_pairs,
                                   SMALL_RANDOM_COPY, random_copy_pairs,
                                   rationale_pairs, small_line_pairs, tokenize, training_context, weighted)
from lmcot.tinyworld.small_recipes import SMALL_RECIPES  # noqa: E402
from lmcot.tinyworld.training import (SIZES, SMOKE_SIZES, TOKENIZER_WORLDS, build_t5, load_t5, save,  # noqa: E402
                                      train, world_tokenizer)

world_seeds = seeds.pretraining_seeds
"""Pretraining world seeds (:func:`lmcot.tinyworld.seeds.pretraining_seeds`: held-out worlds are out of reach)."""


def pretraining_worlds(seed: int, n: int, questions: int):
    """(world, its train questions of both datasets) for each pretraining world, in seed order."""
    for s in world_seeds(seed, n):
        world, records = world_gen.generate_world(seed=s, train=questions, dev=0)
        yield world, [ex for name, recs in records.items() if recs
                      for ex in parse_records(recs, "hotpotqa" if name.startswith("hotpotqa") else "2wiki",
                                              f"world {s} {name}")]


def next_phase(record: dict, kind: str) -> tuple[str, int]:
    """(name, passes): the name of one more phase of ``kind`` for a model whose ``record`` had ``passes``
    of them (``kind``, then ``kind_2``, ``kind_3``, ...)."""
    passes = sum(name.startswith(kind) for name in record.get("phases", {}))
    return (kind if not passes else f"{kind}_{passes + 1}"), passes


def small_mixture(args, tokenizer, small_raw: list) -> list:
    """The small T5's tokenized pairs of its recipe, repeated by the recipe's task weights."""
    recipe = SMALL_RECIPES[args.small_recipe]
    return weighted(random.Random(args.seed + 6), tokenize(tokenizer, small_raw, recipe.max_target), recipe.task_weights)


def rationale_phase(args) -> dict:
    """``--rationale-steps``: continue the large T5 of ``--continue-from`` on :data:`RATIONALE_TASK_WEIGHTS`.

    Same worlds and contexts as the mixture (seeds from ``--seed``), a fresh data stream (seed + 5, and
    100 more for each rationale phase the model already had, so a second pass sees new contexts),
    targets cut at ``--rationale-max-target``, warmup to ``--rationale-lr``; the small T5 and its record
    are copied as they are."""
    import shutil

    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    src = args.continue_from / "large"
    record = json.loads((src / "lmcot_tiny_world.json").read_text())
    phase_name, passes = next_phase(record, "rationale")
    stream = args.seed + 5 + 100 * passes
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = load_t5(src)
    rng = random.Random(stream)
    pairs = []
    for world, examples in pretraining_worlds(args.seed, args.worlds, args.questions):
        corrupt = Corruptor(world)
        for ex in examples:
            ctx, distractors = training_context(rng, ex, tokenizer, args.context_tokens)
            pairs += rationale_pairs(rng, ex, ctx, distractors, corrupt, world)
    data = weighted(rng, tokenize(tokenizer, pairs, args.rationale_max_target), RATIONALE_TASK_WEIGHTS)
    print(f"{phase_name} phase: {len(data)} pairs from {args.worlds} worlds", flush=True)

    def checkpoint(step):
        save(model, tokenizer, args.out / "large", dict(record, checkpoint_step=step))

    phase = train(model, data, steps=args.rationale_steps, seconds=0, lr=args.rationale_lr,
                  batch_size=args.batch_size, seed=stream, pad_id=tokenizer.pad_token_id,
                  log_every=args.log_every, name=f"large/{phase_name}", warmup=CRITIC_WARMUP, checkpoint=checkpoint,
                  checkpoint_every=args.checkpoint_every)
    phase["max_target_tokens"] = args.rationale_max_target
    rerun = f"{record['rerun']} --rationale-steps {args.rationale_steps} --rationale-lr {args.rationale_lr}"
    if args.rationale_max_target != MAX_TARGET:
        rerun += f" --rationale-max-target {args.rationale_max_target}"
    record = dict(record, phases=dict(record.get("phases", {}), **{phase_name: phase}),
                  rationale_task_weights=RATIONALE_TASK_WEIGHTS, continued_from=record["sha256"], rerun=rerun)
    summary = json.loads((args.continue_from / "tiny_world.json").read_text())
    summary["models"]["large"] = save(model, tokenizer, args.out / "large", record)
    if args.out.resolve() != args.continue_from.resolve():
        shutil.copytree(args.continue_from / "small", args.out / "small", dirs_exist_ok=True)
    summary["training"].update(rationale_steps=args.rationale_steps, rationale_lr=args.rationale_lr,
                               rationale_max_target=args.rationale_max_target)
    (args.out / "tiny_world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def small_more_phase(args) -> dict:
    """``--small-more-steps``: continue the small T5 of ``--continue-from`` for that many more steps.

    The data, batches and learning-rate schedule are those its own run would have gone on with (its
    recipe, rebuilt from ``--seed``; :func:`lmcot.tinyworld.training.train`'s ``first_step``), so a small
    T5 whose loss was still falling is trained longer without repeating its first steps. Refused: another
    recipe, a mid-run checkpoint, another warmup, learning rate or batch size. The record (each pass with its
    first step, learning rate, batch size and threads) and the rerun line name the phase; the large T5 and
    its record are copied as they are."""
    import shutil

    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    src = args.continue_from / "small"
    record = json.loads((src / "lmcot_tiny_world.json").read_text())
    wanted = f"--seed {args.seed} --small-steps "
    if not record.get("rerun", "").startswith(wanted) or f"--small-recipe {args.small_recipe}" not in record["rerun"]:
        raise SystemExit(f"--continue-from {args.continue_from}: its small T5 was trained with "
                         f"{record.get('rerun')!r}; pass its --seed and --small-recipe")
    if "checkpoint_step" in record:
        raise SystemExit(f"--continue-from {args.continue_from}: its small T5 is a checkpoint taken mid-run "
                         f"(step {record['checkpoint_step']}); continue from the folder of a finished run")
    ran = {"warmup": record["train"]["warmup"], **{k: p[k] for p in record.get("phases", {}).values()
                                                   for k in ("lr", "batch_size") if k in p}}
    asked = {"warmup": args.warmup, "lr": args.lr, "batch_size": args.batch_size}
    if any(asked[k] != v for k, v in ran.items()):
        raise SystemExit(f"--continue-from {args.continue_from}: its small T5 ran with {ran}, not {asked}; "
                         "pass those, so the schedule and the batches go on as its run's")
    done = record["train"]["steps"] + sum(p["steps"] for k, p in record.get("phases", {}).items() if k.startswith("more"))
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = load_t5(src)
    _, small_raw, _, _ = build_pairs(args, tokenizer)  # the large pairs too: they draw the contexts' randomness
    data = small_mixture(args, tokenizer, small_raw) + random_copy_pairs(random.Random(args.seed + 2), tokenizer, 20_000)[:SMALL_RANDOM_COPY]
    if len(data) != record["pairs"]:
        raise SystemExit(f"--continue-from {args.continue_from}: rebuilt {len(data)} pairs, its small T5 trained on "
                         f"{record['pairs']}; pass the --worlds and --questions it was trained with")
    phase_name, _ = next_phase(record, "more")
    print(f"small/{phase_name}: {args.small_more_steps} steps after step {done}, {len(data)} pairs", flush=True)

    def checkpoint(step):
        save(model, tokenizer, args.out / "small", dict(record, checkpoint_step=done + step))

    phase = train(model, data, steps=args.small_more_steps, seconds=0, lr=args.lr, batch_size=args.batch_size,
                  seed=args.seed, pad_id=tokenizer.pad_token_id, log_every=args.log_every, name=f"small/{phase_name}",
                  warmup=args.warmup, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every, first_step=done)
    phase.update(first_step=done, lr=args.lr, batch_size=args.batch_size, threads=args.threads)
    record = dict(record, phases=dict(record.get("phases", {}), **{phase_name: phase}),
                  continued_from=record["sha256"], rerun=f"{record['rerun']} --small-more-steps {args.small_more_steps}")
    summary = json.loads((args.continue_from / "tiny_world.json").read_text())
    summary["models"]["small"] = save(model, tokenizer, args.out / "small", record)
    if args.out.resolve() != args.continue_from.resolve():
        shutil.copytree(args.continue_from / "large", args.out / "large", dirs_exist_ok=True)
    (args.out / "tiny_world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_pairs(args, tokenizer) -> tuple[list, list, list, dict]:
    """All training pairs of both models (the large one's mixture, the small one's, the critic phase's),
    and a record of where they came from."""
    rng, small_rng = random.Random(args.seed), random.Random(args.seed + 3)  # either model's data alone can change
    critic_rng = random.Random(args.seed + 4)  # a stream of its own: the mixture's data is the same with or without it
    worlds = world_seeds(args.seed, args.worlds)
    large, small, critic = [], [], []
    recipe = SMALL_RECIPES[args.small_recipe]
    for world, examples in pretraining_worlds(args.seed, args.worlds, args.questions):
        corrupt = Corruptor(world)
        for ex in examples:
            ctx, distractors = training_context(rng, ex, tokenizer, args.context_tokens)
            large += large_pairs(rng, ex, ctx, distractors, corrupt)
            critic += critic_pairs(critic_rng, ex, ctx, distractors, corrupt)
            small += recipe.question_pairs(small_rng, ex, ctx, world)
        for title in world.titles:
            small += small_line_pairs(small_rng, render_paragraph(Paragraph(title, tuple(world.paragraphs[title]))))
    return large, small, critic, {"world_seeds": worlds, "questions_per_dataset_and_world": args.questions,
                          "shipped_world_seed_excluded": seeds.SHIPPED_DEV}


def continued_record(args) -> dict:
    """The record of ``--continue-from``'s large T5, checked to be the run these arguments ask for up
    to the mixture's end (same seed, phases and steps; data and init are fixed by them), so that only
    the critic phase is left to train and the result is the one a full run gives."""
    path = args.continue_from / "large" / "lmcot_tiny_world.json"
    if not path.is_file():
        raise SystemExit(f"--continue-from {args.continue_from}: no {path}; give a folder this tool wrote")
    record = json.loads(path.read_text())
    wanted = (f"--seed {args.seed} --large-steps {args.large_steps} --copy-steps {args.copy_steps} "
              f"--reading-steps {args.reading_steps}")
    if not record.get("rerun", "").startswith(wanted) or "critic" in record.get("phases", {}):
        raise SystemExit(f"--continue-from {args.continue_from}: its large T5 was trained with "
                         f"{record.get('rerun')!r}, not {wanted!r} without a critic phase; pass those arguments")
    return record


def pretrain(args) -> dict:
    torch.set_num_threads(args.threads)
    tokenizer = world_tokenizer(args.seed, args.worlds)
    t0 = time.monotonic()
    large_raw, small_raw, critic_raw, provenance = build_pairs(args, tokenizer)
    large = tokenize(tokenizer, large_raw)
    recipe = SMALL_RECIPES[args.small_recipe]
    small = small_mixture(args, tokenizer, small_raw)
    critic = [x for x in (tokenize(tokenizer, critic_raw) if args.critic_steps else [])  # none unless trained on
              for _ in range(CRITIC_REPEAT["judge" if x[2].startswith("judge") else x[2]])]
    weights = LARGE_TASK_WEIGHTS
    # task mixture: repeat/subsample each task's pairs by its weight (deterministic)
    mixed = weighted(random.Random(args.seed + 1), large, weights)
    print(f"data: {len(mixed)} large pairs, {len(small)} small pairs from worlds {provenance['world_seeds']} "
          f"({time.monotonic() - t0:.0f}s)", flush=True)
    sizes = SMOKE_SIZES if args.smoke else dict(SIZES, small=dict(SIZES["small"], num_layers=args.small_layers,
                                                                  d_model=args.small_d_model,
                                                                  d_ff=2 * args.small_d_model))
    budget = args.minutes * 60
    provenance["tokenizer_world_seeds"] = world_seeds(args.seed, args.worlds + TOKENIZER_WORLDS)[args.worlds:]
    summary = {"training": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                            if k not in ("out", "eval")}, "data": provenance,
               "task_weights": weights, "small_recipe": args.small_recipe, "small_task_weights": recipe.task_weights,
               "sizes": sizes, "max_source_tokens": MAX_SOURCE,
               "max_target_tokens": MAX_TARGET, "small_max_target_tokens": recipe.max_target,
               "torch": torch.__version__, "models": {}}
    # the small T5 first: it is quick, so a long run stopped early still leaves both models
    jobs = (("small", small, args.small_steps, args.small_share, args.lr),
            ("large", mixed, args.large_steps, 1 - args.small_share, args.lr))
    for name, data, steps, share, lr in jobs:
        if args.only and name != args.only:  # keep the other model's folder and record as they are
            record = args.out / name / "lmcot_tiny_world.json"
            summary["models"][name] = json.loads(record.read_text()) if record.is_file() else {}
            continue
        if args.only:
            share = 1.0
        reads = name == "large"
        continued = continued_record(args) if reads and args.continue_from else None
        model = build_t5(sizes[name], tokenizer, args.seed) if continued is None else load_t5(args.continue_from / name)

        def checkpoint(step, name=name, model=model):
            save(model, tokenizer, args.out / name, {"name": f"tiny-world-{name}", "checkpoint_step": step})

        common = dict(lr=lr, batch_size=args.batch_size, seed=args.seed, pad_id=tokenizer.pad_token_id,
                      log_every=args.log_every, warmup=args.warmup, checkpoint=checkpoint,
                      checkpoint_every=args.checkpoint_every)
        seconds, phases = budget * share, {}
        # fixed step counts: a run cut by --minutes stays reproducible. Both models copy first (a
        # distilled small T5 that cannot copy writes rationales with invented names); only the
        # large one then learns to read and answer.
        copying = random_copy_pairs(random.Random(args.seed + 2), tokenizer, 20_000)
        for phase, phase_steps in (("copy", args.copy_steps), ("reading", args.reading_steps if reads else 0)):
            if phase_steps and continued is None:
                phase_data = (copying if phase == "copy"
                              else [x for x in data if x[2] in READING_TASKS] + copying[:5_000])
                phases[phase] = train(model, phase_data, steps=phase_steps, seconds=0, name=f"{name}/{phase}",
                                      **common)
                seconds = max(1.0, seconds - phases[phase]["seconds"]) if seconds else 0
        if continued is None:  # the small T5 keeps rehearsing random copies beside its world text
            data = data if reads else data + copying[:SMALL_RANDOM_COPY]
            result = train(model, data, steps=steps, seconds=seconds, name=name, **common)
        else:  # the phases up to the mixture's end are the checkpoint's, step for step
            result, phases = continued["train"], dict(continued.get("phases", {}))
        record = {"name": f"tiny-world-{name}", "seed": args.seed, "size": sizes[name], "train": result,
                  "pairs": len(data), "rerun": f"--seed {args.seed} --{name}-steps {result['steps']}"}
        if not reads:
            record["rerun"] += f" --small-recipe {args.small_recipe}"
        if phases:
            record.update(phases=phases, rerun=f"{record['rerun']} --copy-steps {args.copy_steps}"
                                               + (f" --reading-steps {args.reading_steps}" if reads else ""))
        if reads and args.critic_steps:
            # last, from the mixture's weights: the whole mixture again (so answering is kept) plus the
            # critic pairs, at a lower peak learning rate than the mixture's
            phases["critic"] = train(model, data + critic, steps=args.critic_steps, seconds=0,
                                     name=f"{name}/critic", **dict(common, lr=args.critic_lr, warmup=CRITIC_WARMUP))
            if continued is not None:
                record["continued_from"] = continued["sha256"]
            record.update(phases=phases, critic_pairs=len(critic),
                          rerun=f"{record['rerun']} --critic-steps {args.critic_steps} --critic-lr {args.critic_lr}")
        summary["models"][name] = save(model, tokenizer, args.out / name, dict(record, **provenance))
    (args.out / "tiny_world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------- evaluation
def evaluate_dir(folder: Path, limit: int = 0, context_tokens: int = 256, judge_limit: int = 20,
                 world_seed: int | None = None) -> dict:
    """Dev EM/F1 of ``folder/large`` on the shipped dev sets (``ranked`` contexts, as the tiny preset),
    through lmcot's HFGenerator and lmcot.inference.method: standard, CoT, and the gold- and empty-rationale references."""
    from lmcot.inference import method
    from lmcot.config import GenerationConfig, ModelSpec
    from lmcot.datasets.data import load_json_file
    from lmcot.evaluation.evaluator import prepare_questions
    from lmcot.models.generation import HFGenerator
    from lmcot.scoring.metrics import answer_metrics, load_aliases
    from lmcot.evaluation.statistics import fmt_interval, paired
    from lmcot.tinyworld import seeds

    import tempfile

    large = HFGenerator(ModelSpec(str(folder / "large"), device="cpu"))
    gen = GenerationConfig(batch_size=16, rationale_max_new_tokens=80, answer_max_new_tokens=12)
    data_dir = world_gen.OUT_DIR
    if world_seed is not None:  # a world no model has seen, generated as the shipped one (only the seed differs)
        data_dir = Path(tempfile.mkdtemp(prefix=f"tiny-world-{world_seed}-"))
        shape = seeds.EVAL_WORLD_SHAPE if world_seed in seeds.TUNING + seeds.EVALUATION + seeds.SPENT else {}
        for name, text in world_gen.generate(seed=world_seed, rationales=bool(shape), **shape).items():
            (data_dir / name).write_text(text, encoding="utf-8")
    world, _ = world_gen.generate_world(**({} if world_seed is None else dict(seed=world_seed, **shape)))
    aliases = load_aliases(data_dir / "2wiki_synthetic_id_aliases.json")
    out = {}
    for ds, fmt in (("hotpotqa", "hotpotqa"), ("2wiki", "2wiki")):
        examples = load_json_file(data_dir / f"{ds}_synthetic_dev.json", fmt)[: limit or None]
        qs = prepare_questions(examples, mode="ranked", tokenizer=large.tokenizer, max_tokens=context_tokens)
        runs = {"standard": method.standard(qs, large, gen), "cot": method.cot(qs, large, gen),
                "gold_rationale": method.gold_rationale(qs, large, gen),
                "empty_rationale": method.empty_rationale(qs, large, gen)}
        per_q = {}
        for row, results in runs.items():
            scores = [answer_metrics(r.answer, [e.answer] + aliases.get(e.answer_id, [])) for e, r in
                      zip(examples, results)]
            per_q[row] = {e.id: s["f1"] for e, s in zip(examples, scores)}
            out[f"{ds}/{row}"] = {k: round(100 * sum(s[k] for s in scores) / len(scores), 1) for k in ("em", "f1")}
            print(f"{ds:9s} {row:16s} EM {out[f'{ds}/{row}']['em']:5.1f}  F1 {out[f'{ds}/{row}']['f1']:5.1f}   "
                  f"e.g. {results[0].answer!r} (gold {examples[0].answer!r})", flush=True)
        for a, b in (("empty_rationale", "gold_rationale"), ("standard", "gold_rationale"), ("standard", "cot")):
            pr = paired(per_q[a], per_q[b])
            out[f"{ds}/{b}-{a}"] = pr.as_dict()
            print(f"{ds:9s} {b} - {a}: {fmt_interval(pr.delta, pr.low, pr.high)} F1, {pr.wins} wins / "
                  f"{pr.losses} losses, {pr.verdict}", flush=True)
        out.update(judge_separation(large, world, examples[:judge_limit], qs, ds))
    return out


def judge_prompts(corrupt: Corruptor, rng: random.Random, aspect: str, examples, questions) -> tuple[list, list]:
    """The judge's prompts on ``aspect`` for each question: its gold evidence ("yes"), and the same
    evidence with the corruption that violates the aspect ("no")."""
    good, bad = [], []
    for ex, q in zip(examples, questions):
        distract = [s for p in ex.paragraphs if p.title not in ex.gold_titles for s in p.sentences]
        good.append(prompts.judge_prompt(aspect, q.question, q.context, ex.evidence))
        bad.append(prompts.judge_prompt(aspect, q.question, q.context, corrupt(
            JUDGE_CORRUPTION[aspect], rng, ex.evidence, ex.answer, distract, distinct=True)))
    return good, bad


def judge_separation(large, world, examples, questions, ds: str) -> dict:
    """Mean P(yes) of the judge on each aspect: gold rationale vs that aspect's corruption."""
    corrupt, rng = Corruptor(world), random.Random(0)
    out = {}
    for aspect in prompts.ASPECTS:
        good, bad = judge_prompts(corrupt, rng, aspect, examples, questions)
        p_good, p_bad = large.score_yes_no(good), large.score_yes_no(bad)
        out[f"{ds}/judge/{aspect}"] = {"faithful": round(sum(p_good) / len(p_good), 3),
                                       "corrupted": round(sum(p_bad) / len(p_bad), 3)}
        print(f"{ds:9s} judge {aspect:12s} P(yes) faithful {out[f'{ds}/judge/{aspect}']['faithful']:.3f}  "
              f"corrupted ({JUDGE_CORRUPTION[aspect]}) {out[f'{ds}/judge/{aspect}']['corrupted']:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "lmcot" / "weights" / "tiny_world", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the worlds, the data order and the init")
    p.add_argument("--worlds", type=int, default=400, help="training worlds (seeds derived from --seed): many, each seen little")
    p.add_argument("--questions", type=int, default=10, help="train questions per dataset and world")
    p.add_argument("--context-tokens", type=int, default=256, help="context budget (the tiny preset's)")
    p.add_argument("--minutes", type=float, default=0, help="time budget for both models (0: use the step counts)")
    p.add_argument("--small-share", type=float, default=0.06, help="share of --minutes for the small T5")
    p.add_argument("--large-steps", type=int, default=20000, help="steps of the large T5 (an upper bound with --minutes)")
    p.add_argument("--small-steps", type=int, default=5000, help="steps of the small T5 (likewise)")
    p.add_argument("--small-layers", type=int, default=SIZES["small"]["num_layers"],
                   help="encoder (and decoder) layers of the small T5")
    p.add_argument("--small-d-model", type=int, default=SIZES["small"]["d_model"],
                   help="width of the small T5 (its feed-forward is twice that)")
    p.add_argument("--small-recipe", choices=sorted(SMALL_RECIPES), default="reasoned",
                   help="what the small T5 learns from each question (lmcot/tinyworld/small_recipes.py); "
                        "the default is the shipped weights' recipe")
    p.add_argument("--copy-steps", type=int, default=3000,
                   help="first steps of each T5: copying random token sequences")
    p.add_argument("--reading-steps", type=int, default=2000,
                   help="steps of the large T5 on READING_TASKS alone before the whole mixture")
    p.add_argument("--critic-steps", type=int, default=0,
                   help="steps of the large T5 after the mixture: the mixture plus critic_pairs")
    p.add_argument("--critic-lr", type=float, default=1e-3, help="peak learning rate of the critic phase")
    p.add_argument("--rationale-steps", type=int, default=0,
                   help="with --continue-from: continue its large T5 on the rationale phase (RATIONALE_TASK_WEIGHTS)")
    p.add_argument("--rationale-lr", type=float, default=1e-3, help="peak learning rate of the rationale phase")
    p.add_argument("--rationale-max-target", type=int, default=MAX_TARGET,
                   help="target tokens of the rationale phase's pairs (a longer chain of thought is cut there)")
    p.add_argument("--small-more-steps", type=int, default=0,
                   help="with --continue-from: train its small T5 this many more steps, as its run would have gone on")
    p.add_argument("--continue-from", type=Path, default=None, metavar="DIR",
                   help="with --only large: start from DIR/large, trained with the same arguments up to the "
                        "mixture's end, and train only the critic phase; with --rationale-steps: continue "
                        "DIR/large on one more rationale phase; with --small-more-steps: train DIR/small longer")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=400, help="linear warmup steps, then inverse-square-root decay")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="save the model every N steps (0: only at the end)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (results are exact per thread count)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--only", choices=("large", "small"), default=None,
                   help="train only this model (all of --minutes), keeping the other one in --out as it is")
    p.add_argument("--smoke", action="store_true", help="seconds: one tiny world, tiny models, a few steps")
    p.add_argument("--eval", type=Path, default=None, metavar="DIR", help="evaluate DIR/large on the dev sets")
    p.add_argument("--eval-limit", type=int, default=0, help="questions per dev set (0: all)")
    p.add_argument("--eval-world", type=int, default=None, metavar="SEED",
                   help="with --eval: the dev split of the world of SEED instead of the shipped dev sets")
    args = p.parse_args(argv)
    if args.eval is not None:
        if args.eval_world is not None and seeds.purpose(args.eval_world) in ("evaluation", "spent evaluation"):
            p.error(f"--eval-world {args.eval_world} is reserved ({seeds.purpose(args.eval_world)}): probe the "
                    f"models on a tuning world ({', '.join(map(str, seeds.TUNING))}) or an unassigned one, never on "
                    "the worlds the report is measured on")
        torch.set_num_threads(args.threads)
        result = evaluate_dir(args.eval, args.eval_limit, args.context_tokens, world_seed=args.eval_world)
        name = "dev_eval.json" if args.eval_world is None else f"world_{args.eval_world}_eval.json"
        (args.eval / name).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if args.smoke:
        args.worlds, args.questions, args.large_steps, args.small_steps, args.minutes = 1, 4, 2, 2, 0
        args.copy_steps = args.reading_steps = 2
        args.critic_steps = min(args.critic_steps, 2)
        args.log_every, args.batch_size = 1, 4
    continuations = (("--rationale-steps", args.rationale_steps, "large", rationale_phase),
                     ("--small-more-steps", args.small_more_steps, "small", small_more_phase))
    if args.rationale_steps and args.small_more_steps:
        raise SystemExit("--rationale-steps and --small-more-steps continue one model each: run them one at a time")
    for flag, steps, name, phase in continuations:
        if steps:
            if args.continue_from is None:
                raise SystemExit(f"{flag} continues a trained {name} T5: pass --continue-from DIR")
            print(json.dumps(phase(args)["models"][name]["phases"]))
            return 0
    summary = pretrain(args)
    print(json.dumps({k: v.get("train") for k, v in summary["models"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
