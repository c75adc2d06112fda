"""The run directory: the one place stages read from and write to, and every file name in it.

Every stage and job takes ``--run-dir RUN``; the layout is defined here once, so a stage
never guesses where another one wrote and a renamed file is renamed for its readers too.
No other module spells a run-directory file name.

    RUN/config.yaml                     the resolved config of the last command
    RUN/rationales/                     teacher rationales: part-NNNNNN.parquet shards, manifest.json
                                        (the settings the rows were written with), .lock, stats.json
    RUN/<step>/step.json                a step's identity and summary once it finished (rationales/,
                                        distill/, refine/, search/, eval/<label>/)
    RUN/distill/model/                  distilled small LM (save_pretrained + lmcot_model.json)
    RUN/distill/checkpoints/            Ray Train checkpoints: <run>/checkpoint-NNNNNN/, each an HF
                                        checkpoint (config.json, trainer_state.json; seq2seq refinement
                                        adds its DeepSpeed state under deepspeed/)
    RUN/distill/metrics.jsonl           the trainer's log: loss, eval_loss, learning rate per step
    RUN/refine/model/                   RL-refined small LM
    RUN/refine/metrics.jsonl            per step: rewards, KL, loss, throughput
    RUN/refine/curves.png               the refinement curves
    RUN/search/                         Ray Tune storage, trials, best_reward_weights.yaml
    RUN/search/trials/<trial>/round-<r>/  one search round: a run directory of its own
    RUN/eval/<label>/                   predictions.json, metrics.json, details.jsonl (per question),
                                        aspects.json, report.md; the gold-rationale row also
                                        judge_separation.json (the judge on gold vs corrupted rationales)
    RUN/report.md, RUN/report/*.png     the paper-style report
    RUN/seeds/seed-<s>/, RUN/seeds.md   ``lmcot seeds``: a run directory per other training seed, the claims per seed

What is read and written through these paths lives beside this module: the step records
and the skip rule (:mod:`lmcot.runs.step`), the training logs (:mod:`lmcot.runs.jsonl`), an
evaluation's files (:mod:`lmcot.runs.evals`) and the shards (:mod:`lmcot.runs.shards`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODEL_META = "lmcot_model.json"
"""What lmcot knows about an exported model (family, identity, base model), inside its folder."""
MODEL_CONFIG = "config.json"
"""The transformers config every saved model folder (and HF checkpoint) holds: "a model is here"."""
TRAINING_STAGES = ("distill", "refine")


@dataclass(frozen=True)
class RunDir:
    """Paths of one run; ``RunDir("runs/x")`` resolves to an absolute path (Ray needs one)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    # -- the config and the step records ----------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @staticmethod
    def step_record(stage_dir: Path) -> Path:
        """The record a finished stage (or evaluation) leaves in its own folder."""
        return Path(stage_dir) / "step.json"

    # -- rationales ---------------------------------------------------------------------------
    @property
    def rationales(self) -> Path:
        return self.root / "rationales"

    @property
    def rationale_stats(self) -> Path:
        return self.rationales / "stats.json"

    SHARD_PREFIX = "part-"
    SHARD_SUFFIX = ".parquet"

    @staticmethod
    def shard(folder: Path, index: int) -> Path:
        """``folder/part-NNNNNN.parquet``: shard number ``index`` of a shard folder."""
        return Path(folder) / f"{RunDir.SHARD_PREFIX}{index:06d}{RunDir.SHARD_SUFFIX}"

    @staticmethod
    def shard_index(path: Path) -> int | None:
        """The number of a finished shard file, None for any other file (temporary ones included)."""
        name = Path(path).name
        digits = name[len(RunDir.SHARD_PREFIX):-len(RunDir.SHARD_SUFFIX)]
        if name.startswith(RunDir.SHARD_PREFIX) and name.endswith(RunDir.SHARD_SUFFIX) and digits.isdigit():
            return int(digits)
        return None

    TEMPORARY = (".", ".tmp")
    """What a shard's name is wrapped in while it is written: hidden, and never a shard itself."""

    @staticmethod
    def shard_temporary(shard: Path) -> Path:
        """The name ``shard`` is written under before it is renamed into place."""
        start, end = RunDir.TEMPORARY
        return Path(shard).parent / f"{start}{Path(shard).name}{end}"

    @staticmethod
    def is_shard_temporary(path: Path) -> bool:
        """Whether ``path`` is a shard's temporary file (what a killed writer leaves behind)."""
        start, end = RunDir.TEMPORARY
        name = Path(path).name
        return (name.startswith(start) and name.endswith(end)
                and RunDir.shard_index(Path(name[len(start):-len(end)])) is not None)

    @staticmethod
    def shard_manifest(folder: Path) -> Path:
        """The settings a shard folder's rows were written with (a rerun may only add alike rows)."""
        return Path(folder) / "manifest.json"

    @staticmethod
    def writer_lock(folder: Path) -> Path:
        """The lock file one writer of a folder holds (two runs never write the same shards)."""
        return Path(folder) / ".lock"

    # -- the training stages ------------------------------------------------------------------
    def stage(self, name: str) -> Path:
        """``RUN/distill`` or ``RUN/refine``."""
        if name not in TRAINING_STAGES:
            raise ValueError(f"{name!r} is not a training stage ({', '.join(TRAINING_STAGES)})")
        return self.root / name

    def model(self, stage: str) -> Path:
        return self.stage(stage) / "model"

    def checkpoints(self, stage: str) -> Path:
        return self.stage(stage) / "checkpoints"

    def metrics(self, stage: str) -> Path:
        """The stage's training log, one JSON object per logged step."""
        return self.stage(stage) / "metrics.jsonl"

    def curves(self, stage: str) -> Path:
        return self.stage(stage) / "curves.png"

    TRAINER_STATE = "trainer_state.json"
    """The step and log history inside a training checkpoint (the HF trainer's file; refinement's
    seq2seq loop writes one too)."""

    @staticmethod
    def local_checkpoint(output_dir: Path, step: int) -> Path:
        """``output_dir/checkpoint-N``: where a worker writes the checkpoint of step N before it is
        reported (the HF trainer's own name for it, which refinement's seq2seq loop follows)."""
        return Path(output_dir) / f"checkpoint-{step}"

    @staticmethod
    def reported_checkpoint_name(step: int) -> str:
        """The folder Ray Train stores step N's checkpoint in, under ``checkpoints(stage)/<run>/``
        (zero-padded, so the folders sort by step)."""
        return f"checkpoint-{step:06d}"

    @staticmethod
    def deepspeed_state(checkpoint: Path) -> Path:
        """The DeepSpeed engine state (per-rank shards) inside a seq2seq refinement checkpoint."""
        return Path(checkpoint) / "deepspeed"

    @staticmethod
    def trainer_state(checkpoint: Path) -> Path:
        return Path(checkpoint) / RunDir.TRAINER_STATE

    @staticmethod
    def has_model(folder: Path) -> bool:
        """Whether ``folder`` holds a saved model (its ``config.json``): an export, a checkpoint, a copy."""
        return (Path(folder) / MODEL_CONFIG).is_file()

    @staticmethod
    def model_config(folder: Path) -> Path:
        return Path(folder) / MODEL_CONFIG

    @staticmethod
    def model_meta(model_dir: Path) -> Path:
        return Path(model_dir) / MODEL_META

    def model_identity(self, stage: str) -> str:
        """The identity recorded with a stage's exported model ("" when there is none): what a
        stage that starts from that model chains its own identity to."""
        meta = self.model_meta(self.model(stage))
        return json.loads(meta.read_text()).get("identity", "") if meta.is_file() else ""

    @property
    def distill(self) -> Path:
        return self.stage("distill")

    @property
    def distill_model(self) -> Path:
        return self.model("distill")

    @property
    def distill_checkpoints(self) -> Path:
        return self.checkpoints("distill")

    @property
    def refine(self) -> Path:
        return self.stage("refine")

    @property
    def refine_model(self) -> Path:
        return self.model("refine")

    @property
    def refine_checkpoints(self) -> Path:
        return self.checkpoints("refine")

    @property
    def refine_metrics(self) -> Path:
        return self.metrics("refine")

    # -- search --------------------------------------------------------------------------------
    @property
    def search(self) -> Path:
        return self.root / "search"

    @property
    def best_reward_weights(self) -> Path:
        return self.search / "best_reward_weights.yaml"

    @property
    def search_tune(self) -> Path:
        """Ray Tune's experiment storage."""
        return self.search / "tune"

    @property
    def search_trials(self) -> Path:
        """The trials' own run directories."""
        return self.search / "trials"

    @staticmethod
    def search_trial(trials: Path, trial_id: str) -> Path:
        """``<trials>/<trial id>/``: one trial's folder (``trials`` is ``search_trials`` of the run)."""
        return Path(trials) / trial_id

    @staticmethod
    def trial_round(trial_dir: Path, round_: int) -> "RunDir":
        """``<trial>/round-<r>/``: the run directory one search round refines and evaluates in."""
        return RunDir(Path(trial_dir) / f"round-{round_}")

    @property
    def search_trials_md(self) -> Path:
        return self.search / "trials.md"

    @property
    def search_pareto(self) -> Path:
        return self.search / "pareto.png"

    @property
    def search_inputs(self) -> Path:
        """What the search in ``search_tune`` was started from (a changed one is archived)."""
        return self.search / "search.json"

    @property
    def search_archive(self) -> Path:
        return self.search / "archive"

    def search_outputs(self) -> list[Path]:
        """Everything one search writes, moved together when it is archived."""
        return [self.search_tune, self.search_trials, self.search_trials_md, self.search_pareto,
                self.best_reward_weights, self.search_inputs]

    TRIAL_STATE = "round.json"
    """The file inside a search trial's Tune checkpoint: the last round reported."""
    TUNE_RESULT = "result.json"
    """Tune's own per-trial log (one JSON object per report) inside ``search_tune/<trial>/``."""

    # -- evaluations ---------------------------------------------------------------------------
    @property
    def evals(self) -> Path:
        return self.root / "eval"

    def eval_dir(self, label: str) -> Path:
        return self.evals / label

    # The files of one evaluation folder, wherever it is (``lmcot compare`` reads folders of any run).
    @staticmethod
    def predictions_in(eval_folder: Path) -> Path:
        """The answers in the official prediction format."""
        return Path(eval_folder) / "predictions.json"

    @staticmethod
    def metrics_in(eval_folder: Path) -> Path:
        """The evaluation's summary: its figures per dataset; present once the evaluation finished."""
        return Path(eval_folder) / "metrics.json"

    @staticmethod
    def details_in(eval_folder: Path) -> Path:
        """One JSON object per question: answer, rationales, samples, scores."""
        return Path(eval_folder) / "details.jsonl"

    @staticmethod
    def aspects_in(eval_folder: Path) -> Path:
        """Mean judged aspect scores of the evaluation's rationales."""
        return Path(eval_folder) / "aspects.json"

    @staticmethod
    def judge_separation_in(eval_folder: Path) -> Path:
        """How well the judge tells the evaluation's (gold) rationales from corrupted copies, per aspect."""
        return Path(eval_folder) / "judge_separation.json"

    @staticmethod
    def report_in(eval_folder: Path) -> Path:
        return Path(eval_folder) / "report.md"

    def eval_metrics(self, label: str) -> Path:
        return self.metrics_in(self.eval_dir(label))

    def eval_predictions(self, label: str) -> Path:
        return self.predictions_in(self.eval_dir(label))

    def eval_aspects(self, label: str) -> Path:
        return self.aspects_in(self.eval_dir(label))

    def eval_judge_separation(self, label: str) -> Path:
        return self.judge_separation_in(self.eval_dir(label))

    def eval_details(self, label: str) -> Path:
        return self.details_in(self.eval_dir(label))

    def eval_report(self, label: str) -> Path:
        return self.report_in(self.eval_dir(label))

    def eval_labels(self) -> list[str]:
        """Labels of the finished evaluations (those with metrics), sorted."""
        return sorted(p.name for p in self.evals.glob("*") if self.eval_metrics(p.name).is_file())

    # -- the report ----------------------------------------------------------------------------
    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def report_figure(self, name: str) -> Path:
        """``RUN/report/<name>.png``."""
        return self.root / "report" / f"{name}.png"

    # -- training seeds (``lmcot seeds``) -----------------------------------------------------------
    def seed_run(self, seed: int) -> "RunDir":
        """``RUN/seeds/seed-<s>/``: the whole method again with another training seed."""
        return RunDir(self.root / "seeds" / f"seed-{seed}")

    @property
    def seeds_report(self) -> Path:
        return self.root / "seeds.md"

    def ensure(self) -> "RunDir":
        self.root.mkdir(parents=True, exist_ok=True)
        return self


# -- writing -------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    """Write a file so readers never see half of it (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates owner-only files; results are meant to be shared
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
