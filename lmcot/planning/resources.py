"""Resource planning: which Ray resources every actor and worker of a config asks for.

Pure arithmetic on the config, without Ray, so it is tested in milliseconds and every
stage asks the same question the same way: the stages turn a :class:`Need` into a check
(``lmcot.stages.cluster.require_resources``) or into Ray options, never add numbers
themselves. A resource is a Ray resource name (``CPU``, ``GPU``, or a model's placement
resource such as ``large_lm`` from ``ModelSpec.ray_resource``) with an amount.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmcot.config import Config, ScalingConfig


@dataclass(frozen=True)
class Need:
    """Resources something will hold at once, what holds them, and the fields to change."""

    resources: dict[str, float]
    what: str
    fix: str


def add_resources(*needs: dict[str, float], times: int = 1) -> dict[str, float]:
    """The sum of several Ray resource requests, ``times`` over.

    >>> add_resources({"CPU": 1, "GPU": 1}, {"CPU": 0.5, "large_lm": 0.001}, times=2)
    {'CPU': 3.0, 'GPU': 2, 'large_lm': 0.002}
    """
    total: dict[str, float] = {}
    for need in needs:
        for key, amount in need.items():
            total[key] = total.get(key, 0) + amount
    return {key: times * amount for key, amount in total.items()}


def nonzero(resources: dict[str, float]) -> dict[str, float]:
    """Only the resources actually asked for (Ray bundles refuse zero amounts).

    >>> nonzero({"CPU": 1.0, "GPU": 0.0})
    {'CPU': 1.0}
    """
    return {k: v for k, v in resources.items() if v > 0}


# -- training workers ----------------------------------------------------------------------
def worker_resources(scaling: ScalingConfig, placement: dict[str, float] | None = None) -> dict[str, float]:
    """Ray resources of one training worker: its CPUs, one GPU when ``use_gpu``, and the small
    LM's placement resource (``small.ray_resource``) when set.

    >>> worker_resources(ScalingConfig(cpus_per_worker=2, use_gpu=True), {"small_lm": 0.001})
    {'CPU': 2, 'GPU': 1, 'small_lm': 0.001}
    """
    return {"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {}), **(placement or {})}


def training_need(cfg: Config, stage: str) -> Need:
    """The workers of ``distill`` or ``refine`` together.

    >>> training_need(Config(), "distill").resources
    {'CPU': 2.0}
    """
    scaling = getattr(cfg, stage).scaling
    per_worker = worker_resources(scaling, cfg.small.placement())
    return Need(add_resources(per_worker, times=scaling.num_workers),
                f"{stage}.scaling asks for {scaling.num_workers} workers x {per_worker}",
                f"lower {stage}.scaling.num_workers / cpus_per_worker"
                + (" or set use_gpu: false" if scaling.use_gpu else "")
                + (" or clear small.ray_resource" if cfg.small.ray_resource else ""))


# -- the large LM's judge actors (refinement rewards) -----------------------------------------
def judge_resources(cfg: Config) -> dict[str, float]:
    """One judge actor: ``refine.judge_num_cpus``/``judge_num_gpus`` on the large LM's group.

    >>> judge_resources(Config())
    {'CPU': 0.0, 'GPU': 0.0}
    """
    rc = cfg.refine
    return {"CPU": rc.judge_num_cpus, "GPU": rc.judge_num_gpus, **cfg.large.placement()}


def refine_need(cfg: Config) -> Need:
    """One refinement run: its training workers plus its judge actors.

    >>> from lmcot.config import load_config
    >>> refine_need(load_config("tiny", ["refine.judge_num_actors=2", "refine.judge_num_cpus=0.5"])).resources
    {'CPU': 3.0}
    """
    rc = cfg.refine
    workers = training_need(cfg, "refine").resources
    judges = add_resources(judge_resources(cfg), times=rc.judge_num_actors)
    return Need(nonzero(add_resources(workers, judges)),
                f"refine runs {rc.scaling.num_workers} training workers and {rc.judge_num_actors} judge actors",
                "lower refine.judge_num_cpus / judge_num_gpus / judge_num_actors or refine.scaling.num_workers / "
                "cpus_per_worker")


# -- search trials -------------------------------------------------------------------------
def trial_own_resources(cfg: Config) -> dict[str, float]:
    """A search trial's own process, which evaluates with the large LM after each round."""
    sc = cfg.search
    return {"CPU": sc.trial_cpus, "GPU": sc.trial_gpus, **cfg.large.placement()}


