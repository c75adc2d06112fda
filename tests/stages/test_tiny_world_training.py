"""Distillation and refinement on the tiny world's T5s do what LM-guided CoT says they do.

The production stages run for real (a local 2-CPU Ray cluster, Ray Data teacher actors, Ray
Train + DeepSpeed ZeRO-2 workers, the large LM as the judge actor) on the ``tiny_world``
preset, trained on world 101 and measured on the shipped dev sets of another world:
distillation teaches the small LM to write the evidence (its rationales' token F1 against the
gold supporting facts rises), and refinement with a task reward does not cost dev F1.
"""

from __future__ import annotations

import pytest

from lmcot.inference import method

from lmcot.prompting import prompts
from lmcot.config import ModelSpec, load_config
from lmcot.datasets.data import load_split
from lmcot.evaluation.evaluator import prepare_questions
from lmcot.models.generation import HFGenerator
from lmcot.evaluation.metrics import answer_metrics, dataset_aliases, gold_answers
from lmcot.models.loading import TINY_WORLD_DIR
from lmcot.runs.rundir import RunDir
from lmcot.stages import distill, rationales, refine

pytestmark = [pytest.mark.ray, pytest.mark.slow]

if not (TINY_WORLD_DIR / "large" / "model.safetensors").is_file():
    pytest.skip("the tiny world's pretrained weights are not shipped yet (docs/design.md, Tiny world)",
                allow_module_level=True)

OVERRIDES = ["distill.scaling.num_workers=1", "refine.scaling.num_workers=1", "rationales.num_actors=1"]


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """Teacher rationales -> distillation -> refinement, as ``lmcot run`` chains them."""
    cfg = load_config("tiny_world", OVERRIDES)
    run_dir = RunDir(tmp_path_factory.mktemp("tiny-world") / "run")
    kept = rationales.run(cfg, run_dir)
    distill.run(cfg, run_dir)
    refine.run(cfg, run_dir)
    return cfg, run_dir, kept


@pytest.fixture(scope="module")
def dev(trained):
    """(examples, questions, aliases) of each shipped dev set, contexts as the preset builds them."""
    cfg = trained[0]
    tokenizer = HFGenerator(ModelSpec(cfg.large.name_or_path, device="cpu")).tokenizer
    out = []
    for spec in cfg.data.datasets:
        examples = load_split(spec, "dev")
        out.append((examples, prepare_questions(examples, mode=cfg.data.context_mode, tokenizer=tokenizer,
                                                max_tokens=cfg.data.context_max_tokens), dataset_aliases(spec)))
    return out


def rationale_f1(cfg, small: str, dev) -> float:
    """Mean token F1 of the small LM's greedy rationales against the gold supporting facts."""
    gen = HFGenerator(ModelSpec(small, device="cpu"), config=cfg.generation)
    scores = []
    for examples, questions, _ in dev:
        outs = gen.generate([prompts.small_rationale_prompt(q.question, q.context) for q in questions],
                            max_new_tokens=cfg.generation.rationale_max_new_tokens)
        scores += [answer_metrics(prompts.split_rationale(o.texts[0])[0], [e.evidence])["f1"]
                   for o, e in zip(outs, examples)]
    return 100 * sum(scores) / len(scores)


def guided_f1(cfg, small: str, dev) -> float:
    """Dev answer F1 of LM-guided CoT with ``small`` writing the rationales (k = 1)."""
    small_lm = HFGenerator(ModelSpec(small, device="cpu"), config=cfg.generation)
    large = HFGenerator(ModelSpec(cfg.large.name_or_path, device="cpu"), config=cfg.generation)
    scores = []
    for examples, questions, aliases in dev:
        results = method.lm_guided(questions, small_lm, large, cfg.generation)
        scores += [answer_metrics(r.answer, gold_answers(e.answer, e.answer_id, aliases))["f1"]
                   for r, e in zip(results, examples)]
    return 100 * sum(scores) / len(scores)


def test_the_teacher_keeps_rationales_that_lead_to_the_right_answer(trained):
    _, _, kept = trained
    assert kept["kept"] >= 100, kept


def test_distillation_raises_the_small_lms_rationale_f1_against_the_evidence(trained, dev):
    cfg, run_dir, _ = trained
    before = rationale_f1(cfg, cfg.small.name_or_path, dev)
    after = rationale_f1(cfg, str(run_dir.distill_model), dev)
    assert after >= before + 10, (before, after)


def test_refinement_with_a_task_reward_does_not_lower_dev_f1(trained, dev):
    """Within 2.5 F1 points (two of the 80 answers): a few RL steps move few answers either way."""
    cfg, run_dir, _ = trained
    distilled = guided_f1(cfg, str(run_dir.distill_model), dev)
    refined = guided_f1(cfg, str(run_dir.refine_model), dev)
    assert refined >= distilled - 2.5, (distilled, refined)
