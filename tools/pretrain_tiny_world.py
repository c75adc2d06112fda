"""Pretrain the tiny world's two T5s from scratch, on CPU, on synthetic worlds the dev sets never use.

Why: lmcot's random tiny models only show plumbing (every accuracy is 0). These two
models make the method visible offline (issue 13):

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

    nice -n 19 python tools/pretrain_tiny_world.py --minutes 30 --out lmcot/tiny_world
    python tools/pretrain_tiny_world.py --smoke --out /tmp/tw          # seconds
    python tools/pretrain_tiny_world.py --eval lmcot/tiny_world        # dev EM/F1 through lmcot.inference.method
    python tools/pretrain_tiny_world.py --only large --continue-from lmcot/tiny_world --out DIR \\
        --large-steps 6065 --critic-steps 3000                         # the critic phase alone
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import make_synthetic_data as world_gen  # noqa: E402  (a sibling tool, not a package)
import torch  # noqa: E402

from lmcot.prompting import prompts  # noqa: E402
from lmcot.datasets.context import build_context, render_paragraph  # noqa: E402
from lmcot.datasets.data import Example, Paragraph, parse_records  # noqa: E402

SIZES = {
    "large": dict(d_model=128, d_ff=256, num_layers=3, num_heads=4),
    "small": dict(d_model=96, d_ff=192, num_layers=2, num_heads=4),
}
SMOKE_SIZES = {"large": dict(d_model=32, d_ff=64, num_layers=1, num_heads=2),
               "small": dict(d_model=16, d_ff=32, num_layers=1, num_heads=2)}
LARGE_TASK_WEIGHTS = {"copy": 1, "answer_gold_short": 2, "answer_cue_short": 1,
                      "standard": 2, "cot": 1, "teacher": 0.5, "answer_gold": 1.5, "answer_cue": 0.5,
                      "answer_empty": 0.5, "judge_yes": 1, "judge_no": 1}
"""Pairs per question and task. ``copy`` (repeat a paragraph) and the ``_short`` tasks (answer from the
evidence with no context: ~90-token sources) are short, so most steps are cheap, and they teach what the
long tasks need first: to copy names from the input (a first run without them never learned to; its
answers ignored even an explicit ``So the answer is: X.``)."""
READING_TASKS = ("copy", "answer_gold_short", "answer_cue_short")
"""The large T5's first phase (``--reading-steps``): short pairs whose targets are in the source,
on worlds each seen for a few questions only, so the names can only be copied, never recalled.
Runs that began with the whole mixture learned the worlds by heart instead and never copied."""
CORRUPTIONS = {  # corruption -> the judge aspects it violates
    "wrong_entity": ("factuality",), "unrelated": ("relevance",), "shuffled": ("logicality", "coherence"),
    "contradiction": ("consistency",), "broken": ("fluency", "naturalness", "readability"),
    "repeated": ("naturalness", "readability"),
}
JUDGE_CORRUPTION = {aspect: kind for kind, aspects in CORRUPTIONS.items() for aspect in aspects}
"""The corruption each aspect is judged against (the last one listed that violates it)."""
CRITIC_REPEAT = {"judge": 6, "answer_misled": 2}
CRITIC_WARMUP = 100
"""Per pass over the mixture (12 pairs a question), the critic phase sees each judge pair 6 times
and each misled answer twice (26 a question: 2/3 of its pairs), and warms up over 100 steps to
``--critic-lr``. At 44 % judge pairs the judge had barely moved after 1,500 steps; a probe at 2/3
separated faithful from corrupted rationales on 5 aspects of 8 in 1,200."""
JUDGE_ASPECT_WEIGHTS = {"factuality": 3, "consistency": 2}
"""How often each aspect is drawn for the critic's judge pairs (others: 1). A wrong entity (and a
contradiction) is the corruption only the context reveals: the probes learned it last or not at all."""
MAX_SOURCE, MAX_TARGET = 512, 96
TOKENIZER_WORLDS = 24
"""Worlds whose text the tokenizer learns from (none of them trained on, none the shipped one)."""


# ----------------------------------------------------------------------------- data
RESERVED_WORLDS = {world_gen.SEED: "the shipped dev sets", 101: "the tiny_world preset's train split",
                   777: "the unseen-world test"}
"""Worlds no model is pretrained on (see ``docs/design.md``, Tiny world: three kinds of world, never mixed)."""


def world_seeds(seed: int, n: int) -> list[int]:
    """``n`` world seeds derived from ``seed``, never a reserved world's."""
    out, i = [], 0
    while len(out) < n:
        s = seed * 100_000 + 1 + i
        i += 1
        if s not in RESERVED_WORLDS:
            out.append(s)
    return out


