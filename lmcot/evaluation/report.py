"""The paper-style report of a run, and the figures it draws (training curves included).

Reads only files in the run directory (each evaluation's metrics, per-question details and aspect
scores and the training stages' logs through :mod:`lmcot.runs`, the rationale stats), so it
can be rebuilt at any time without models: accuracy per dataset and method (the paper's
table), rationale aspect scores per model (marked where the judge rates a row above the gold
chain of thought, beside how well the judge tells gold from corrupted rationales), the large-LM
cost per question, training curves, and one finding on whether rationale quality and accuracy
moved together.
Refinement draws its own curves with :func:`plot_refine_curves`, while it finishes.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmcot.config.evaluation import ORACLE_METHODS
from lmcot.evaluation.claims import claims_table, interval_table, sample_table
from lmcot.evaluation.claims import scores as question_scores
from lmcot.evaluation.judge_probe import DESCRIPTIONS
from lmcot.evaluation.statistics import HOLDS, REVERSED, fmt_interval, paired
from lmcot.runs.evals import read_aspects, read_details, read_judge_separation, read_metrics
from lmcot.runs.jsonl import load_jsonl
from lmcot.runs.rundir import RunDir, write_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- reading the run directory ----------------------------------------------------------------
def load_evals(run_dir: RunDir) -> dict[str, dict]:
    """label -> metrics of every finished evaluation, in a stable order."""
    return {label: read_metrics(run_dir.eval_dir(label)) for label in run_dir.eval_labels()}


def load_aspects(run_dir: RunDir) -> dict[str, dict[str, float]]:
    """label -> mean aspect scores of every evaluation whose rationales were judged."""
    judged = {label: read_aspects(run_dir.eval_dir(label)) for label in run_dir.eval_labels()}
    return {label: scores for label, scores in judged.items() if scores is not None}


def accuracy_table(evals: dict[str, dict]) -> str:
    datasets = sorted({d for m in evals.values() for d in m["datasets"]})
    head = "| method | k | " + " | ".join(f"{d} EM | {d} F1" for d in datasets) + " |"
    sep = "|---|---:|" + "---:|---:|" * len(datasets)
    rows = [head, sep]
    for label, m in evals.items():
        cells = []
        for d in datasets:
            s = m["datasets"].get(d)
            cells += [f"{100 * s['em']:.1f}", f"{100 * s['f1']:.1f}"] if s else ["", ""]
        rows.append(f"| {label} | {m['self_consistency']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cost_table(evals: dict[str, dict]) -> str:
    """Calls and tokens per question; large-LM prompt and completion tokens apart (completion tokens
    are what LM-guided CoT saves). Evaluations under an oracle context mode are marked."""
    rows = ["| method | large-LM calls / q | large-LM prompt tokens / q | large-LM completion tokens / q | "
            "small-LM tokens / q |", "|---|---:|---:|---:|---:|"]
    oracle = []
    for label, m in evals.items():
        ds = list(m["datasets"].values())
        mean = lambda key: sum(d.get(key, 0) for d in ds) / len(ds)  # noqa: E731
        mark = " (oracle)" if m.get("oracle") else ""
        reads = m.get("method") if m.get("method") in ORACLE_METHODS else m.get("context_mode")
        oracle += [f"{label} ({reads})"] if m.get("oracle") else []
        rows.append(f"| {label}{mark} | {mean('large_calls_per_question'):.2f} | "
                    f"{mean('large_prompt_tokens_per_question'):.0f} | {mean('large_completion_tokens_per_question'):.0f} | "
                    f"{mean('small_tokens_per_question'):.0f} |")
    rows += ["", "Tokens are those of the fitted prompts the models received; the n samples of one prompt count "
             "its prompt tokens once (one prefill, as OpenAI-compatible servers report usage for n)."]
    if oracle:
        rows += ["", "**Oracle**: " + ", ".join(oracle) + " read the gold supporting facts (to build the context, "
                 "or as the rationale); reference rows, not comparable with a fair evaluation."]
    return "\n".join(rows)


def gold_row(evals: dict[str, dict], aspects: dict[str, dict[str, float]]) -> str | None:
    """The label of the judged gold-rationale reference row (the aspect table's yardstick), if any."""
    return next((label for label, m in evals.items() if m.get("method") == "gold_rationale" and label in aspects),
                None)


def above_gold(aspects: dict[str, dict[str, float]], gold: str | None) -> dict[str, list[str]]:
    """label -> the aspects on which the judge rates that row's rationales above the gold chain of thought
    (as the table shows them, to three decimals); rows judged above it on none are left out."""
    ref = aspects.get(gold) if gold else None
    if not ref:
        return {}
    above = {label: [a for a, x in scores.items() if a in ref and round(x, 3) > round(ref[a], 3)]
             for label, scores in aspects.items() if label != gold}
    return {label: marked for label, marked in above.items() if marked}


def aspect_table(aspects: dict[str, dict[str, float]], evals: dict[str, dict] | None = None, gold: str | None = None,
                 separation: dict | None = None) -> str:
    """Mean P(yes) per aspect and row. With the ``gold`` row, a † marks each score above the gold chain of
    thought's (a footnote per row gives its F1 against gold's, from ``evals``); with the judge's
    ``separation`` (:mod:`lmcot.evaluation.judge_probe`), a last line says on which aspects the judge
    tells the gold chain of thought from a corrupted copy."""
    if not aspects:
        return "_No rationales were judged._"
    names = list(next(iter(aspects.values())))
    above = above_gold(aspects, gold)
    rows = ["| rationales of | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, scores in aspects.items():
        rows.append(f"| {label} | " + " | ".join(f"{scores[a]:.3f}" + (" †" if a in above.get(label, ()) else "")
                                                 for a in names) + " |")
    probed = (separation or {}).get("aspects", {})
    if probed:
        says = {a: f"{'yes' if s['separates'] else 'no'} ({s['auc']:.2f})" if s.get("n") else "—"
                for a, s in probed.items()}
        rows.append("| *judge separates gold from corrupted (AUC)* | " + " | ".join(says.get(a, "") for a in names)
                    + " |")
    notes = []
    for label, marked in above.items():
        separated = sum(bool(probed.get(a, {}).get("separates")) for a in marked)
        note = (f"† `{label}` is judged above the gold chain of thought (`{gold}`) on {len(marked)} of "
                f"{len(names)} aspects" + (f" ({separated} of them aspects the judge separates)" if probed else ""))
        if evals and label in evals and gold in evals:
            d_f1 = 100 * (mean_f1(evals[label]) - mean_f1(evals[gold]))
            note += f" while its answers are {abs(d_f1):.1f} F1 {'worse' if d_f1 < 0 else 'better'}"
            if d_f1 < 0:
                note += ": the judge rewards what it likes, not what helps the large LM answer, so it can be gamed"
        notes.append(note + ".")
    return "\n".join(rows + ([""] + notes if notes else []))


SEPARATION_INTRO = ("How well the judge tells the gold chain of thought from a copy corrupted to violate each aspect, "
                    "on the questions `{gold}` judged: both are judged on the same question and context; Δ is gold − "
                    "corrupted mean P(yes), paired, with its 95% bootstrap interval; AUC is the chance that a random "
                    "gold rationale scores above a random corrupted one (ties count half; 0.5 is chance). The judge "
                    "separates an aspect when the interval is above zero; a row's score on an aspect it does not "
                    "separate says nothing about that aspect.")


def separation_table(separation: dict) -> str:
    """Per aspect: the corruption, n, mean P(yes) of gold and corrupted, Δ with its interval, AUC, the verdict."""
    rows = ["| aspect | corrupted by | n | gold P(yes) | corrupted P(yes) | Δ gold − corrupted | AUC | separates |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    for aspect, s in separation["aspects"].items():
        kind = DESCRIPTIONS.get(s["corruption"], s["corruption"])
        if not s.get("n"):
            rows.append(f"| {aspect} | {kind} | 0 | | | | | not measured (no question it applies to) |")
            continue
        verdict = "yes" if s["separates"] else "no, reversed" if s["verdict"] == REVERSED else "no"
        rows.append(f"| {aspect} | {kind} | {s['n']} | {s['gold']:.3f} | {s['corrupted']:.3f} | "
                    f"{s['delta']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}] | {s['auc']:.2f} | {verdict} |")
    return "\n".join(rows)


def mean_f1(metrics: dict) -> float:
    ds = list(metrics["datasets"].values())
    return sum(d["f1"] for d in ds) / len(ds)


CLAIMS_INTRO = ("Each claim compares two rows on the same questions: ΔF1 is B - A in F1 points with its 95% "
                "paired bootstrap interval; the verdict follows the interval (holds: above zero; reversed: below; "
                "otherwise not distinguishable from noise). Binary questions (yes/no, or one of two named options) "
                "and open ones are shown apart.")
SAMPLES_INTRO = ("Per-sample F1 is one sampled rationale's answer on average; best-of-k is the vote's ceiling (an "
                 "oracle picking the best sample); a vote can only help where best-of-k is above per-sample.")

# Changes below these count as flat: a judge's mean P(yes) moving by +0.001, or F1 by a tenth of a point, is
# noise at any dev-set size, and calling it a direction would make the finding line claim a trend it lacks.
FLAT_QUALITY = 0.005  # mean P(yes) over the judged aspects
FLAT_F1 = 0.005  # half an F1 point


def finding(evals: dict[str, dict], aspects: dict[str, dict[str, float]], before: str, after: str,
            details: dict[str, dict[str, dict]] | None = None) -> str:
    """Did refinement move rationale quality and accuracy in the same direction?

    With per-question scores (``details``), accuracy's direction is the paired 95% interval's
    verdict (an interval across zero is flat, however large the point estimate); without them,
    the mean F1 against :data:`FLAT_F1`."""
    if before not in evals or after not in evals or before not in aspects or after not in aspects:
        return "Not enough results to compare the distilled and refined small LMs."
    d_f1 = mean_f1(evals[after]) - mean_f1(evals[before])
    quality = lambda label: sum(aspects[label].values()) / len(aspects[label])  # noqa: E731
    d_q = quality(after) - quality(before)
    sign = lambda x, flat: (x > flat) - (x < -flat)  # noqa: E731
    s_q, s_f1 = sign(d_q, FLAT_QUALITY), sign(d_f1, FLAT_F1)
    interval = ""
    if details and details.get(before) and details.get(after):
        p = paired(question_scores(details[before]), question_scores(details[after]))
        d_f1, s_f1 = p.delta, {HOLDS: 1, REVERSED: -1}.get(p.verdict, 0)
        interval = f" (paired 95% interval {fmt_interval(p.delta, p.low, p.high)} over {p.n} questions)"
    if s_q == s_f1 == 0:
        verdict = "both stayed flat"
    elif s_q == s_f1:
        verdict = "moved together"
    elif s_q == 0:
        verdict = "moved apart (accuracy changed, quality stayed flat)"
    elif s_f1 == 0:
        verdict = "moved apart (quality changed, accuracy stayed flat)"
    else:
        verdict = "moved apart (in opposite directions)"
    flat_f1 = "an F1 interval across zero" if interval else f"{100 * FLAT_F1:g} points in F1"
    flat = f" (flat: a change under {FLAT_QUALITY} in quality, {flat_f1})" if 0 in (s_q, s_f1) else ""
    return (f"From `{before}` to `{after}`, mean rationale quality changed by {d_q:+.3f} and mean F1 by "
            f"{100 * d_f1:+.1f} points{interval}: quality and accuracy **{verdict}**{flat}. The paper observed that the "
            "best-judged rationales do not always give the best answers; the reward-weight search trades the two.")


def rationale_table(stats: dict) -> str:
    """What the rationale filter kept of the teacher's rationales, why it dropped the rest, and how
    many named only what their context states (all of them, and the kept ones)."""
    if not stats.get("rows"):
        return ""
    rows = ["| teacher rationales | rows | right answer | kept | faithful (all) | faithful (kept) | dropped: reasons |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for name, s in [("all", stats), *sorted(stats.get("datasets", {}).items())]:
        reasons = ", ".join(f"{k} {v}" for k, v in s.get("reasons", {}).items()) or "none"
        right = s["kept"] + s.get("reasons", {}).get("unfaithful", 0)  # what the answer filter alone keeps
        rows.append(f"| {name} | {s['rows']} | {right} | {s['kept']} ({100 * s['kept_ratio']:.0f}%) | "
                    f"{100 * s.get('faithful_ratio', 0):.0f}% | {100 * s.get('kept_faithful_ratio', 0):.0f}% | {reasons} |")
    return "\n".join(rows)


def plot_accuracy(evals: dict[str, dict], path: Path) -> None:
    plt = _pyplot()
    datasets = sorted({d for m in evals.values() for d in m["datasets"]})
    labels = list(evals)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 0.45 * len(labels) + 1.5), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        f1 = [100 * evals[label]["datasets"].get(d, {}).get("f1", 0.0) for label in labels]
        em = [100 * evals[label]["datasets"].get(d, {}).get("em", 0.0) for label in labels]
        ys = range(len(labels))
        ax.barh([y + 0.2 for y in ys], f1, height=0.4, label="F1")
        ax.barh([y - 0.2 for y in ys], em, height=0.4, label="EM")
        ax.set_yticks(list(ys), labels)
        ax.invert_yaxis()
        ax.set_title(d)
        ax.set_xlabel("%")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_cost(evals: dict[str, dict], path: Path) -> None:
    plt = _pyplot()
    labels = list(evals)
    tokens = [sum(d["large_tokens_per_question"] for d in evals[l]["datasets"].values()) / len(evals[l]["datasets"])
              for l in labels]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(labels) + 1.5))
    ax.barh(labels, tokens)
    ax.invert_yaxis()
    ax.set_xlabel("large-LM tokens per question")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_aspects(aspects: dict[str, dict[str, float]], path: Path) -> None:
    plt = _pyplot()
    names = list(next(iter(aspects.values())))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(aspects)
    for i, (label, scores) in enumerate(aspects.items()):
        ax.bar([j + i * width for j in range(len(names))], [scores[a] for a in names], width=width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right")
    ax.set_ylabel("judge P(yes)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(distill: list[dict], refine: list[dict], path: Path) -> None:
    """Distillation losses and refinement reward/loss/KL, side by side (the report's figure)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    loss = [(r["step"], r["loss"]) for r in distill if "loss" in r and "step" in r]
    if loss:
        axes[0].plot(*zip(*loss), label="train loss")
    val = [(r["step"], r["eval_loss"]) for r in distill if "eval_loss" in r and "step" in r]
    if val:
        axes[0].plot(*zip(*val), marker="o", label="validation loss")
    axes[0].set_title("distillation")
    axes[0].set_xlabel("step")
    steps = [r.get("step", i) for i, r in enumerate(refine)]
    for key in ("reward", "loss", "kl"):
        values = [r.get(key) for r in refine]
        if any(v is not None for v in values):
            axes[1].plot(steps, values, label=key)
    axes[1].set_title("refinement")
    axes[1].set_xlabel("step")
    for ax in axes:
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_refine_curves(history: list[dict], path: Path) -> None:
    """Reward components, total reward, KL, loss and the reward-call share of step time, per step."""
    plt = _pyplot()
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    components = sorted({k for h in history for k in h if k.startswith("reward/")})
    for key in ["reward", *components]:
        axes[0].plot(steps, [h.get(key) for h in history], label=key, linewidth=2.5 if key == "reward" else 1)
    axes[0].set_title("rewards (means)")
    if history:
        axes[0].legend(fontsize=7)
    for ax, key, title in ((axes[1], "kl", "KL to the distilled model"), (axes[2], "loss", "loss"),
                           (axes[3], "reward_share", "share of step time in reward calls")):
        ax.plot(steps, [h.get(key) for h in history])
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(run_dir: RunDir, *, before: str = "lm_guided-distilled", after: str = "lm_guided-refined",
                 notes: list[str] | None = None, order: list[str] | None = None) -> Path:
    """Render ``RUN/report.md`` and its figures; returns the report path.

    ``order`` lists evaluation labels in the order the tables show them (others follow).
    """
    evals, aspects = load_evals(run_dir), load_aspects(run_dir)
    rank = {label: i for i, label in enumerate(order or [])}
    evals = dict(sorted(evals.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
    aspects = dict(sorted(aspects.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
    distill, refine = load_jsonl(run_dir.metrics("distill")), load_jsonl(run_dir.metrics("refine"))

    def figure(name: str, plot, *data) -> str:
        path = run_dir.report_figure(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(*data, path)
        return f"![{name}]({path.relative_to(run_dir.root).as_posix()})"

    details = {label: read_details(run_dir.eval_dir(label)) for label in evals}
    parts = ["# lmcot report", "", f"Run directory: `{run_dir.root}`", ""]
    parts += notes or []
    if evals:
        parts += ["## Claims (paired on the same questions)", "", CLAIMS_INTRO, "", claims_table(details), ""]
        parts += ["## Accuracy (EM / F1, %)", "", accuracy_table(evals), "", figure("accuracy", plot_accuracy, evals), ""]
        intervals = interval_table(details)
        if intervals:
            parts += ["F1 with its 95% bootstrap interval and n, open and binary questions apart:", "", intervals, ""]
        samples = sample_table(details)
        if samples:
            parts += ["## Self-consistency: what a vote can reach", "", SAMPLES_INTRO, "", samples, ""]
        parts += ["## Cost of each method", "", cost_table(evals), "", figure("cost", plot_cost, evals), ""]
    stats = json.loads(run_dir.rationale_stats.read_text()) if run_dir.rationale_stats.is_file() else {}
    if rationale_table(stats):
        parts += ["## Distillation data (the teacher's rationales and the filter)", "", rationale_table(stats), ""]
    gold = gold_row(evals, aspects)
    separation = read_judge_separation(run_dir.eval_dir(gold)) if gold else None
    parts += ["## Rationale quality (large-LM judge, P(yes) per aspect)", "",
              aspect_table(aspects, evals, gold, separation), ""]
    if separation:
        parts += [SEPARATION_INTRO.format(gold=gold), "", separation_table(separation), ""]
    elif gold:
        parts += [f"The judge's separation of gold from corrupted rationales was not measured: evaluate `{gold}` "
                  "again with judging on.", ""]
    if aspects:
        parts += [figure("aspects", plot_aspects, aspects), ""]
    if distill or refine:
        parts += ["## Training curves", "", figure("curves", plot_curves, distill, refine), ""]
    parts += ["## Finding", "", finding(evals, aspects, before, after, details), ""]
    write_atomic(run_dir.report, "\n".join(parts))
    return run_dir.report
