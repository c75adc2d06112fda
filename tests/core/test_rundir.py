"""RunDir: where every run file lives, named once, and the atomic writer every run file goes through."""

import json
import os

import pytest

from lmcot.runs.rundir import RunDir, write_json


def test_a_run_dir_is_absolute_and_its_files_sit_where_the_layout_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir("runs/x")
    assert run.root.is_absolute() and run.root == (tmp_path / "runs" / "x").resolve()

    def rel(path):
        return path.relative_to(run.root).as_posix()

    assert rel(run.config_file) == "config.yaml"
    assert rel(RunDir.step_record(run.distill)) == "distill/step.json"
    assert rel(RunDir.step_record(run.eval_dir("cot"))) == "eval/cot/step.json"
    assert rel(run.rationale_stats) == "rationales/stats.json"
    assert rel(RunDir.shard(run.rationales, 3)) == "rationales/part-000003.parquet"
    assert rel(RunDir.shard_manifest(run.rationales)) == "rationales/manifest.json"
    assert rel(RunDir.writer_lock(run.rationales)) == "rationales/.lock"
    assert [rel(p) for p in (run.model("refine"), run.checkpoints("distill"), run.metrics("distill"),
                             run.curves("refine"), RunDir.model_meta(run.distill_model))] == [
        "refine/model", "distill/checkpoints", "distill/metrics.jsonl", "refine/curves.png",
        "distill/model/lmcot_model.json"]
    assert [rel(p) for p in (run.eval_predictions("cot"), run.eval_metrics("cot"), run.eval_details("cot"),
                             run.eval_aspects("cot"), run.eval_report("cot"))] == [
        "eval/cot/predictions.json", "eval/cot/metrics.json", "eval/cot/details.jsonl", "eval/cot/aspects.json",
        "eval/cot/report.md"]
    assert rel(run.report) == "report.md" and rel(run.report_figure("accuracy")) == "report/accuracy.png"
    assert rel(RunDir.trial_round(RunDir.search_trial(run.search_trials, "t1"), 2).root) == "search/trials/t1/round-2"
    assert {rel(p) for p in run.search_outputs()} == {"search/tune", "search/trials", "search/trials.md",
                                                      "search/pareto.png", "search/best_reward_weights.yaml",
                                                      "search/search.json"}


def test_an_evaluation_file_is_the_same_by_label_and_by_folder(tmp_path):
    run = RunDir(tmp_path)
    folder = run.eval_dir("cot")
    by_label = [run.eval_predictions("cot"), run.eval_metrics("cot"), run.eval_details("cot"),
                run.eval_aspects("cot"), run.eval_report("cot")]
    by_folder = [RunDir.predictions_in(folder), RunDir.metrics_in(folder), RunDir.details_in(folder),
                 RunDir.aspects_in(folder), RunDir.report_in(folder)]
    assert by_label == by_folder and len(set(by_folder)) == 5


def test_only_the_training_stages_have_a_stage_folder(tmp_path):
    assert RunDir(tmp_path).stage("refine") == RunDir(tmp_path).refine
    with pytest.raises(ValueError, match="'eval' is not a training stage"):
        RunDir(tmp_path).stage("eval")


def test_shard_names_carry_their_number_and_a_temporary_is_no_shard(tmp_path):
    assert [RunDir.shard_index(RunDir.shard(tmp_path, i)) for i in (0, 12, 999_999)] == [0, 12, 999_999]
    temporary = RunDir.shard_temporary(RunDir.shard(tmp_path, 3))
    assert temporary.parent == tmp_path and temporary.name.startswith(".")
    assert RunDir.shard_index(temporary) is None and RunDir.is_shard_temporary(temporary)
    for name in ("part-x.parquet", "part-000001.csv", ".part-000001.parquet", ".lock", "manifest.json",
                 ".config.yaml.abc.tmp", ".part-x.parquet.tmp"):
        assert RunDir.shard_index(tmp_path / name) is None, name
        assert not RunDir.is_shard_temporary(tmp_path / name), name


def test_eval_labels_are_the_finished_evaluations_sorted(tmp_path):
    run = RunDir(tmp_path)
    for label in ("standard", "cot"):
        write_json(run.eval_metrics(label), {})
    write_json(run.eval_predictions("half-done"), {})  # an evaluation that died before its metrics
    assert run.eval_labels() == ["cot", "standard"]
    assert RunDir(tmp_path / "empty").eval_labels() == []


def test_a_stage_model_is_known_by_its_config_and_its_identity_by_its_meta(tmp_path):
    run = RunDir(tmp_path)
    assert run.model_identity("distill") == "" and not RunDir.has_model(run.distill_model)
    write_json(RunDir.model_meta(run.distill_model), {"identity": "abc", "family": "seq2seq"})
    assert run.model_identity("distill") == "abc" and run.model_identity("refine") == ""
    assert not RunDir.has_model(run.distill_model)
    write_json(RunDir.model_config(run.distill_model), {})
    assert RunDir.has_model(run.distill_model)


def test_a_json_file_is_replaced_whole_and_readable_by_all(tmp_path):
    path = tmp_path / "a" / "b.json"
    write_json(path, {"x": 1})
    write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert os.listdir(path.parent) == ["b.json"], "no temporary file is left behind"
    assert path.stat().st_mode & 0o777 == 0o644
