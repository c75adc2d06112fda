"""An evaluation's folder (lmcot.runs.evals): written together, read back by folder."""

import json

import pytest

from lmcot.runs.evals import read_answers, read_aspects, read_details, read_metrics, write_aspects, write_evaluation
from lmcot.runs.rundir import RunDir


def test_an_evaluation_reads_back_what_was_written(tmp_path):
    run = RunDir(tmp_path)
    folder = run.eval_dir("cot")
    details = [{"dataset": "hotpotqa", "id": "q1", "f1": 1.0, "answer": "Ann"},
               {"dataset": "2wiki", "id": "q1", "f1": 0.5, "answer": "Bo"}]
    write_evaluation(folder, predictions={"answer": {"q1": "Ann"}, "sp": {}}, metrics={"label": "cot"},
                     details=details, report="# cot\n")
    assert read_metrics(folder) == {"label": "cot"} and run.eval_labels() == ["cot"]
    assert read_answers(folder) == {"q1": "Ann"}
    # the same id in two datasets stays two questions
    assert read_details(folder) == {"hotpotqa/q1": details[0], "2wiki/q1": details[1]}
    # one line per question, keys in the order the evaluator gave them
    assert RunDir.details_in(folder).read_text() == "".join(json.dumps(d) + "\n" for d in details)
    assert RunDir.report_in(folder).read_text() == "# cot\n"
    assert json.loads(RunDir.predictions_in(folder).read_text()) == {"answer": {"q1": "Ann"}, "sp": {}}


def test_a_folder_of_another_run_without_details_or_predictions(tmp_path):
    assert read_details(tmp_path) == {} and read_aspects(tmp_path) is None
    with pytest.raises(FileNotFoundError, match=r"no prediction file \(predictions.json\)"):
        read_answers(tmp_path)
    RunDir.predictions_in(tmp_path).write_text("{}")
    assert read_answers(tmp_path) == {}


def test_aspects_are_none_until_judged(tmp_path):
    assert read_aspects(tmp_path) is None
    write_aspects(tmp_path, {})
    assert read_aspects(tmp_path) == {}, "judged, with nothing to judge: not the same as never judged"
    write_aspects(tmp_path, {"fluency": 0.5})
    assert read_aspects(tmp_path) == {"fluency": 0.5}
