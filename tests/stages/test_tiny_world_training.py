"""Distillation and refinement on the tiny world's T5s do what LM-guided CoT says they do.

The production stages run for real (a local 2-CPU Ray cluster, Ray Data teacher actors, Ray
Train + DeepSpeed ZeRO-2 workers, the large LM as the judge actor) on the ``tiny_world``
preset, trained on world 101 and measured on the shipped dev sets of another world:
distillation teaches the small LM to write rationales grounded in the context (the faithful share and
the recall of the evidence's names), and refinement moves the policy.
"""

from __future__ import annotations

import dataclasses

import pytest

from lmcot.prompting import prompts
from lmcot.config import ModelSpec, load_config
from lmcot.datasets.data import load_split
from lmcot.evaluation.evaluator import prepare_questions
from lmcot.models.generation import HFGenerator
from lmcot.scoring.metrics import answer_metrics, dataset_aliases, gold_answers
from lmcot.models.loading import TINY_WORLD_DIR
from lmcot.runs.jsonl import load_jsonl
from lmcot.runs.rundir import RunDir
from lmcot.stages import distill, rationales, refine

pytestmark = [pytest.mark.ray, pytest.mark.slow]

if not (TINY_WORLD_DIR / "large" / "model.safetensors").is_file():
    pytest.skip("the tiny world's pretrained weights are not shipped yet (docs/design.md, Tiny world)",
                allow_module_level=True)

OVERRIDES = ["distill.scaling.num_workers=1", "refine.scaling.num_workers=1", "rationales.num_actors=1",
             "refine.max_steps=12"]
SHIPPED_DEV = {"hotpotqa": ("sample:hotpotqa_synthetic_dev", ""),
               "2wiki": ("sample:2wiki_synthetic_dev", "sample:2wiki_synthetic_id_aliases")}
"""The tests' dev sets (world 20240404); the preset itself reports on world 2000004."""


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
        examples = load_split(dataclasses.replace(spec, dev_path=SHIPPED_DEV[spec.name][0],
                                                  aliases_path=SHIPPED_DEV[spec.name][1]), "dev")
        out.append((examples, prepare_questions(examples, mode=cfg.data.context_mode, tokenizer=tokenizer,
                                                max_tokens=cfg.data.context_max_tokens), dataset_aliases(spec)))
    return out


def grounding(cfg, small: str, dev) -> tuple[float, float]:
    """(faithful share, name recall) of the small LM's greedy rationales: the share every name and number of
    which occurs in the context, and the mean share of the gold supporting facts' names they state."""
    from lmcot.training.faithfulness import is_faithful, name_recall

    gen = HFGenerator(ModelSpec(small, device="cpu"), config=cfg.generation)
    faithful, recall = [], []
    for examples, questions, _ in dev:
        outs = gen.generate([prompts.small_rationale_prompt(q.question, q.context) for q in questions],
                            max_new_tokens=cfg.generation.rationale_max_new_tokens)
        for o, e, q in zip(outs, examples, questions):
            rationale = prompts.split_rationale(o.texts[0])[0]
            faithful.append(is_faithful(rationale, q.context))
            recall.append(name_recall(rationale, e.evidence))
    return sum(faithful) / len(faithful), sum(recall) / len(recall)


def test_the_teacher_keeps_rationales_that_lead_to_the_right_answer(trained):
    _, _, kept = trained
    assert kept["kept"] >= 100, kept


def test_distillation_teaches_the_small_lm_rationales_grounded_in_the_context(trained, dev):
    """Distilled, the small LM copies the evidence's names from the context instead of inventing them: on
    the 80 shipped dev questions a quarter or more of its greedy rationales pass the faithful check and they
    state 30% or more of the gold facts' names (on tuning worlds the preset's distilled model: 41% and 43%;
    a small LM that writes the right frame with invented names scores 0% and 6%). Token F1 against the
    evidence could not tell the two apart."""
    cfg, run_dir, _ = trained
    faithful, recall = grounding(cfg, str(run_dir.distill_model), dev)
    assert faithful >= 0.25 and recall >= 0.30, (faithful, recall)


def greedy_rationales(cfg, small: str, dev) -> list[str]:
    gen = HFGenerator(ModelSpec(small, device="cpu"), config=cfg.generation)
    return [o.texts[0] for _, questions, _ in dev
            for o in gen.generate([prompts.small_rationale_prompt(q.question, q.context) for q in questions],
                                  max_new_tokens=cfg.generation.rationale_max_new_tokens)]


def test_refinement_moves_the_policy(trained, dev):
    """The preset's refinement changes the small LM measurably: the KL to the distilled model grows
    past noise and greedy rationales change on some dev questions (at the old learning rate, 1e-5,
    the KL stayed under 2e-4 and no rationale changed). Whether that helps is the report's Claims
    table's question, on 800 questions; 80 cannot tell a few points from noise."""
    cfg, run_dir, _ = trained
    kl = [row["kl"] for row in load_jsonl(run_dir.metrics("refine")) if "kl" in row]
    assert kl and max(kl) > 1e-3, kl
    before = greedy_rationales(cfg, str(run_dir.distill_model), dev)
    after = greedy_rationales(cfg, str(run_dir.refine_model), dev)
    assert sum(a != b for a, b in zip(before, after)) >= 2, "refinement left every greedy rationale as it was"
