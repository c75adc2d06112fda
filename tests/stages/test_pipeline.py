"""`lmcot run` end to end on a shrunken tiny preset: report filled, reruns skip what is done."""

import json

import pytest

from lmcot.config import load_config
from lmcot.rundir import RunDir
from lmcot.stages import pipeline

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL = [
    "data.datasets=[{name: hotpotqa, format: hotpotqa, train_path: sample:hotpotqa_synthetic_train, "
    "dev_path: sample:hotpotqa_synthetic_dev, limit: 6}]",
    "rationales.samples_per_question=1", "rationales.num_actors=1",
    "distill.scaling.num_workers=1", "distill.max_steps=2", "distill.save_steps=2", "distill.eval_steps=2",
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
        metrics = json.loads((run_dir.eval_dir(label) / "metrics.json").read_text())
        assert metrics["datasets"]["hotpotqa"]["n"] == 2
    assert "| lm_guided-refined | 0." in report  # aspect scores of the refined model's rationales
    assert (run_dir.root / "report" / "accuracy.png").is_file()

    again = pipeline.run(load_config("tiny", SMALL), run_dir)
    assert set(again["steps"].values()) == {"skipped"}

    changed = pipeline.run(load_config("tiny", SMALL + ["eval.limit=3"]), run_dir)
    assert {changed["steps"][s] for s in ("rationales", "distill", "refine")} == {"skipped"}
    assert {changed["steps"][label] for label in labels} == {"ran"}
