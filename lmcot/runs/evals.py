"""An evaluation's folder (``RUN/eval/<label>/``): its files written together, and read back.

``lmcot eval`` and ``lmcot run`` write an evaluation through :func:`write_evaluation`; the report,
the search and ``lmcot compare`` read it with the readers here. Every function takes the folder,
so a folder of another run (what ``lmcot compare`` is given) reads like one of this run
(``run_dir.eval_dir(label)``). What the files hold (the official prediction format, the metrics'
keys) is the evaluator's business; this module only knows their names and formats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from lmcot.runs.jsonl import load_jsonl, write_jsonl
from lmcot.runs.rundir import RunDir, write_atomic, write_json


def write_evaluation(folder: Path, *, predictions: dict, metrics: dict, details: Iterable[dict], report: str) -> None:
    """The official-format predictions, the metrics, one details line per question and the report,
    in that order (the metrics mark a finished evaluation; see :meth:`RunDir.eval_labels`)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_json(RunDir.predictions_in(folder), predictions)
    write_json(RunDir.metrics_in(folder), metrics)
    write_jsonl(RunDir.details_in(folder), details, sort_keys=False)
    write_atomic(RunDir.report_in(folder), report)


def read_metrics(folder: Path) -> dict:
    return json.loads(RunDir.metrics_in(folder).read_text())


def read_details(folder: Path) -> dict[str, dict]:
    """``dataset/id`` -> the per-question record ({} when the folder has no details)."""
    return {f"{rec['dataset']}/{rec['id']}": rec for rec in load_jsonl(RunDir.details_in(folder))}


def read_answers(folder: Path) -> dict[str, str]:
    """id -> answer of the folder's official prediction file; FileNotFoundError naming it when absent."""
    path = RunDir.predictions_in(folder)
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no prediction file ({path.name})")
    return json.loads(path.read_text()).get("answer", {})


def write_aspects(folder: Path, scores: dict[str, float]) -> None:
    write_json(RunDir.aspects_in(folder), scores)


def read_aspects(folder: Path) -> dict[str, float] | None:
    """The mean aspect scores, None when the evaluation's rationales were not judged."""
    path = RunDir.aspects_in(folder)
    return json.loads(path.read_text()) if path.is_file() else None


def write_judge_separation(folder: Path, record: dict) -> None:
    """The judge's scores of gold rationales against corrupted copies (:mod:`lmcot.evaluation.judge_probe`)."""
    write_json(RunDir.judge_separation_in(folder), record)


def read_judge_separation(folder: Path) -> dict | None:
    """What :func:`write_judge_separation` wrote, None when the folder's rationales were not probed."""
    path = RunDir.judge_separation_in(folder)
    return json.loads(path.read_text()) if path.is_file() else None
