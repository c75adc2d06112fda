"""JSON Lines files of a run: one JSON object per line, read and written only here.

The training stages log one object per step (``RUN/<stage>/metrics.jsonl``): refinement appends
each step live and, after a restart, cuts the log back to the step it resumed from; at the end a
stage writes the whole log from its checkpoint at once. An evaluation's per-question details and
Ray Tune's per-trial results are JSON Lines too. Blank lines are skipped when reading; a missing
file reads as no lines. A line cut off by a crash is not repaired: the reader fails on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from lmcot.runs.rundir import write_atomic


def load_jsonl(path: Path) -> list[dict]:
    """Every object of the file, in order ([] when it does not exist)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, entries: Iterable[dict], *, sort_keys: bool = True) -> None:
    """The whole file at once, atomically (readers never see half of it)."""
    write_atomic(Path(path), "".join(json.dumps(e, sort_keys=sort_keys) + "\n" for e in entries))


def append_jsonl(path: Path, entry: dict) -> None:
    """One more line, live (the folder is made when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the entries of steps after ``step`` (a resumed run writes them again)."""
    if Path(path).is_file():
        write_jsonl(path, [e for e in load_jsonl(path) if e.get("step", 0) <= step])
