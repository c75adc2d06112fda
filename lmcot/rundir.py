"""The run directory: the one place stages read from and write to.

Every stage and job takes ``--run-dir RUN``; the layout is defined here once so a
stage never guesses where another one wrote.

    RUN/config.yaml                 the resolved config of the last command
    RUN/rationales/                 teacher rationales (parquet shards + stats.json)
    RUN/distill/model/              distilled small LM (save_pretrained)
    RUN/distill/checkpoints/        Ray Train checkpoints
    RUN/refine/model/               RL-refined small LM
    RUN/refine/metrics.jsonl        per-step rewards, KL, loss
    RUN/search/                     Ray Tune storage, best_reward_weights.yaml
    RUN/eval/<label>/               predictions.json, metrics.json, report.md
    RUN/report.md                   the paper-style report
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """Paths of one run; ``RunDir("runs/x")`` resolves to an absolute path (Ray needs one)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def rationales(self) -> Path:
        return self.root / "rationales"

    @property
    def distill(self) -> Path:
        return self.root / "distill"

    @property
    def distill_model(self) -> Path:
        return self.distill / "model"

    @property
    def distill_checkpoints(self) -> Path:
        return self.distill / "checkpoints"

    @property
    def refine(self) -> Path:
        return self.root / "refine"

    @property
    def refine_model(self) -> Path:
        return self.refine / "model"

    @property
    def refine_checkpoints(self) -> Path:
        return self.refine / "checkpoints"

    @property
    def refine_metrics(self) -> Path:
        return self.refine / "metrics.jsonl"

    @property
    def search(self) -> Path:
        return self.root / "search"

    @property
    def best_reward_weights(self) -> Path:
        return self.search / "best_reward_weights.yaml"

    def eval_dir(self, label: str) -> Path:
        return self.root / "eval" / label

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def ensure(self) -> "RunDir":
        self.root.mkdir(parents=True, exist_ok=True)
        return self


def write_atomic(path: Path, text: str) -> None:
    """Write a file so readers never see half of it (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates owner-only files; results are meant to be shared
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
