"""The skip rule: a step's record, checked before it runs and written once when it finishes.

A step (the rationales, a training stage, the search, one evaluation) has a folder in the
run directory and an identity (:func:`lmcot.config.identity` of what it reads, chained through
the identities of what it reads from). When it finishes, the step itself writes
``<folder>/step.json`` (:meth:`RunDir.step_record`) with :func:`record`, after all its outputs.
Whoever decides whether to run it asks :func:`done`: the recorded summary when the record holds
the same identity, None otherwise. A step that died wrote no record, so it runs again and resumes
from its own checkpoints; a record of another identity is simply not done.

Who asks: the training stages ask themselves (``lmcot distill`` run twice trains once);
``lmcot run`` asks for the other steps, whose commands run alone always do their work (a
rerun of ``lmcot generate-rationales`` adds the missing rows, of ``lmcot eval`` evaluates again)
and record it, which ``lmcot run`` then accepts. No caller writes another step's record, so
every record is written once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lmcot.runs.rundir import RunDir, write_json


def done(folder: Path, identity: str) -> dict | None:
    """The summary the step of ``folder`` recorded when it finished with ``identity``; None when it
    has not (no record, a broken one, or one of another identity)."""
    try:
        data = json.loads(RunDir.step_record(folder).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data.get("summary", {}) if data.get("identity") == identity else None


def record(folder: Path, name: str, identity: str, summary: dict | None = None) -> None:
    """Mark the step ``name`` of ``folder`` finished with ``identity`` (call it last, after all its outputs)."""
    write_json(RunDir.step_record(folder), {"stage": name, "identity": identity,
                                           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                           "summary": summary or {}})