def trial_bundles(cfg: Config) -> list[dict[str, float]]:
    """The trial's placement group: its own process first, then one bundle per judge actor.

    Tune places a trial's child actors inside the trial's placement group, so the judge
    actors that refinement starts must fit there; the training workers live in Ray Train's
    own placement group. A bundle cannot be empty: a trial that needs nothing of its own
    reserves one byte of memory.

    >>> trial_bundles(Config())
    [{'memory': 1}]
    """
    own = nonzero(trial_own_resources(cfg))
    judge = nonzero(judge_resources(cfg))
    bundles = [own] + ([judge] * cfg.refine.judge_num_actors if judge else [])
    return bundles if any(bundles) else [{"memory": 1}]


def search_need(cfg: Config) -> Need:
    """``search.max_concurrent_trials`` trials at once, each with its own process, judges and workers."""
    n = cfg.search.max_concurrent_trials
    return Need(nonzero(add_resources(refine_need(cfg).resources, trial_own_resources(cfg), times=n)),
                f"search.max_concurrent_trials={n} runs {n} trials at once (each: search.trial_cpus/trial_gpus + "
                "refine judges + refine.scaling workers)",
                "lower search.max_concurrent_trials, refine.scaling.num_workers or the judges' resources")


# -- evaluation and teacher actors ----------------------------------------------------------
def eval_actor_resources(cfg: Config) -> dict[str, float]:
    """The evaluation actor of ``eval.on_cluster`` (both LMs, on the large LM's group)."""
    return {"CPU": cfg.eval.num_cpus, "GPU": cfg.eval.num_gpus, **cfg.large.placement()}


def eval_need(cfg: Config) -> Need:
    """What ``eval.on_cluster`` holds (nothing when the evaluation runs in the calling process).

    >>> eval_need(Config()).resources
    {}
    """
    return Need(eval_actor_resources(cfg) if cfg.eval.on_cluster else {},
                "eval.on_cluster runs the evaluation in one actor (eval.num_cpus / num_gpus, large.ray_resource)",
                "lower eval.num_cpus / num_gpus, clear large.ray_resource, or set eval.on_cluster: false to "
                "evaluate in this process")


def teacher_actor_options(cfg: Config) -> dict:
    """Ray options of one teacher actor of the rationale pool (``rationales.*_per_actor``).

    >>> teacher_actor_options(Config())
    {'num_cpus': 1.0, 'num_gpus': None, 'resources': None}
    """
    rc = cfg.rationales
    return {"num_cpus": rc.cpus_per_actor, "num_gpus": rc.gpus_per_actor or None,
            "resources": cfg.large.placement() or None}


def teacher_need(cfg: Config) -> Need:
    """The whole teacher pool at once."""
    rc = cfg.rationales
    per_actor = {"CPU": rc.cpus_per_actor, "GPU": rc.gpus_per_actor, **cfg.large.placement()}
    return Need(nonzero(add_resources(per_actor, times=rc.num_actors)),
                f"rationales runs {rc.num_actors} teacher actors",
                "lower rationales.num_actors / cpus_per_actor / gpus_per_actor or clear large.ray_resource")


def short_of(need: dict[str, float], have: dict[str, float]) -> dict[str, float]:
    """The part of ``need`` that ``have`` (a cluster's resources) lacks.

    >>> short_of({"CPU": 2, "GPU": 1, "large_lm": 0.001}, {"CPU": 4.0, "GPU": 0.0})
    {'GPU': 1, 'large_lm': 0.001}
    """
    return {k: v for k, v in need.items() if v > 0 and have.get(k, 0.0) < v}
