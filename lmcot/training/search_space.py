"""The reward-weight search, minus Ray: search space, best trial, Pareto front, report files.

``lmcot.stages.search`` runs the trials on Ray Tune; everything that does not need Ray
lives here so it is tested in milliseconds:

- :func:`parse_space` turns ``search.space`` into plain :class:`Dim` descriptions
  (a fixed weight, a uniform range, or a grid list) and :func:`check_space` checks them
  against ``refine``'s reward rules before any trial starts; :func:`check_reward_config`
  checks a whole config's reward names before any stage works;
- :class:`TrialResult` is what one trial reported (its rounds, F1, quality);
  :func:`best_trial` picks the weights to keep and :func:`pareto_front` the trials no
  other trial beats on both task F1 and rationale quality;
- :func:`render_trials_md`, :func:`plot_pareto` and :func:`best_weights_yaml` write
  ``trials.md``, ``pareto.png`` and ``best_reward_weights.yaml``.

The paper found that the best-judged rationales do not always give the best answers;
``pareto.png`` shows that trade-off across the searched weights.
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from lmcot.config import ConfigError

KINDS = ("fixed", "uniform", "grid")


@dataclass(frozen=True)
class Dim:
    """One searched reward weight: ``fixed`` (one value), ``uniform`` (low, high) or ``grid`` (values)."""

    name: str
    kind: str
    values: tuple[float, ...]


def parse_space(space: Mapping[str, Sequence[float]], sampler: str = "random") -> list[Dim]:
    """``search.space`` as :class:`Dim` descriptions, or a ValueError naming the entry and the fix.

    >>> parse_space({"task": [1.0], "fluency": [0.0, 0.5]})
    [Dim(name='task', kind='fixed', values=(1.0,)), Dim(name='fluency', kind='uniform', values=(0.0, 0.5))]
    >>> parse_space({"fluency": [0.0, 0.5, 1.0]}, "grid")
    [Dim(name='fluency', kind='grid', values=(0.0, 0.5, 1.0))]
    >>> parse_space({"fluncy": [0.0, 1.0]})
    Traceback (most recent call last):
    ...
    ValueError: space names unknown reward 'fluncy' (did you mean 'fluency'?); valid: ...
    """
    from lmcot.training.rewards import REWARDS

    if not space:
        raise ValueError("space is empty: name at least one reward to search, e.g. {factuality: [0.0, 1.0]}")
    dims = []
    for name, raw in space.items():
        if name not in REWARDS:
            match = difflib.get_close_matches(name, list(REWARDS), n=1, cutoff=0.5)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise ValueError(f"space names unknown reward {name!r}{hint}; valid: {', '.join(REWARDS)}")
        values = tuple(float(v) for v in raw)
        if not values:
            raise ValueError(f"space.{name} is empty: give one value (fixed), [low, high] (random) or a list (grid)")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"space.{name}={list(values)} must hold finite numbers")
        if len(values) == 1:
            dims.append(Dim(name, "fixed", values))
        elif sampler == "grid":
            if len(set(values)) != len(values):
                raise ValueError(f"space.{name}={list(values)} repeats a value: each grid value once")
            dims.append(Dim(name, "grid", values))
        elif len(values) == 2:
            if values[0] >= values[1]:
                raise ValueError(f"space.{name}=[{values[0]:g}, {values[1]:g}] is a [low, high] range with low < high "
                                 f"(for a fixed weight give one value: [{values[0]:g}])")
            dims.append(Dim(name, "uniform", values))
        else:
            raise ValueError(f"space.{name} has {len(values)} values: with sampler=random give [low, high] "
                             "(or one value to fix it); for a list of values to try set sampler=grid")
    return dims


def check_space(dims: Sequence[Dim], base_weights: Mapping[str, float], aspect_mode: str = "weighted",
                quality_aspects: Sequence[str] = ()) -> None:
    """Fail before any trial starts when some trial's weights would be refused by refinement.

    Every trial uses ``refine.reward_weights`` overlaid with its searched values, so the
    names together must obey ``refine.aspect_mode``, and no trial may have every weight zero.

    >>> check_space(parse_space({"quality": [0.0, 1.0]}), {"task": 1.0})
    Traceback (most recent call last):
    ...
    ValueError: search.space with refine.reward_weights: reward_weights.quality is the aggregated ...
    >>> check_space(parse_space({"task": [0.0, 1.0]}, "grid"), {"task": 1.0})
    Traceback (most recent call last):
    ...
    ValueError: search.space allows a trial whose reward weights are all zero ({'task': 0.0}): ...
    """
    from lmcot.training.rewards import check_reward_weights

    names = {**base_weights, **{d.name: 1.0 for d in dims}}
    try:
        check_reward_weights({n: 1.0 for n in names}, aspect_mode, quality_aspects)
    except ValueError as exc:
        raise ValueError(f"search.space with refine.reward_weights: {exc}") from None
    searched = {d.name for d in dims}
    fixed_rest = {n: w for n, w in base_weights.items() if n not in searched}
    if any(w != 0 for w in fixed_rest.values()):
        return
    # every weight can be zero at once only if each dimension can be exactly zero
    if all(0.0 in d.values and d.kind != "uniform" for d in dims):
        zero = {**fixed_rest, **{d.name: 0.0 for d in dims}}
        raise ValueError(f"search.space allows a trial whose reward weights are all zero ({zero}): "
                         "drop 0 from one list or keep one reward fixed, e.g. task: [1.0]")


def check_reward_config(cfg) -> None:
    """``refine.reward_weights`` and ``search.space`` of a config, checked against the rewards.

    The config sections hold plain data and know no reward code, so the names are checked here,
    before any work: the command line calls this for every stage command (``lmcot run`` would
    otherwise generate rationales and distil before refinement read a misspelt weight). Callers
    that skip the command line meet the same checks in the drivers: refinement's ``prepare``
    (:func:`~lmcot.training.rewards.reward_plan`) and the search's ``check`` (:func:`parse_space`,
    :func:`check_space`). Raises :class:`~lmcot.config.ConfigError` naming the section, the field
    and the fix.

    >>> from lmcot.config import load_config
    >>> check_reward_config(load_config("tiny", ["refine.reward_weights={taks: 1.0}"]))
    Traceback (most recent call last):
    ...
    lmcot.config.loader.ConfigError: refine: reward_weights names unknown reward 'taks' (did you mean 'task'?); ...
    """
    from lmcot.training.rewards import check_reward_weights

    rc, sc = cfg.refine, cfg.search
    try:
        check_reward_weights(rc.reward_weights, rc.aspect_mode, rc.quality_aspects)
    except ValueError as exc:
        raise ConfigError(f"refine: {exc}") from None
    try:
        parse_space(sc.space, sc.sampler)
    except ValueError as exc:
        raise ConfigError(f"search: {exc}") from None


def grid_size(dims: Sequence[Dim]) -> int:
    """Points in the grid of the ``grid`` dimensions (1 when there are none)."""
    return math.prod(len(d.values) for d in dims if d.kind == "grid")


def num_trials(dims: Sequence[Dim], sampler: str, num_samples: int) -> int:
    """Trials a search runs: ``num_samples``, times the grid size with ``sampler: grid``.

    >>> num_trials(parse_space({"task": [0.5, 1.0], "fluency": [0, 1]}, "grid"), "grid", 2)
    8
    """
    return num_samples * (grid_size(dims) if sampler == "grid" else 1)


def grid_points(dims: Sequence[Dim]) -> list[dict[str, float]]:
    """Every combination of the grid values (fixed dimensions included), in order.

    >>> grid_points(parse_space({"task": [1.0], "fluency": [0.0, 0.5]}, "grid"))
    [{'task': 1.0, 'fluency': 0.0}, {'task': 1.0, 'fluency': 0.5}]
    """
    return [dict(zip([d.name for d in dims], combo)) for combo in itertools.product(*(d.values for d in dims))]


def trial_weights(base: Mapping[str, float], sampled: Mapping[str, float]) -> dict[str, float]:
    """A trial's reward weights: ``refine.reward_weights`` overlaid with the sampled values.

    >>> trial_weights({"task": 1.0, "fluency": 0.1}, {"fluency": 0.7, "relevance": 0.2})
    {'task': 1.0, 'fluency': 0.7, 'relevance': 0.2}
    """
    return {**{k: float(v) for k, v in base.items()}, **{k: float(v) for k, v in sampled.items()}}


# -- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialResult:
    """What one trial reported: its weights, the rounds it ran and its last F1 / quality."""

    trial_id: str
    weights: dict[str, float]
    rounds: int = 0
    """Rounds the trial reported (0: it never finished one)."""
    f1: float | None = None
    """Dev F1 of LM-guided CoT after the last reported round (mean over datasets)."""
    quality: float | None = None
    """Mean judged aspect score of those rationales."""
    status: str = "TERMINATED"
    """Tune's trial status: TERMINATED, ERROR, RUNNING, PENDING."""
    error: str = ""
    history: list[dict] = field(default_factory=list)
    """Every reported round: {round, f1, quality, ...}."""

    def stopped_early(self, max_rounds: int) -> bool:
        """Ended cleanly before the last round: ASHA stopped it."""
        return self.status == "TERMINATED" and 0 < self.rounds < max_rounds

    def outcome(self, max_rounds: int) -> str:
        if self.status == "ERROR":
            return "error"
        if self.stopped_early(max_rounds):
            return f"stopped early (ASHA, round {self.rounds})"
        if self.rounds >= max_rounds:
            return "completed"
        return self.status.lower()


