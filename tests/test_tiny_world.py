"""Method-level claims on the tiny world's shipped T5s (``tiny:world-large`` / ``tiny:world-small``).

These are the claims `make run`'s report rests on, checked on the shipped dev sets (a world the
models never saw) through lmcot's own generator, context builder and methods: the large LM reads
a rationale (gold evidence beats none), and its judge tells a faithful rationale from each
aspect's corruption. Distillation and refinement are checked in
``tests/stages/test_tiny_world_training.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import pytest

from lmcot.inference import method

from lmcot.prompting import prompts
from lmcot.config import ModelSpec, load_config
from lmcot.datasets.data import load_split
from lmcot.evaluation.evaluator import prepare_questions
from lmcot.evaluation.statistics import HOLDS, paired
from lmcot.models.generation import HFGenerator
from lmcot.scoring.metrics import answer_metrics, dataset_aliases, gold_answers
from lmcot.models.loading import TINY_WORLD_DIR
from lmcot.tinyworld import synthetic

if not (TINY_WORLD_DIR / "large" / "model.safetensors").is_file():
    pytest.skip("the tiny world's pretrained weights are not shipped yet (docs/design.md, Tiny world)",
                allow_module_level=True)

CFG = load_config("tiny_world")


def f1_by_id(results, examples, aliases) -> dict[str, float]:
    return {e.id: answer_metrics(r.answer, gold_answers(e.answer, e.answer_id, aliases))["f1"]
            for r, e in zip(results, examples)}


def mean_f1(results, examples, aliases) -> float:
    return 100 * sum(f1_by_id(results, examples, aliases).values()) / len(examples)


@pytest.fixture(scope="module")
def large():
    return HFGenerator(ModelSpec("tiny:world-large", device="cpu"), config=CFG.generation)


SHIPPED_DEV = {"hotpotqa": ("sample:hotpotqa_synthetic_dev", ""),
               "2wiki": ("sample:2wiki_synthetic_dev", "sample:2wiki_synthetic_id_aliases")}
"""The tests' dev sets: the shipped samples (world 20240404); the preset itself reports on world 2000004."""


@pytest.fixture(scope="module")
def dev(large):
    """(examples, questions, aliases) of each shipped dev set, contexts as the preset builds them."""
    out = {}
    for spec in CFG.data.datasets:
        dev_path, aliases_path = SHIPPED_DEV[spec.name]
        spec = dataclasses.replace(spec, dev_path=dev_path, aliases_path=aliases_path)
        examples = load_split(spec, "dev")
        questions = prepare_questions(examples, mode=CFG.data.context_mode, tokenizer=large.tokenizer,
                                      max_tokens=CFG.data.context_max_tokens)
        out[spec.name] = (examples, questions, dataset_aliases(spec))
    return out


@pytest.mark.parametrize("name", ["large", "small"])
def test_shipped_weights_match_their_recorded_hash_and_size(name):
    folder = TINY_WORLD_DIR / name
    record = json.loads((folder / "lmcot_tiny_world.json").read_text())
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert digest == record["sha256"]["model.safetensors"], "weights differ from the training record"
    assert sum(p.stat().st_size for p in TINY_WORLD_DIR.rglob("*") if p.is_file()) < 40_000_000


@pytest.mark.parametrize("dataset", ["hotpotqa", "2wiki"])
def test_large_lm_answers_better_from_the_gold_chain_of_thought_than_from_none(large, dev, dataset):
    """The claim every other one rests on: a rationale matters. The gold chain of thought (supporting
    facts and the comparison step, as the evaluation worlds carry it) beats an empty rationale on the
    shipped dev set, paired on its 40 questions, with a 95% interval above zero."""
    from lmcot.tinyworld.reasoning import reasoned_rationale

    world, _ = synthetic.generate_world()
    examples, questions, aliases = dev[dataset]
    gold = f1_by_id(method.answer_rationales(questions, [[reasoned_rationale(world, e)] for e in examples], large,
                                             CFG.generation), examples, aliases)
    empty = f1_by_id(method.empty_rationale(questions, large, CFG.generation), examples, aliases)
    result = paired(empty, gold)
    assert result.verdict == HOLDS and result.delta >= 0.10, result


JUDGED = [a for a in prompts.ASPECTS if a != "factuality"]
"""The aspects the shipped judge separates; factuality it does not (below)."""


def judge_scores(large, dev, load_script, aspect) -> tuple[list[float], list[float]]:
    """P(yes) of each question's gold evidence and of the corruption that violates ``aspect`` (the
    corruptions the pretraining used, applied to the shipped dev world, which it never saw)."""
    tool = load_script("tools/pretrain_tiny_world.py")
    world, _ = synthetic.generate_world()
    examples, questions, _ = dev["hotpotqa"]
    good, bad = tool.judge_prompts(tool.Corruptor(world), random.Random(0), aspect, examples, questions)
    return large.score_yes_no(good), large.score_yes_no(bad)