def with_conclusion(rationale: str, answer: str) -> str:
    return f"{rationale} {prompts.ANSWER_CUE} {answer}.".strip()


def training_context(rng: random.Random, ex: Example, tokenizer, max_tokens: int) -> tuple[str, list[str]]:
    """Gold paragraphs plus 0-2 distractors, shuffled and fitted; every gold title survives the cut.

    Few distractors keep the sequences short: on a shared 2-core machine the step count, not
    the data, is what limits learning."""
    gold = set(ex.gold_titles)
    distract = [p for p in ex.paragraphs if p.title not in gold]
    rng.shuffle(distract)
    for k in range(min(rng.choice((0, 0, 1, 2)), len(distract)), -1, -1):
        paras = [p for p in ex.paragraphs if p.title in gold] + distract[:k]
        rng.shuffle(paras)
        ctx = build_context(dataclasses.replace(ex, paragraphs=tuple(paras)), tokenizer=tokenizer,
                            max_tokens=max_tokens)
        if all(f"{t}:" in ctx for t in gold):
            return ctx, [s for p in distract[:k] for s in p.sentences]
    return ctx, []


class Corruptor:
    """Turns a faithful rationale into one that violates given judge aspects."""

    def __init__(self, world):
        kinds = {"person": world.people, "city": world.cities, "country": world.countries, "film": world.films,
                 "company": world.companies, "band": world.bands}
        self.kind_of = {e.name: k for k, es in kinds.items() for e in es}
        self.by_kind = {k: [e.name for e in es] for k, es in kinds.items()}
        self.sentences = [s for sents in world.paragraphs.values() for s in sents]

    def wrong_entity(self, rng, text: str, avoid: str = "") -> str:
        names = sorted((n for n in self.kind_of if n in text and n != avoid), key=len, reverse=True)
        if names:
            name = rng.choice(names[:4])
            other = rng.choice([n for n in self.by_kind[self.kind_of[name]] if n != name])
            return text.replace(name, other)
        words = text.split()
        years = [i for i, w in enumerate(words) if w.strip(".,)").isdigit()]
        if years:
            i = rng.choice(years)
            words[i] = words[i].replace(words[i].strip(".,)"), str(int(words[i].strip(".,)")) + rng.randint(1, 30)))
        return " ".join(words)

    def __call__(self, kind: str, rng: random.Random, rationale: str, answer: str, distractors: list[str],
                 conclude: bool = False, distinct: bool = False) -> str:
        """The corrupted rationale; with ``conclude`` it ends in the answer cue, as the faithful one
        it stands against does (else "has a conclusion" alone would tell the two apart).

        With ``distinct``, a corruption that left the rationale as it was (a one-step rationale has
        no order to shuffle) swaps the halves of its words instead, so a "no" never reads exactly
        like its "yes". The mixture's judge pairs were built without it, and stay so."""
        bad = self._corrupt(kind, rng, rationale, answer, distractors, conclude)
        bad = with_conclusion(bad, answer) if conclude and prompts.ANSWER_CUE not in bad else bad
        if distinct and bad == (with_conclusion(rationale, answer) if conclude else rationale):
            words = bad.split()
            bad = " ".join(words[len(words) // 2:] + words[:len(words) // 2])
        return bad

    def _corrupt(self, kind, rng, rationale, answer, distractors, conclude) -> str:
        sents = [s for s in rationale.replace(". ", ".\n").splitlines() if s.strip()]
        if kind == "wrong_entity":
            return self.wrong_entity(rng, rationale)
        if kind == "unrelated":
            pool = distractors or self.sentences
            return " ".join(rng.sample(pool, min(len(pool), max(1, len(sents) - 1))))
        if kind == "shuffled":
            steps = sents + ([f"{prompts.ANSWER_CUE} {answer}."] if conclude else [])
            return " ".join(reversed(steps))
        if kind == "contradiction":
            if conclude and rng.random() < 0.5:
                return with_conclusion(rationale, self.wrong_entity(rng, answer) if answer not in ("yes", "no")
                                       else {"yes": "no", "no": "yes"}[answer])
            s = rng.choice(sents)
            return f"{rationale} {self.wrong_entity(rng, s)}"
        words = rationale.split()
        if kind == "broken":
            out = []
            for w in words:
                r = rng.random()
                if r < 0.25:
                    continue
                out.append(w[: max(1, len(w) // 2)] if r < 0.45 else w)
            rng.shuffle(out) if rng.random() < 0.3 else None
            return " ".join(out)
        if kind == "repeated":
            if rng.random() < 0.5:
                return " ".join(rationale.split()[:6] * 3) + " " + rationale
            return " ".join(w for w in words for _ in range(3 if rng.random() < 0.35 else 1))
        raise ValueError(kind)


def large_pairs(rng: random.Random, ex: Example, ctx: str, distractors: list[str], corrupt: Corruptor):
    """(task, source, target) for every task of the large T5 on one question."""
    q, a = ex.question, ex.answer
    rat = ex.evidence
    concl = with_conclusion(rat, a)
    out = [("standard", prompts.standard_prompt(q, ctx), a), ("cot", prompts.cot_prompt(q, ctx), concl),
           ("teacher", prompts.teacher_rationale_prompt(q, ctx), concl),
           ("answer_gold", prompts.answer_from_rationale_prompt(q, ctx, rat), a),
           ("answer_cue", prompts.answer_from_rationale_prompt(q, ctx, concl), a),
           ("answer_empty", prompts.answer_from_rationale_prompt(q, ctx, ""), a)]
    line = render_paragraph(rng.choice([p for p in ex.paragraphs if p.title in ex.gold_titles]))
    out += [("copy", line, line), ("answer_gold_short", prompts.answer_from_rationale_prompt(q, "", rat), a),
            ("answer_cue_short", prompts.answer_from_rationale_prompt(q, "", concl), a)]
    aspect = rng.choice(list(prompts.ASPECTS))
    conclude = rng.random() < 0.5  # positives and negatives alike: half end in the answer cue
    out.append(("judge_yes", prompts.judge_prompt(aspect, q, ctx, concl if conclude else rat), "yes"))
    kind = rng.choice(list(CORRUPTIONS))
    bad = corrupt(kind, rng, rat, a, distractors, conclude=conclude)
    out.append(("judge_no", prompts.judge_prompt(rng.choice(CORRUPTIONS[kind]), q, ctx, bad), "no"))
    return [(t, str(s), tgt) for t, s, tgt in out]


def critic_pairs(rng: random.Random, ex: Example, ctx: str, distractors: list[str], corrupt: Corruptor,
                 aspects: int = 2):
    """The critic phase's pairs for one question: judging rationales, and answering despite a wrong one.

    - For ``aspects`` aspects, the faithful rationale ("yes") and the same rationale with that aspect's
      corruption ("no"), both ending in the answer cue or neither. Side by side on one question and one
      aspect, only the corruption tells the two apart. The mixture's unpaired judge pairs (a random
      aspect for the "yes", another for the "no") taught nothing in 6,065 steps: P(yes) stayed the same
      for faithful and corrupted rationales.
    - ``answer_misled``: the evidence with names swapped for others of the world, and the right answer,
      which only the context holds. A large T5 trained on faithful rationales alone copied whatever
      name a rationale gave: a small T5's rationale with the right frame and a wrong name cost more
      F1 than no rationale at all."""
    misled = corrupt.wrong_entity(rng, ex.evidence)
    out = [("answer_misled", str(prompts.answer_from_rationale_prompt(ex.question, ctx, misled)), ex.answer)]
    names, weights = list(prompts.ASPECTS), [JUDGE_ASPECT_WEIGHTS.get(a, 1) for a in prompts.ASPECTS]
    chosen: list[str] = []
    while len(chosen) < aspects:
        aspect = rng.choices(names, weights)[0]
        chosen += [aspect] if aspect not in chosen else []
    for aspect in chosen:
        conclude = rng.random() < 0.5
        good = with_conclusion(ex.evidence, ex.answer) if conclude else ex.evidence
        bad = corrupt(JUDGE_CORRUPTION[aspect], rng, ex.evidence, ex.answer, distractors, conclude=conclude,
                      distinct=True)
        out += [("judge_pair_yes", str(prompts.judge_prompt(aspect, ex.question, ctx, good)), "yes"),
                ("judge_pair_no", str(prompts.judge_prompt(aspect, ex.question, ctx, bad)), "no")]
    return out


RATIONALE_TASK_WEIGHTS = {"standard": 1, "cot": 1, "teacher": 1, "answer_reasoned": 2, "answer_gold": 1,
                          "answer_cue": 0.5, "answer_reasoned_short": 1, "copy": 0.5, "judge_pair_yes": 1,
                          "judge_pair_no": 1, "answer_misled": 0.5}
"""Pairs per question and task of the rationale phase (``--rationale-steps``). No ``answer_empty`` (it
taught the large T5 to answer without a rationale as well as with one) and a quarter of the critic
phase's ``answer_misled`` (enough to check a rationale's names against the context, not to ignore it);
CoT, teacher and answer-from-rationale targets state the comparison step
(:func:`lmcot.tinyworld.reasoning.reasoned_rationale`)."""


def rationale_pairs(rng: random.Random, ex: Example, ctx: str, distractors: list[str], corrupt: Corruptor,
                    world) -> list[tuple[str, str, str]]:
    """The rationale phase's pairs for one question: reasoning written out, rationales that matter."""
    from lmcot.tinyworld.reasoning import reasoned_rationale

    q, a = ex.question, ex.answer
    reasoned = reasoned_rationale(world, ex)
    concl = with_conclusion(reasoned, a)
    line = render_paragraph(rng.choice([p for p in ex.paragraphs if p.title in ex.gold_titles]))
    out = [("standard", prompts.standard_prompt(q, ctx), a), ("cot", prompts.cot_prompt(q, ctx), concl),
           ("teacher", prompts.teacher_rationale_prompt(q, ctx), concl),
           ("answer_reasoned", prompts.answer_from_rationale_prompt(q, ctx, reasoned), a),
           ("answer_gold", prompts.answer_from_rationale_prompt(q, ctx, ex.evidence), a),
           ("answer_cue", prompts.answer_from_rationale_prompt(q, ctx, concl), a),
           ("answer_reasoned_short", prompts.answer_from_rationale_prompt(q, "", reasoned), a),
           ("copy", line, line)]
    out = [(t, str(s), tgt) for t, s, tgt in out]
    return out + critic_pairs(rng, ex, ctx, distractors, corrupt)


def weighted(rng: random.Random, pairs: list, weights: dict) -> list:
    """Each task's pairs repeated (whole part of its weight) and subsampled (fractional part)."""
    mixed = []
    for task, w in weights.items():
        items = [x for x in pairs if x[2] == task]
        mixed += items * int(w) + rng.sample(items, int(len(items) * (w - int(w))))
    return mixed


def rationale_phase(args) -> dict:
    """``--rationale-steps``: continue the large T5 of ``--continue-from`` on :data:`RATIONALE_TASK_WEIGHTS`.

    Same worlds and contexts as the mixture (seeds from ``--seed``), a fresh data stream (seed + 5),
    warmup to ``--rationale-lr``; the small T5 and its record are copied as they are."""
    import shutil

    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    src = args.continue_from / "large"
    record = json.loads((src / "lmcot_tiny_world.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = load_t5(src)
    rng = random.Random(args.seed + 5)
    pairs = []
    for s in world_seeds(args.seed, args.worlds):
        world, records = world_gen.generate_world(seed=s, train=args.questions, dev=0)
        corrupt = Corruptor(world)
        for name, recs in records.items():
            fmt = "hotpotqa" if name.startswith("hotpotqa") else "2wiki"
            for ex in parse_records(recs, fmt, f"world {s} {name}") if recs else []:
                ctx, distractors = training_context(rng, ex, tokenizer, args.context_tokens)
                pairs += rationale_pairs(rng, ex, ctx, distractors, corrupt, world)
    data = weighted(rng, tokenize(tokenizer, pairs), RATIONALE_TASK_WEIGHTS)
    print(f"rationale phase: {len(data)} pairs from {args.worlds} worlds", flush=True)

    def checkpoint(step):
        save(model, tokenizer, args.out / "large", dict(record, checkpoint_step=step))

    phase = train(model, data, steps=args.rationale_steps, seconds=0, lr=args.rationale_lr,
                  batch_size=args.batch_size, seed=args.seed + 5, pad_id=tokenizer.pad_token_id,
                  log_every=args.log_every, name="large/rationale", warmup=CRITIC_WARMUP, checkpoint=checkpoint,
                  checkpoint_every=args.checkpoint_every)
    record = dict(record, phases=dict(record.get("phases", {}), rationale=phase),
                  rationale_task_weights=RATIONALE_TASK_WEIGHTS, continued_from=record["sha256"],
                  rerun=f"{record['rerun']} --rationale-steps {args.rationale_steps} --rationale-lr {args.rationale_lr}")
    summary = json.loads((args.continue_from / "tiny_world.json").read_text())
    summary["models"]["large"] = save(model, tokenizer, args.out / "large", record)
    if args.out.resolve() != args.continue_from.resolve():
        shutil.copytree(args.continue_from / "small", args.out / "small", dirs_exist_ok=True)
    summary["training"].update(rationale_steps=args.rationale_steps, rationale_lr=args.rationale_lr)
    (args.out / "tiny_world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def small_pairs(rng: random.Random, paragraph_line: str) -> list[tuple[str, str, str]]:
    """Span denoising (``<unk>`` marks each dropped span) and continuation of one paragraph line."""
    words = paragraph_line.split()
    src, tgt, i = [], [], 0
    while i < len(words):
        if rng.random() < 0.15:
            n = rng.randint(1, 3)
            src.append("<unk>")
            tgt += ["<unk>"] + words[i:i + n]
            i += n
        else:
            src.append(words[i])
            i += 1
    cut = rng.randint(2, max(2, len(words) // 2))
    return [("denoise", " ".join(src), " ".join(tgt) or "<unk>"),
            ("continue", " ".join(words[:cut]), " ".join(words[cut:]))]


def random_copy_pairs(rng: random.Random, tokenizer, n: int) -> list[tuple[list[int], list[int], str]]:
    """Token ids of ``n`` sequences of 4-24 random (non-special) tokens, each its own target.

    Each T5's first phase: nothing in them can be recalled or guessed, so the only way
    to lower the loss is to build the copying circuit (T5 has no absolute positions: the
    decoder must find the source token after the one it just wrote). On random tokens it
    forms in about 1,500 steps of 0.06 s; on the worlds' text it had not after 3,000."""
    special = set(tokenizer.all_special_ids)
    pool = [i for i in range(len(tokenizer)) if i not in special]
    eos = tokenizer.eos_token_id
    pairs = []
    for _ in range(n):
        ids = [rng.choice(pool) for _ in range(rng.randint(4, 24))] + [eos]
        pairs.append((ids, ids, "random_copy"))
    return pairs


def build_pairs(args, tokenizer) -> tuple[list, list, list, dict]:
    """All training pairs of both models (the large one's mixture, the small one's, the critic phase's),
    and a record of where they came from."""
    rng, small_rng = random.Random(args.seed), random.Random(args.seed + 3)  # either model's data alone can change
    critic_rng = random.Random(args.seed + 4)  # the critic phase came later: the mixture's data stays as it was
    seeds = world_seeds(args.seed, args.worlds)
    large, small, critic = [], [], []
    for s in seeds:
        world, records = world_gen.generate_world(seed=s, train=args.questions, dev=0)
        corrupt = Corruptor(world)
        for name, recs in records.items():
            if not recs:
                continue
            fmt = "hotpotqa" if name.startswith("hotpotqa") else "2wiki"
            for ex in parse_records(recs, fmt, f"world {s} {name}"):
                ctx, distractors = training_context(rng, ex, tokenizer, args.context_tokens)
                large += large_pairs(rng, ex, ctx, distractors, corrupt)
                critic += critic_pairs(critic_rng, ex, ctx, distractors, corrupt)
        for title in world.titles:
            small += small_pairs(small_rng, render_paragraph(Paragraph(title, tuple(world.paragraphs[title]))))
    return large, small, critic, {"world_seeds": seeds, "questions_per_dataset_and_world": args.questions,
                          "shipped_world_seed_excluded": world_gen.SEED}


def tokenize(tokenizer, pairs):
    """Token ids of (source, target) pairs; over-long sources are dropped, targets capped."""
    src = tokenizer([p[1] for p in pairs], truncation=False)["input_ids"]
    tgt = tokenizer([p[2] for p in pairs], truncation=True, max_length=MAX_TARGET)["input_ids"]
    keep = [(s, t, p[0]) for s, t, p in zip(src, tgt, pairs) if len(s) <= MAX_SOURCE]
    return keep


def world_tokenizer(seed: int, train_worlds: int):
    """:func:`lmcot.models.tiny.build_tokenizer`'s tokenizer (same code, FLAN-T5's conventions: ``</s>``
    appended, pad 0 / eos 1 / unk 2, ``model_max_length`` 512), learned from world-neutral text.

    ``build_tokenizer`` learns its merges from the shipped files, so every name of the shipped
    dev world becomes one or two tokens of its own (``Dorvelford``): tokens that no other world
    contains, whose output rows a model trained on other worlds never learns (43 % of the dev
    answers' tokens occur < 5 times in three training worlds). Learned instead from the prompt
    templates and the text of many small worlds, names split into syllable pieces shared by
    every world, the shipped one included.
    """
    from lmcot.models import tiny

    corpus = [getattr(prompts, name) for name in ("STANDARD", "COT", "TEACHER_RATIONALE", "SMALL_RATIONALE",
                                                  "ANSWER_FROM_RATIONALE", "JUDGE")]
    corpus += [f"{a.definition} {a.question} yes no Yes No" for a in prompts.ASPECTS.values()]
    for s in world_seeds(seed, train_worlds + TOKENIZER_WORLDS)[train_worlds:]:
        corpus += list(world_gen.generate(seed=s, train=40, dev=0).values())
    shipped_corpus = tiny._corpus
    tiny._corpus = lambda: corpus
    try:
        return tiny.build_tokenizer("seq2seq")
    finally:
        tiny._corpus = shipped_corpus


# ----------------------------------------------------------------------------- models and training
def build_t5(size: dict, tokenizer, seed: int):
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer), d_kv=size["d_model"] // size["num_heads"], feed_forward_proj="gated-gelu",
        num_decoder_layers=size["num_layers"], tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id, dropout_rate=0.0, **size,
    )
    # Tied input and output embeddings (T5 v1.0's choice; FLAN-T5 unties them): a name of an unseen
    # world is made of pieces rare in the training worlds, whose untied output rows stay untrained,
    # so an untied model cannot write them even when it attends to them. Tied, copying a token is
    # reproducing its embedding, trained or not. Untied runs never copied a name.
    model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, suppress_tokens=[tokenizer.pad_token_id],
    )
    return model


def batches(rng: random.Random, data: list, batch_size: int):
    """Endless length-grouped batches: shuffle, sort within windows of 50 batches, shuffle the batches."""
    while True:
        idx = list(range(len(data)))
        rng.shuffle(idx)
        window = batch_size * 50
        out = []
        for w in range(0, len(idx), window):
            chunk = sorted(idx[w:w + window], key=lambda i: len(data[i][0]))
            out += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(out)
        yield from out


def collate(data: list, batch: list[int], pad_id: int) -> dict:
    src = [data[i][0] for i in batch]
    tgt = [data[i][1] for i in batch]
    ls, lt = max(map(len, src)), max(map(len, tgt))
    ids = torch.tensor([s + [pad_id] * (ls - len(s)) for s in src])
    labels = torch.tensor([t + [-100] * (lt - len(t)) for t in tgt])
    return dict(input_ids=ids, attention_mask=(ids != pad_id).long(), labels=labels)


def lr_at(step: int, lr: float, warmup: int) -> float:
    """Linear warmup, then inverse-square-root decay (T5's schedule): it depends on the step alone,
    so a run cut by the time budget is reproduced exactly by asking for the steps it took.

    >>> [round(lr_at(s, 1.0, 100), 3) for s in (0, 49, 99, 399, 9999)]
    [0.01, 0.5, 1.0, 0.5, 0.1]
    """
    return lr * min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))


def train(model, data: list, *, steps: int, seconds: float, lr: float, batch_size: int, seed: int, pad_id: int,
          log_every: int, name: str, warmup: int = 100, checkpoint=None, checkpoint_every: int = 0) -> dict:
    """AdamW for ``steps`` steps, or fewer when ``seconds`` > 0 runs out (the steps taken are recorded).

    ``checkpoint(step)`` is called every ``checkpoint_every`` steps, so a long run can be
    evaluated (and used) before it ends."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    losses, stream, step, start = [], batches(rng, data, batch_size), 0, time.monotonic()
    model.train()
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, warmup)
        loss = model(**collate(data, next(stream), pad_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        elapsed = time.monotonic() - start
        out_of_time = seconds > 0 and elapsed >= seconds
        if step % log_every == 0 or step == steps or out_of_time:
            recent = losses[-log_every:]
            print(f"[{name}] step {step}/{steps} loss {sum(recent) / len(recent):.3f} lr {lr_at(step - 1, lr, warmup):.2e} "
                  f"{elapsed:.0f}s", flush=True)
        if out_of_time:
            break
        if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
            model.eval()
            checkpoint(step)
            model.train()
    model.eval()
    tail = losses[-max(1, min(50, len(losses) // 5)):]
    return {"steps": step, "max_steps": steps, "seconds": round(time.monotonic() - start, 1), "warmup": warmup,
            "first_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4),
            "stopped_by_time": step < steps}


def load_t5(folder: Path):
    from transformers import T5ForConditionalGeneration

    return T5ForConditionalGeneration.from_pretrained(folder)


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


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(model, tokenizer, out: Path, record: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record = dict(record, parameters=sum(p.numel() for p in model.parameters()),
                  sha256={"model.safetensors": sha256(out / "model.safetensors")})
    (out / "lmcot_tiny_world.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def pretrain(args) -> dict:
    torch.set_num_threads(args.threads)
    tokenizer = world_tokenizer(args.seed, args.worlds)
    t0 = time.monotonic()
    large_raw, small_raw, critic_raw, provenance = build_pairs(args, tokenizer)
    large = tokenize(tokenizer, large_raw)
    small = tokenize(tokenizer, small_raw)
    critic = [x for x in (tokenize(tokenizer, critic_raw) if args.critic_steps else [])  # none unless trained on
              for _ in range(CRITIC_REPEAT["judge" if x[2].startswith("judge") else x[2]])]
    weights = LARGE_TASK_WEIGHTS
    # task mixture: repeat/subsample each task's pairs by its weight (deterministic)
    rng = random.Random(args.seed + 1)
    mixed = []
    for task, w in weights.items():
        items = [x for x in large if x[2] == task]
        whole, part = int(w), w - int(w)
        mixed += items * whole + rng.sample(items, int(len(items) * part))
    print(f"data: {len(mixed)} large pairs, {len(small)} small pairs from worlds {provenance['world_seeds']} "
          f"({time.monotonic() - t0:.0f}s)", flush=True)
    sizes = SMOKE_SIZES if args.smoke else SIZES
    budget = args.minutes * 60
    provenance["tokenizer_world_seeds"] = world_seeds(args.seed, args.worlds + TOKENIZER_WORLDS)[args.worlds:]
    summary = {"training": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                            if k not in ("out", "eval")}, "data": provenance,
               "task_weights": weights, "sizes": sizes, "max_source_tokens": MAX_SOURCE,
               "max_target_tokens": MAX_TARGET, "torch": torch.__version__, "models": {}}
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
        if continued is None:
            result = train(model, data, steps=steps, seconds=seconds, name=name, **common)
        else:  # the phases up to the mixture's end are the checkpoint's, step for step
            result, phases = continued["train"], dict(continued.get("phases", {}))
        record = {"name": f"tiny-world-{name}", "seed": args.seed, "size": sizes[name], "train": result,
                  "pairs": len(data), "rerun": f"--seed {args.seed} --{name}-steps {result['steps']}"}
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
    from lmcot.evaluation.metrics import answer_metrics, load_aliases
    from lmcot.evaluation.statistics import fmt_interval, paired
    from lmcot.tinyworld import seeds

    import tempfile

    large = HFGenerator(ModelSpec(str(folder / "large"), device="cpu"))
    gen = GenerationConfig(batch_size=16, rationale_max_new_tokens=80, answer_max_new_tokens=12)
    data_dir = world_gen.OUT_DIR
    if world_seed is not None:  # a world no model has seen, generated as the shipped one (only the seed differs)
        data_dir = Path(tempfile.mkdtemp(prefix=f"tiny-world-{world_seed}-"))
        shape = seeds.EVAL_WORLD_SHAPE if world_seed in seeds.TUNING + seeds.EVALUATION else {}
        for name, text in world_gen.generate(seed=world_seed, **shape).items():
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
    p.add_argument("--out", type=Path, default=ROOT / "lmcot" / "tiny_world", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the worlds, the data order and the init")
    p.add_argument("--worlds", type=int, default=400, help="training worlds (seeds derived from --seed): many, each seen little")
    p.add_argument("--questions", type=int, default=10, help="train questions per dataset and world")
    p.add_argument("--context-tokens", type=int, default=256, help="context budget (the tiny preset's)")
    p.add_argument("--minutes", type=float, default=0, help="time budget for both models (0: use the step counts)")
    p.add_argument("--small-share", type=float, default=0.06, help="share of --minutes for the small T5")
    p.add_argument("--large-steps", type=int, default=20000, help="steps of the large T5 (an upper bound with --minutes)")
    p.add_argument("--small-steps", type=int, default=5000, help="steps of the small T5 (likewise)")
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
    p.add_argument("--continue-from", type=Path, default=None, metavar="DIR",
                   help="with --only large: start from DIR/large, trained with the same arguments up to the "
                        "mixture's end, and train only the critic phase")
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
    if args.rationale_steps:
        if args.continue_from is None:
            raise SystemExit("--rationale-steps continues a trained large T5: pass --continue-from DIR")
        summary = rationale_phase(args)
        print(json.dumps(summary["models"]["large"]["phases"]["rationale"]))
        return 0
    summary = pretrain(args)
    print(json.dumps({k: v.get("train") for k, v in summary["models"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