def best_trial(trials: Sequence[TrialResult], max_rounds: int) -> TrialResult | None:
    """The trial whose weights to keep: highest F1, ties broken by quality, then trial id.

    Trials that ran every round come first: a trial ASHA stopped early was measured after
    less training and lost its rung, so its F1 is not compared with the finished ones'. A
    trial with no reported round never counts. None when no trial reported anything.

    >>> t = [TrialResult("a", {}, 3, 0.4, 0.5), TrialResult("b", {}, 1, 0.9, 0.5), TrialResult("c", {}, 3, 0.4, 0.6)]
    >>> best_trial(t, 3).trial_id
    'c'
    """
    scored = [t for t in trials if t.rounds > 0 and t.f1 is not None]
    if not scored:
        return None
    return min(scored, key=lambda t: (t.rounds < max_rounds, -t.f1, -(t.quality or 0.0), t.trial_id))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point dominates (both coordinates maximised).

    A point is dominated when another is at least as good on both coordinates and better
    on one; equal points are all on the front.

    >>> pareto_front([(0.5, 0.5), (0.6, 0.4), (0.4, 0.4), (0.5, 0.6), (0.5, 0.6)])
    [1, 3, 4]
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def _scored(trials: Sequence[TrialResult]) -> list[TrialResult]:
    return [t for t in trials if t.f1 is not None and t.quality is not None]