def test_the_judge_cannot_tell_a_wrong_entity_from_the_right_one(large, dev, load_script):
    """Factuality is why the preset leaves that aspect out of its rewards: mean P(yes) of the faithful
    rationale and of the same rationale with a wrong name are within 0.05 (measured 0.448 / 0.442).
    Weights that learn it make this fail; then the preset can reward factuality again."""
    good, bad = judge_scores(large, dev, load_script, "factuality")
    assert abs(sum(good) / len(good) - sum(bad) / len(bad)) < 0.05, (good, bad)


@pytest.mark.parametrize("aspect", JUDGED)
def test_judge_scores_faithful_rationales_above_the_aspects_corruption(large, dev, load_script, aspect):
    """P(yes) of the gold evidence is above that of its corruption, paired per question with the 95%
    interval above zero (measured on the 40 questions: relevance +47.0 [+39.5, +54.3] points, down to
    naturalness +2.3 [+0.9, +4.0]); a mean that is merely higher (0.51 against 0.49) does not pass."""
    good, bad = judge_scores(large, dev, load_script, aspect)
    result = paired(dict(enumerate(bad)), dict(enumerate(good)))
    assert result.verdict == HOLDS, result


def test_a_world_no_model_has_seen_scores_like_the_shipped_dev_sets(large, dev, load_script, tmp_path):
    """Direct answers on a world no model has seen score within 10 F1 points of the shipped dev sets',
    and they come from reading: with its context the large LM beats itself without one on that world,
    paired, with the 95% interval above zero (two worlds alike would pass with a model that cannot read,
    guessing the same on both). The world is
    generated exactly as the shipped samples are, only the seed differs: a dev split drawn after the
    train split holds other question types than one drawn alone (HotpotQA: 27 comparisons of 40, against
    12 with ``train=0``), and the types differ in difficulty."""
    for name, text in synthetic.generate(seed=777).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    scores: dict[str, dict[str, float]] = {}
    for spec in CFG.data.datasets:
        examples, questions, aliases = dev[spec.name]
        spec = dataclasses.replace(spec, dev_path=SHIPPED_DEV[spec.name][0])
        shipped = mean_f1(method.standard(questions, large, CFG.generation), examples, aliases)
        fresh_spec = dataclasses.replace(spec, dev_path=str(tmp_path / f"{spec.name}_synthetic_dev.json"),
                                         aliases_path=str(tmp_path / "2wiki_synthetic_id_aliases.json")
                                         if spec.aliases_path else "")
        fresh = load_split(fresh_spec, "dev")
        fresh_q = prepare_questions(fresh, mode=CFG.data.context_mode, tokenizer=large.tokenizer,
                                    max_tokens=CFG.data.context_max_tokens)
        answers = method.standard(fresh_q, large, CFG.generation)
        unseen = mean_f1(answers, fresh, dataset_aliases(fresh_spec))
        assert abs(unseen - shipped) <= 10, (spec.name, shipped, unseen)
        blind = method.standard([dataclasses.replace(q, context="") for q in fresh_q], large, CFG.generation)
        for row, results in (("blind", blind), ("reading", answers)):
            scores.setdefault(row, {}).update({f"{spec.name}/{k}": v for k, v in
                                               f1_by_id(results, fresh, dataset_aliases(fresh_spec)).items()})
    reading = paired(scores["blind"], scores["reading"])  # both datasets: 40 questions alone are too few
    assert reading.verdict == HOLDS, reading


def test_every_gold_chain_of_thought_fits_the_rationale_cap(large, dev):
    """A rationale the preset cuts before its comparison step cannot lead to the answer: every gold chain of
    thought of the dev sets fits both ``generation.rationale_max_new_tokens`` and the target cap of the
    large T5's last rationale phase (what it learned to write as the teacher)."""
    from lmcot.models.loading import tiny_world_path
    from lmcot.tinyworld.pairs import MAX_TARGET
    from lmcot.tinyworld.reasoning import reasoned_rationale

    record = json.loads((tiny_world_path("large") / "lmcot_tiny_world.json").read_text())
    learned = [phase.get("max_target_tokens", MAX_TARGET) for name, phase in record["phases"].items()
               if name.startswith("rationale")][-1]
    world, _ = synthetic.generate_world()
    cap = min(CFG.generation.rationale_max_new_tokens, learned)
    too_long = [(ex.type, n) for examples, _, _ in dev.values() for ex in examples
                if (n := len(large.tokenizer(reasoned_rationale(world, ex))["input_ids"])) > cap]
    assert not too_long, too_long
