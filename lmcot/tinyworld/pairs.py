"""The tiny world's training pairs: (task, source, target) for every task of the two T5s.

Sources are lmcot's own prompt templates (:mod:`lmcot.prompting.prompts`), so each model is trained on
exactly what it is later served; contexts are built by :func:`lmcot.datasets.context.build_context`.
Which task weighs how much in which phase is stated beside each weight table.
"""

from __future__ import annotations

import dataclasses
import random

from lmcot.datasets.context import build_context, render_paragraph
from lmcot.datasets.data import Example
from lmcot.prompting import prompts
from lmcot.tinyworld.corruption import CORRUPTIONS, JUDGE_CORRUPTION, Corruptor, with_conclusion

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
RATIONALE_TASK_WEIGHTS = {"standard": 1, "cot": 1, "teacher": 1, "answer_reasoned": 2, "answer_gold": 1,
                          "answer_cue": 0.5, "answer_reasoned_short": 1, "copy": 0.5, "judge_pair_yes": 1,
                          "judge_pair_no": 1, "answer_misled": 0.5}
"""Pairs per question and task of the rationale phase (``--rationale-steps``). No ``answer_empty`` (it
taught the large T5 to answer without a rationale as well as with one) and a quarter of the critic
phase's ``answer_misled`` (enough to check a rationale's names against the context, not to ignore it);
CoT, teacher and answer-from-rationale targets state the comparison step
(:func:`lmcot.tinyworld.reasoning.reasoned_rationale`)."""


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


SMALL_TASK_WEIGHTS = {"fill_line": 0.5, "copy_line": 0.25, "continue": 0.25, "extract": 3, "extract_two": 2}
"""Pairs per paragraph line (``fill_line``, ``copy_line``, ``continue``) and per question (``extract``,
``extract_two``) of the small T5's mixture after its random-copy phase, which stays in the mix
(:data:`SMALL_RANDOM_COPY` pairs). Worlds have about eight lines per question, so these weights make
extraction about a third of the pairs. Every target but ``continue``'s is copied from its source: a whole
line with its dropped spans filled, a line, or the context's sentences about one or two entities.
A small T5 trained on span denoising whose targets hold only the dropped words learned to write what
its input does *not* say; distilled, it wrote rationales in the right frame with invented names."""
SMALL_RANDOM_COPY = 5_000
"""Random-token copy pairs kept in the small T5's mixture after its copy phase (of the phase's 20,000)."""
EXTRACT_PROMPT = "Write the sentences of the context about {entity}.\n\nContext:\n{context}\n\nSentences:"
"""The extraction task's source: laid out as the small LM's rationale prompt (instruction, context, cue)."""


def small_line_pairs(rng: random.Random, paragraph_line: str) -> list[tuple[str, str, str]]:
    """Whole-line denoising (``<unk>`` marks each dropped span; the target is the whole line, what is
    present copied and what is missing filled), copying, and continuation of one paragraph line."""
    words = paragraph_line.split()
    src, i = [], 0
    while i < len(words):
        if rng.random() < 0.15:
            src.append("<unk>")
            i += rng.randint(1, 3)
        else:
            src.append(words[i])
            i += 1
    cut = rng.randint(2, max(2, len(words) // 2))
    return [("fill_line", " ".join(src), paragraph_line), ("copy_line", paragraph_line, paragraph_line),
            ("continue", " ".join(words[:cut]), " ".join(words[cut:]))]


def sentences_about(ex: Example, context: str, entities: list[str], own: int = 4, elsewhere: bool = True,
                    context_order: bool = False) -> list[str]:
    """The context's sentences about ``entities``: the first ``own`` sentences of a paragraph titled with one
    of them and, with ``elsewhere``, every other sentence that names one, as long as the context keeps it whole.

    Without ``context_order`` they come in the example's paragraph order, not the (shuffled) context's,
    and the two-entity target takes sentences naming an entity elsewhere on top of ``own``, so a few pass
    :data:`MAX_TARGET` and are cut: two defects of the data the earlier small T5 learned from, kept as its
    recipe (:data:`lmcot.tinyworld.small_recipes.SMALL_RECIPES`, ``extraction``) so the code reproduces it."""
    out = []
    for p in ex.paragraphs:
        for i, s in enumerate(p.sentences):
            about = (p.title in entities and i < own) or (elsewhere and any(e in s for e in entities))
            if about and s in context and s not in out:
                out.append(s)
    return sorted(out, key=context.index) if context_order else out


def extraction_pairs(rng: random.Random, ex: Example, context: str, fixed: bool = False) -> list[tuple[str, str, str]]:
    """Extraction for one question's context: one entity (a gold paragraph's title), and two entities (a
    gold title and another paragraph's; their first two sentences each, so the target fits
    :data:`MAX_TARGET`) in, the context's sentences about them out, verbatim.

    Generic reading, not the rationale task: the entity is named, never asked about; what the small LM
    must bring to distillation is finding an entity's sentences and copying them whole. ``fixed``: targets
    in the context's order, and two-entity targets from each entity's own paragraph only (so none is cut);
    without it, the earlier small T5's data (:func:`sentences_about`)."""
    titles = [p.title for p in ex.paragraphs if f"{p.title}:" in context]
    gold = [t for t in ex.gold_titles if t in titles]
    if not gold:
        return []
    one = rng.choice(gold)
    others = [t for t in titles if t != one]
    out = [("extract", one, sentences_about(ex, context, [one], context_order=fixed))]
    if others:
        two = [one, rng.choice(others)]
        rng.shuffle(two)
        out.append(("extract_two", " and ".join(two),
                    sentences_about(ex, context, two, own=2, elsewhere=not fixed, context_order=fixed)))
    return [(task, EXTRACT_PROMPT.format(entity=entity, context=context), " ".join(target))
            for task, entity, target in out if target]


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


def weighted(rng: random.Random, pairs: list, weights: dict) -> list:
    """Each task's pairs repeated (whole part of its weight) and subsampled (fractional part)."""
    mixed = []
    for task, w in weights.items():
        items = [x for x in pairs if x[2] == task]
        mixed += items * int(w) + rng.sample(items, int(len(items) * (w - int(w))))
    return mixed


def tokenize(tokenizer, pairs, max_target: int = MAX_TARGET):
    """Token ids of (source, target) pairs; over-long sources are dropped, targets capped at ``max_target``."""
    src = tokenizer([p[1] for p in pairs], truncation=False)["input_ids"]
    tgt = tokenizer([p[2] for p in pairs], truncation=True, max_length=max_target)["input_ids"]
    keep = [(s, t, p[0]) for s, t, p in zip(src, tgt, pairs) if len(s) <= MAX_SOURCE]
    return keep
