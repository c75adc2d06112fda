"""The ``lmcot`` command end to end: eval on the tiny preset, score, and bad input."""

import json
import os
import subprocess
import sys

import pytest

from lmcot.cli import main
from lmcot.datasets.data import load_json_file, resolve_path, to_official_json


def _lmcot(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lmcot.cli", *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("method, k", [("lm_guided", 1), ("standard", 1), ("cot", 3)])
def test_eval_writes_official_predictions_and_metrics(tmp_path, method, k):
    run = tmp_path / "run"
    code = main(["eval", "--config", "tiny", "--run-dir", str(run), "--method", method,
                 "--self-consistency", str(k), "--limit", "3"])
    assert code == 0
    label = method + (f"-sc{k}" if k > 1 else "")
    out = run / "eval" / label
    predictions = json.loads((out / "predictions.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"hotpotqa", "2wiki"}
    assert len(predictions["answer"]) == 6  # 3 per dataset
    for m in metrics["datasets"].values():
        assert m["n"] == 3 and 0.0 <= m["f1"] <= 1.0
        assert m["large_calls_per_question"] == (k if method == "lm_guided" else 1)
        assert m["small_calls_per_question"] == (1 if method == "lm_guided" else 0)
    details = [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]
    assert all(len(d["answers"]) == k for d in details)
    assert "| hotpotqa | 3 |" in (out / "report.md").read_text()
    assert (run / "config.yaml").is_file()


def test_score_cli_matches_hand_computed_metrics(tmp_path):
    examples = load_json_file(resolve_path("sample:hotpotqa_synthetic_dev"), "hotpotqa")[:4]
    gold = tmp_path / "gold.json"
    gold.write_text(json.dumps(to_official_json(examples)))
    preds = {examples[0].id: examples[0].answer, examples[1].id: "completely wrong words"}
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"answer": preds, "sp": {}}))
    out = _lmcot("score", "--gold", str(gold), "--predictions", str(pred))
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)
    assert set(scores) >= {"em", "f1", "prec", "recall"}
    assert scores["em"] == pytest.approx(0.25)  # one right of four, two missing count 0


def test_bad_override_fails_cleanly_without_traceback(tmp_path):
    out = _lmcot("eval", "--run-dir", str(tmp_path), "--set", "eval.limt=2")
    assert out.returncode == 2
    assert "did you mean 'eval.limit'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("override, message", [
    ("refine.reward_weights={taks: 1.0}", "refine: reward_weights names unknown reward 'taks'"),
    ("search.space={fluncy: [0, 1]}", "search: space names unknown reward 'fluncy'"),
])
def test_bad_reward_names_fail_before_the_pipeline_writes_anything(tmp_path, capsys, override, message):
    """The config loads (it knows no reward names); ``lmcot run`` refuses it before its first stage."""
    run = tmp_path / "run"
    assert main(["run", "--run-dir", str(run), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_malformed_dataset_names_file_record_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"_id": "r1", "question": "q?", "answer": "a", "supporting_facts": [],
                                "context": [], "type": "bridge", "level": "easy"}]))
    out = _lmcot("eval", "--run-dir", str(tmp_path / "run"), "--set",
                 f"data.datasets=[{{name: x, format: hotpotqa, dev_path: {bad}}}]")
    assert out.returncode == 2, out.stderr
    assert "bad.json" in out.stderr and "r1" in out.stderr and "context" in out.stderr
    assert "Traceback" not in out.stderr


_REPORT_IMPORTS = ("import sys; from lmcot.cli import main; code = main(sys.argv[1:]); "
                   "sys.stderr.write('\\nLOADED ' + ' '.join(sorted({m.split('.')[0] for m, v in sys.modules.items() "
                   "if v is not None} & {'deepspeed', 'ray'})) + '\\n'); sys.exit(code)")


