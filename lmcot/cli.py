"""The ``lmcot`` command: one sub-command per stage, plus scoring and tiny-model tools.

Stage commands share ``--config CONFIG --run-dir RUN [--set section.field=value ...]``;
the ``jobs/*.py`` scripts that ``ray job submit`` runs are thin calls into this module.

Output. A command's result is the only thing it prints on stdout (JSON with ``--json``, and
for stage commands and ``score``), so a script can parse it; logs, progress bars and whatever
a library prints go to stderr (:func:`results_only_on_stdout`). Every import is made inside
the command that needs it, and ``plan`` and ``prompts`` (which read configs and tokenizers)
run with DeepSpeed and Ray marked absent (:func:`without_training_libraries`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys

# command -> (module with run(cfg, run_dir), help)
STAGES = {
    "eval": ("lmcot.stages.evaluate", "evaluate standard / CoT / LM-guided CoT on the dev split"),
    "generate-rationales": ("lmcot.stages.rationales", "teacher rationales for the training set (Ray Data)"),
    "distill": ("lmcot.stages.distill", "fine-tune the small LM on kept rationales (Ray Train + DeepSpeed)"),
    "refine": ("lmcot.stages.refine", "RL-refine the small LM on rationale and task rewards (Ray Train)"),
    "search": ("lmcot.stages.search", "search the reward weights (Ray Tune)"),
    "serve": ("lmcot.stages.serve", "deploy the small-LM -> large-LM graph over HTTP (Ray Serve)"),
    "run": ("lmcot.stages.pipeline", "the whole pipeline: rationales -> distill -> refine -> eval -> report"),
    "seeds": ("lmcot.stages.seeds", "the pipeline again per training seed (pipeline.training_seeds) on one set "
                                    "of teacher rationales; each claim per seed and pooled"),
}


def _stage_parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--config", default="tiny", help="preset name (tiny, paper, qwen) or YAML path [tiny]")
    p.add_argument("--run-dir", required=True, help="run directory shared by all stages")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set eval.limit=8 (repeatable)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmcot", description="LM-guided chain-of-thought on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in STAGES.items():
        p = _stage_parser(sub, name, help_text)
        if name == "eval":
            p.add_argument("--method", choices=["standard", "cot", "lm_guided"], help="shorthand for --set eval.method=")
            p.add_argument("--self-consistency", type=int, metavar="K", help="shorthand for --set eval.self_consistency=")
            p.add_argument("--limit", type=int, metavar="N", help="shorthand for --set eval.limit=")
            p.add_argument("--adaptive", action="store_true", default=None,
                           help="adaptive self-consistency: shorthand for --set eval.adaptive=true")
    score = sub.add_parser("score", help="official HotpotQA / 2Wiki answer metrics of a prediction file")
    score.add_argument("--gold", required=True, help="official-format dataset JSON")
    score.add_argument("--predictions", required=True, help='official prediction JSON {"answer": {id: text}}')
    score.add_argument("--aliases", default=None, help="2Wiki id_aliases.json for alias-aware scoring")
    compare = sub.add_parser("compare", help="paired comparison of two evaluations (B - A, 95% interval, verdict)")
    compare.add_argument("a", help="evaluation folder RUN/eval/<label>/ (or its predictions.json): the baseline")
    compare.add_argument("b", help="evaluation folder (or predictions.json) compared against A")
    compare.add_argument("--gold", default=None, help="official-format dev JSON: score both prediction files here")
    compare.add_argument("--format", dest="fmt", choices=["hotpotqa", "2wiki"], default="hotpotqa",
                         help="layout of --gold [hotpotqa]")
    compare.add_argument("--aliases", default=None, help="2Wiki id_aliases.json for alias-aware scoring (with --gold)")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    plan = sub.add_parser("plan", help="check a config's GPU memory and prompt budgets before running it")
    plan.add_argument("--config", default="tiny", help="preset name or YAML path [tiny]")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    plan.add_argument("--gpu-memory-gb", type=float, default=None, help="memory of one GPU [80]")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    listing = sub.add_parser("prompts", help="the exact text each model receives, with token counts and limits")
    listing.add_argument("--config", default="tiny", help="preset name or YAML path [tiny]")
    listing.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    listing.add_argument("--method", choices=["standard", "cot", "lm_guided"], default=None,
                         help="only this method's prompts [every role: teacher, small, answer, standard, cot, judge]")
    listing.add_argument("--limit", type=int, default=2, metavar="N", help="dev questions per dataset [2]")
    listing.add_argument("--json", action="store_true", help="one JSON list of objects")
    tiny = sub.add_parser("make-tiny-models", help="build the offline tiny models (into the tiny: cache, or DIR)")
    tiny.add_argument("dir", nargs="?", default=None,
                      help="write plain <name>/ folders here instead of warming the tiny: cache")
    return parser


def _eval_overrides(args) -> list[str]:
    extra = []
    for flag, key in (("method", "method"), ("self_consistency", "self_consistency"), ("limit", "limit"),
                      ("adaptive", "adaptive")):
        value = getattr(args, flag, None)
        if value is not None:
            extra.append(f"eval.{key}={value}")
    return extra


def check_run_dir(path: str) -> None:
    """Refuse a relative run dir inside a Ray job: it would land in Ray's temporary copy of the working dir.

    ``ray job submit`` runs the entrypoint in a copy of ``--working-dir`` that Ray deletes
    later, so ``runs/x`` would be written there and lost. Outside a job it resolves
    against the current directory, as usual.
    """
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ and not os.path.isabs(os.path.expanduser(path)):
        raise ValueError(
            f"--run-dir {path!r} is relative, and this runs inside a Ray job, whose working directory is a "
            "temporary copy that Ray deletes: pass an absolute path on storage the cluster shares "
            "(e.g. --run-dir /mnt/runs/x)"
        )


def run_stage(command: str, args) -> object:
    from lmcot.config import load_config
    from lmcot.runs.rundir import RunDir, write_atomic
    from lmcot.training.search_space import check_reward_config

    overrides = list(args.overrides) + (_eval_overrides(args) if command == "eval" else [])
    cfg = load_config(args.config, overrides)
    check_reward_config(cfg)  # reward names and search space: before `lmcot run` works for hours
    check_run_dir(args.run_dir)
    if command != "serve":  # hours of work ahead: a config that cannot fit fails now (see `lmcot plan`)
        from lmcot.planning.plan import check_plan

        check_plan(cfg, stage=command)
    run_dir = RunDir(args.run_dir).ensure()
    write_atomic(run_dir.config_file, cfg.to_yaml())
    module = importlib.import_module(STAGES[command][0])
    return module.run(cfg, run_dir)


TRAINING_LIBRARIES = ("deepspeed", "ray")


def without_training_libraries() -> None:
    """Mark DeepSpeed and Ray absent in this process (unless already imported).

    ``plan`` and ``prompts`` never use them, but building a tiny model on a cold cache calls
    transformers' ``save_pretrained``, which asks accelerate whether the model is wrapped in a
    DeepSpeed engine, which imports DeepSpeed (seconds, and a warning on stdout) when it is
    installed. A ``None`` in ``sys.modules`` makes ``importlib.util.find_spec`` report the
    package missing, so such probes skip it, and a real import of it fails loudly instead.
    """
    for name in TRAINING_LIBRARIES:
        sys.modules.setdefault(name, None)


@contextlib.contextmanager
def results_only_on_stdout():
    """While a command works, whatever is printed goes to stderr; yields the real stdout for
    the result. (DeepSpeed's logger, for one, writes its warnings to stdout; a logger created
    inside this block keeps writing to stderr afterwards.)"""
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield out


def inspect_config(args) -> int:
    """``lmcot plan`` (exit 1 when something cannot fit) and ``lmcot prompts``."""
    from lmcot.config import load_config
    from lmcot.training.search_space import check_reward_config

    without_training_libraries()
    with results_only_on_stdout() as out:
        cfg = load_config(args.config, args.overrides)
        check_reward_config(cfg)
        if args.command == "prompts":
            from lmcot.commands.prompts import list_prompts, render_listing

            records = list_prompts(cfg, method=args.method, limit=args.limit)
            text, code = (json.dumps(records, indent=1) if args.json else render_listing(records)), 0
        else:
            from lmcot.planning.plan import DEFAULT_GPU_GB, make_plan, render_plan

            plan = make_plan(cfg, args.gpu_memory_gb or DEFAULT_GPU_GB)
            text, code = (json.dumps(plan, indent=1) if args.json else render_plan(plan)), 1 if plan["problems"] else 0
    print(text, file=out)
    return code


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LMCOT_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from lmcot.config import ConfigError

    try:
        if args.command == "score":
            from lmcot.scoring.metrics import score_files

            with results_only_on_stdout() as out:
                scores = score_files(args.gold, args.predictions, args.aliases)
            print(json.dumps(scores), file=out)
            return 0
        if args.command == "compare":
            from lmcot.commands.compare import compare

            result = compare(args.a, args.b, gold=args.gold, fmt=args.fmt, aliases=args.aliases)
            print(json.dumps(result, indent=2) if args.json else
                  "\n".join(v["summary"] for v in result.values() if isinstance(v, dict)))
            return 0
        if args.command == "make-tiny-models":
            from lmcot.models.loading import tiny_cache_dir
            from lmcot.models.tiny import make_tiny_models

            target, versioned = (args.dir, False) if args.dir else (tiny_cache_dir(), True)
            with results_only_on_stdout() as out:
                made = make_tiny_models(target, versioned=versioned)
            for name, path in made.items():
                print(f"{name}: {path}", file=out)
            return 0
        if args.command in ("plan", "prompts"):
            return inspect_config(args)
        with results_only_on_stdout():
            result = run_stage(args.command, args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        # Our own errors already name the field and the fix: show them without a traceback.
        print(f"lmcot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
