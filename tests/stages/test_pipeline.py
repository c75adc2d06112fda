"""`lmcot run` end to end on a shrunken tiny preset: the report is built from what the stages really
wrote, reruns skip what is done, run-only changes rerun nothing."""

import json

import pytest

from lmcot.config import load_config
from lmcot.runs.evals import read_judge_separation
from lmcot.runs.jsonl import load_jsonl
from lmcot.runs.rundir import RunDir
from lmcot.stages import pipeline

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL = [
    "data.datasets=[{name: hotpotqa, format: hotpotqa, train_path: sample:hotpotqa_synthetic_train, "
    "dev_path: sample:hotpotqa_synthetic_dev, limit: 6}]",
    "rationales.samples_per_question=1", "rationales.num_actors=1",
    "distill.scaling.num_workers=1", "distill.max_steps=2", "distill.save_steps=2", "distill.eval_steps=2",
    "distill.logging_steps=1",
    "refine.scaling.num_workers=1", "refine.max_steps=1", "refine.num_generations=2", "refine.prompts_per_step=1",
    "eval.limit=2", "pipeline.self_consistency=2",
]


def test_pipeline_fills_the_report_and_reruns_only_what_changed(ray_cluster, tmp_path):
    run_dir = RunDir(tmp_path / "run")
    first = pipeline.run(load_config("tiny", SMALL), run_dir)
    assert set(first["steps"].values()) == {"ran"}
    labels = [label for label, *_ in pipeline.eval_plan(load_config("tiny", SMALL), run_dir)]
    report = run_dir.report.read_text()
    for label in labels:
        assert f"| {label} | " in report, f"report misses the {label} row"
        metrics = json.loads(run_dir.eval_metrics(label).read_text())
        assert metrics["datasets"]["hotpotqa"]["n"] == 2
        hotpot = metrics["datasets"]["hotpotqa"]
        assert hotpot["large_prompt_tokens_per_question"] > 0 and hotpot["large_completion_tokens_per_question"] > 0
        # the tiny preset evaluates without gold labels; only the gold-rationale reference row reads them
        assert metrics["oracle"] is (label == "gold-rationale"), label
    assert {"gold-rationale", "empty-rationale"} <= set(labels) and len(set(labels)) == len(labels)
    assert "## Claims (paired on the same questions)" in report
    assert "| LM-guided CoT (refined) > standard prompting | `lm_guided-refined` vs `standard` | 2 |" in report  # eval.limit=2
    assert "**Oracle**: gold-rationale (gold_rationale)" in report
    assert "| lm_guided-refined | 0." in report  # aspect scores of the refined model's rationales
    # the judge's separation of gold from corrupted rationales: recorded by the gold row alone, shown in the report
    assert [label for label in labels if read_judge_separation(run_dir.eval_dir(label))] == ["gold-rationale"]
    assert "| *judge separates gold from corrupted (AUC)* |" in report and "| aspect | corrupted by |" in report
    assert run_dir.report_figure("accuracy").is_file()
    # the training curves come from the logs the training stages wrote: both have points
    distill_log, refine_log = load_jsonl(run_dir.metrics("distill")), load_jsonl(run_dir.metrics("refine"))
    assert [e["step"] for e in distill_log if "loss" in e] == [1, 2]
    assert [e["step"] for e in distill_log if "eval_loss" in e] == [2]
    assert [e["step"] for e in refine_log if "reward" in e] == [1]
    assert "## Training curves" in report and run_dir.report_figure("curves").stat().st_size > 10_000

    run_only = ["distill.scaling.max_failures=0", "distill.scaling.checkpoints_to_keep=3",
                "refine.judge_num_cpus=0.5", "refine.judge_batch_wait_ms=0", "rationales.num_actors=2",
                "rationales.shard_rows=4", "eval.num_cpus=2", "search.max_concurrent_trials=2"]
    again = pipeline.run(load_config("tiny", SMALL + run_only), run_dir)
    assert set(again["steps"].values()) == {"skipped"}, "run-only changes rerun nothing"

    changed = pipeline.run(load_config("tiny", SMALL + ["eval.limit=3"]), run_dir)
    assert {changed["steps"][s] for s in ("rationales", "distill", "refine")} == {"skipped"}
    assert {changed["steps"][label] for label in labels} == {"ran"}