def render_trials_md(trials: Sequence[TrialResult], *, max_rounds: int, best_id: str | None = None,
                     steps_per_round: int = 0) -> str:
    """``trials.md``: one row per trial (weights, rounds run, F1, quality, outcome), best first marked."""
    names = sorted({n for t in trials for n in t.weights})
    scored = _scored(trials)
    front = {scored[i].trial_id for i in pareto_front([(t.f1, t.quality) for t in scored])}
    lines = [
        "# Reward-weight search",
        "",
        f"{len(trials)} trials, up to {max_rounds} rounds"
        + (f" of {steps_per_round} refinement steps" if steps_per_round else "")
        + "; F1 = dev-set F1 of LM-guided CoT (mean over datasets) after the trial's last round, "
        "quality = mean judged aspect score of its rationales. **best** = the weights kept in "
        "`best_reward_weights.yaml`; front = on the Pareto front of F1 and quality.",
        "",
        "| trial | " + " | ".join(names) + " | rounds | F1 | quality | outcome | |",
        "|---|" + "---:|" * len(names) + "---:|---:|---:|---|---|",
    ]
    for t in sorted(trials, key=lambda t: t.trial_id):
        weights = " | ".join(f"{t.weights[n]:.3g}" if n in t.weights else "" for n in names)
        f1 = f"{100 * t.f1:.1f}" if t.f1 is not None else "-"
        quality = f"{t.quality:.3f}" if t.quality is not None else "-"
        marks = ", ".join(m for m, on in (("**best**", t.trial_id == best_id), ("front", t.trial_id in front)) if on)
        lines.append(f"| {t.trial_id} | {weights} | {t.rounds} | {f1} | {quality} | {t.outcome(max_rounds)} | {marks} |")
    return "\n".join(lines) + "\n"


def plot_pareto(trials: Sequence[TrialResult], path: str | Path, *, best_id: str | None = None) -> Path:
    """``pareto.png``: task F1 against mean rationale quality per trial, the Pareto front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = _scored(trials)
    front = pareto_front([(t.f1, t.quality) for t in scored])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    others = [t for i, t in enumerate(scored) if i not in front]
    if others:
        ax.scatter([t.quality for t in others], [100 * t.f1 for t in others], c="tab:gray", alpha=0.7,
                   label="trial")
    if front:
        pts = sorted((scored[i] for i in front), key=lambda t: t.quality)
        ax.plot([t.quality for t in pts], [100 * t.f1 for t in pts], "o-", c="tab:red", label="Pareto front")
    for t in scored:
        label = t.trial_id + (" (best)" if t.trial_id == best_id else "")
        ax.annotate(label, (t.quality, 100 * t.f1), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("mean rationale quality (judged aspects, P(yes))")
    ax.set_ylabel("task F1 of LM-guided CoT (dev, %)")
    ax.set_title("Reward-weight search: answers vs rationale quality")
    if scored:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial reported a result", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def best_weights_yaml(cfg, trial: TrialResult, *, max_rounds: int) -> str:
    """A full lmcot config (``cfg`` with ``refine.reward_weights`` = the trial's) with a comment header.

    ``search.enabled`` is turned off, so ``lmcot run --config`` with this file refines with
    these weights instead of searching again.

    ``lmcot refine --config RUN/search/best_reward_weights.yaml`` accepts it as it is.
    """
    best = cfg.replace(refine=replace(cfg.refine, reward_weights=dict(trial.weights)),
                       search=replace(cfg.search, enabled=False))
    weights = ", ".join(f"{k}: {v:.4g}" for k, v in trial.weights.items())
    header = [
        "# Best reward weights of `lmcot search`, as a full lmcot config (search.enabled off: the search is done):",
        "#   lmcot refine --config RUN/search/best_reward_weights.yaml --run-dir RUN",
        f"# trial {trial.trial_id}: {trial.rounds}/{max_rounds} rounds, dev F1 {100 * (trial.f1 or 0):.2f}, "
        f"mean rationale quality {trial.quality if trial.quality is not None else float('nan'):.4f}",
        f"# refine.reward_weights: {{{weights}}}",
    ]
    return "\n".join(header) + "\n" + best.to_yaml()
