"""Evaluation stage: load the models a method needs, answer the dev split, write results.

It runs in the driver process: evaluation sets are small (7.4k HotpotQA dev questions)
next to generation for training, and keeping it in-process keeps ``lmcot eval`` usable
without a cluster. The models are built once and shared across datasets.
"""

from __future__ import annotations

from lmcot.config import Config
from lmcot.data import load_split
from lmcot.evaluation import evaluate, judge_rationales, prepare_questions, summarize, write_outputs
from lmcot.generation import make_generator
from lmcot.metrics import load_aliases
from lmcot.rewards import RewardJudge
from lmcot.rundir import RunDir, write_json


def run(cfg: Config, run_dir: RunDir, small=None, large=None, judge_aspects: bool = False) -> dict:
    """Evaluate ``cfg.eval`` on every dataset's dev split; returns the metrics summary.

    ``small``/``large`` may be passed in (already loaded generators) to reuse models.
    With ``judge_aspects``, the large LM also scores every rationale on the eight aspects
    (``aspects.json`` beside the metrics).
    """
    ev = cfg.eval
    datasets = {spec.name: (spec, load_split(spec, "dev")) for spec in cfg.data.datasets}
    large = large or make_generator(cfg.large, cfg.generation)
    if ev.method == "lm_guided" and small is None:
        small = make_generator(cfg.small, cfg.generation)
    tokenizer = getattr(large, "tokenizer", None)
    per_dataset = {}
    judged: tuple[list, list] = ([], [])
    for name, (spec, examples) in datasets.items():
        if ev.limit:
            examples = examples[: ev.limit]
        questions = prepare_questions(
            examples, mode=cfg.data.context_mode, tokenizer=tokenizer, max_tokens=cfg.data.context_max_tokens
        )
        results = evaluate(
            questions, method=ev.method, k=ev.self_consistency, small=small, large=large, gen=cfg.generation,
            desc=f"{ev.output_label}/{name}",
        )
        aliases = load_aliases(spec.aliases_path) if spec.aliases_path else None
        per_dataset[name] = (results, summarize(examples, results, aliases))
        judged[0].extend(questions)
        judged[1].extend(results)
    out_dir = run_dir.eval_dir(ev.output_label)
    summary = write_outputs(out_dir, ev, per_dataset)
    if judge_aspects and any(r.rationales for r in judged[1]):
        judge = RewardJudge(large, answer_max_new_tokens=cfg.generation.answer_max_new_tokens)
        write_json(out_dir / "aspects.json", judge_rationales(judged[0], judged[1], judge))
    return summary