def test_plan_and_prompts_print_only_json_on_a_cold_cache_and_import_no_training_library(tmp_path):
    """A fresh machine: no tiny model built yet, an empty HF cache. Building the tiny models goes
    through ``save_pretrained``, which probes for DeepSpeed, whose import warns on stdout."""
    runs = {}
    for command in ("prompts", "plan"):
        cold = tmp_path / command
        env = {**os.environ, "LMCOT_TINY_DIR": str(cold / "tiny"), "HF_HOME": str(cold / "hf"),
               "HF_HUB_OFFLINE": "1", "LMCOT_LOG_LEVEL": "INFO"}
        runs[command] = subprocess.Popen(  # both at once: each builds its own tiny models
            [sys.executable, "-c", _REPORT_IMPORTS, command, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for command, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert (tmp_path / command / "tiny").is_dir(), "the cache was cold: the command built the tiny models"
        parsed = json.loads(out)  # stdout is the JSON and nothing else
        assert parsed and isinstance(parsed, list if command == "prompts" else dict)
        assert err.rstrip().splitlines()[-1] == "LOADED", f"{command} imported {err.splitlines()[-1]}"


def test_an_evaluation_run_alone_is_reused_by_the_pipeline(tmp_path, monkeypatch):
    """``lmcot eval`` records its step; ``lmcot run`` on the same run dir skips that report row
    (the pipeline runs for real here, with every other stage and evaluation stubbed), writes the
    record of every step it runs once, and skips every step when run again."""
    from pathlib import Path
    from types import SimpleNamespace

    from lmcot.config import load_config
    from lmcot.runs import step
    from lmcot.runs.rundir import RunDir
    from lmcot.stages import cluster, evaluate, pipeline

    run = tmp_path / "run"
    assert main(["eval", "--config", "tiny", "--run-dir", str(run), "--method", "standard", "--limit", "2"]) == 0
    run_dir = RunDir(run)
    assert json.loads(run_dir.step_record(run_dir.eval_dir("standard")).read_text())["stage"] == "standard"

    for stage in ("distill", "refine"):  # what the stubbed training stages would have exported
        run_dir.model(stage).mkdir(parents=True)
        run_dir.model_meta(run_dir.model(stage)).write_text(json.dumps({"identity": stage}))
    evaluated, written = [], []
    record = step.record

    def counted(folder, *args, **kw):
        written.append(Path(folder).relative_to(run_dir.root).as_posix())
        record(folder, *args, **kw)

    def rationales(cfg, run_dir):  # records itself when it finishes, as the real stage does
        step.record(run_dir.rationales, "rationales", "r", {"rows": 1})
        return {"rows": 1}

    class Evaluator:
        def evaluate(self, ecfg, run_dir, judge):
            evaluated.append(ecfg.eval.output_label)
            return {}

        def close(self):
            pass

    stages = {
        "rationales": SimpleNamespace(stage_identity=lambda cfg: "r", run=rationales),
        "distill": SimpleNamespace(run=lambda cfg, run_dir: {"skipped": True}),
        "refine": SimpleNamespace(run=lambda cfg, run_dir: {"skipped": True}),
        "evaluate": SimpleNamespace(open_evaluator=lambda cfg: Evaluator(), with_small_lm=evaluate.with_small_lm),
    }
    monkeypatch.setattr(pipeline, "_stage", stages.__getitem__)
    monkeypatch.setattr(pipeline, "ensure_ray", lambda: None)
    monkeypatch.setattr(cluster, "require_resources", lambda need: None)
    monkeypatch.setattr(pipeline, "write_report", lambda run_dir, **kw: run_dir.report)
    monkeypatch.setattr(step, "record", counted)
    cfg = load_config("tiny", ["eval.limit=2"])
    steps = pipeline.run(cfg, run_dir)["steps"]
    assert steps["standard"] == "skipped" and "standard" not in evaluated
    assert steps["cot"] == "ran" and "cot" in evaluated  # judged in the pipeline: not what `lmcot eval` ran
    labels = [label for label, *_ in pipeline.eval_plan(cfg, run_dir)]
    assert evaluated == [label for label in labels if label != "standard"]
    assert sorted(written) == sorted(["rationales", *(f"eval/{label}" for label in evaluated)]), "each record once"

    evaluated.clear()
    written.clear()
    again = pipeline.run(cfg, run_dir)["steps"]
    assert evaluated == [] and written == [] and set(again.values()) == {"skipped"}
