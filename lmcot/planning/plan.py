"""``lmcot plan``: will this config fit its GPUs and its models' input limits? Asked before any work.

For every actor and worker the config starts (teacher actors, distillation and
refinement workers, judge actors, the evaluation actor, search trials) the plan
estimates its GPU memory at the configured shapes (:mod:`lmcot.planning.memory`) and compares
it with the GPU share it asks for; for every model it reports the prompt budget: the
input limit (:func:`lmcot.prompting.fitting.input_limit`), what the longest template takes with an
empty context, and the room left for the context. Anything that cannot fit fails with
the field to change. Models are described without downloading them: a local folder or
``tiny:`` model is read, a known hub id (FLAN-T5-Large/XXL, Qwen2.5-0.5B/14B-Instruct)
uses the published config shipped in ``lmcot/known_models/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from lmcot.prompting.fitting import PromptFitter, input_limit
from lmcot.prompting.roles import ROLES, rollout_tokens
from lmcot.planning.memory import GIB, Shape, generation_bytes, training_bytes

log = logging.getLogger(__name__)
DEFAULT_GPU_GB = 80.0
QUESTION_TOKENS = 64
"""Room kept for a long question when checking that a template leaves space for the context."""


class PlanError(ValueError):
    """The config asks for something that cannot fit; the message names the fields to change."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    limit: int
    shape: Shape
    fitter: PromptFitter
    exact_tokens: bool
    """True when the real tokenizer counts the prompts; False: estimated from characters."""


@dataclass(frozen=True)
class Row:
    component: str
    count: int
    gpus: float
    need_gb: float
    have_gb: float
    fits: bool
    fix: str
    shares: str = ""
    """What else holds memory on the same card (engines in one process, actors sharing a card)."""


@dataclass(frozen=True)
class Budget:
    role: str
    model: str
    limit: int
    template_tokens: int
    context_room: int
    exact: bool
    fits: bool


def known_model(name: str) -> dict | None:
    """The shipped published config of a known hub model, or None."""
    entry = resources.files("lmcot") / "known_models" / (name.replace("/", "--") + ".json")
    return json.loads(entry.read_text()) if entry.is_file() else None


def describe_model(spec, field: str) -> ModelInfo:
    """Config, family, limit and shape of a model spec, without downloading anything."""
    from transformers import AutoConfig

    known = known_model(spec.name_or_path)
    if known and not Path(spec.name_or_path).exists():
        config = AutoConfig.for_model(**known["config"])
        family = "seq2seq" if config.is_encoder_decoder else "causal"

        class DeclaredLimit:
            model_max_length = known["tokenizer"]["model_max_length"]

        limit = input_limit(DeclaredLimit(), config, spec.max_input_tokens)
        fitter = PromptFitter(model=spec.name_or_path, limit=limit, family=family, field=field)
        return ModelInfo(spec.name_or_path, family, limit, Shape.from_config(config, family), fitter, False)
    from lmcot.models.loading import detect_family, load_tokenizer, resolve_model_path

    path = resolve_model_path(spec.name_or_path)
    family = detect_family(path, spec.family, spec.revision)
    config = AutoConfig.from_pretrained(path, revision=spec.revision or None, trust_remote_code=False)
    tokenizer = load_tokenizer(path, family, spec.revision)
    fitter = PromptFitter.for_model(spec, tokenizer, family, config, field=field)
    return ModelInfo(spec.name_or_path, family, fitter.limit, Shape.from_config(config, family), fitter, True)


# -- prompt budgets ---------------------------------------------------------------------------
FILLERS = ("word", "the", "a", "and", "is", "of")


def filler(fitter) -> str:
    """A word this tokenizer reads as one token (most tokenizers read ``word`` so; a tokenizer
    learned from other text may split it), so ``n`` repeats stand for ``n`` tokens."""
    for word in FILLERS:
        if fitter.count(f"{word} " * 16) - fitter.count(f"{word} " * 8) == 8:
            return word
    return FILLERS[0]


def _longest_prompts(role: str, fitter, rationale_tokens: int) -> list[str]:
    """``role``'s prompts (:data:`lmcot.prompting.roles.ROLES`) with an empty context, a long question
    and a rationale of the longest length."""
    word = filler(fitter)
    return ROLES[role].prompts(f"{word} " * QUESTION_TOKENS, "", f"{word} " * rationale_tokens)


def prompt_budgets(cfg, small: ModelInfo, large: ModelInfo) -> list[Budget]:
    """One budget per role of the role table, each fitted with the reply room that role reserves."""
    gen = cfg.generation
    out = []
    for role in ROLES.values():
        info = small if role.model == "small" else large
        budget = info.fitter.budget(role.reserve(gen)) or 10**9
        template = max(info.fitter.count(info.fitter.format(t))
                       for t in _longest_prompts(role.name, info.fitter, gen.rationale_max_new_tokens))
        room = budget - template
        out.append(Budget(role.name, info.name, info.limit, template, room, info.exact_tokens, room > 0))
    return out


def _reads(budget: Budget) -> str:
    """``small`` or ``large``: the config section of the model a budget's role is read by."""
    return ROLES[budget.role].model


# -- memory -----------------------------------------------------------------------------------
def _row(component: str, count: int, gpus: float, need: int, gpu_gb: float, fix: str, shares: str = "") -> Row:
    have = gpus * gpu_gb
    return Row(component, count, gpus, round(need / GIB, 1), round(have, 1), gpus == 0 or need / GIB <= have, fix,
               shares)


def vllm_bytes(spec, shape: Shape, gpu_gb: float, *, prompt: int, new_tokens: int) -> tuple[int, int]:
    """(reserved, needed) bytes of one vLLM engine: it reserves ``gpu_memory_utilization`` of the whole
    card at start whatever the model needs, and pages its KV cache into what the weights leave of that,
    so the reservation must hold the weights and at least one sequence of the longest prompt.

    >>> from lmcot.config import ModelSpec
    >>> shape = Shape("causal", 14_770_000_000, 5120, 40, 1024, 48, 0, 152064)
    >>> reserved, needed = vllm_bytes(ModelSpec(backend="vllm"), shape, 80.0, prompt=2400, new_tokens=160)
    >>> reserved / GIB, 28 < needed / GIB < 40
    (72.0, True)
    """
    needed = generation_bytes(shape, rows=1, prompt=prompt, new_tokens=new_tokens)
    return int(spec.gpu_memory_utilization * gpu_gb * GIB), needed


def _card_share(gpus: float) -> str:
    """Who shares a card with an actor asking for ``gpus`` of one (Ray packs fractional requests)."""
    if 0 < gpus < 1:
        return f"up to {int(1 / gpus)} such actors per card"
    return ""


def longest_prompt(info: ModelInfo, budgets: list[Budget], context_cap: int) -> int:
    """The longest prompt a model will read: its limit, or less where ``data.context_max_tokens``
    bounds the context (templates counted from the budgets); 2048 when neither bounds it."""
    template = max(b.template_tokens for b in budgets if b.model == info.name)
    bounds = [b for b in (info.limit, template + context_cap if context_cap else 0) if b]
    return min(bounds) if bounds else 2048


def generator_rows(gen, batch_rows: int, prompt: int, new_tokens: int) -> int:
    """Rows a generator batches at the longest prompt: ``batch_rows``, or fewer where
    ``generation.max_batch_tokens`` binds (short prompts may then batch more rows, as many as fit).

    >>> from lmcot.config import GenerationConfig
    >>> generator_rows(GenerationConfig(batch_size=160, max_batch_tokens=36864), 160, 1024, 128)
    32
    """
    if gen.max_batch_tokens:
        return max(1, min(batch_rows, gen.max_batch_tokens // (prompt + new_tokens)))
    return batch_rows


def memory_rows(cfg, small: ModelInfo, large: ModelInfo, gpu_gb: float,
                budgets: list[Budget]) -> tuple[list[Row], int, list[str]]:
    """Memory rows of every actor and worker, the longest small-LM prompt, and the problems no row shows
    (a vLLM reservation too small for its own model)."""
    gen, dc, rc = cfg.generation, cfg.distill, cfg.refine
    s_limit = longest_prompt(small, [b for b in budgets if _reads(b) == "small"], cfg.data.context_max_tokens)
    l_limit = longest_prompt(large, [b for b in budgets if _reads(b) == "large"], cfg.data.context_max_tokens)
    rows = []
    vllm = cfg.large.backend == "vllm"
    reserve_fix = ("; the vLLM engine reserves large.gpu_memory_utilization="
                   f"{cfg.large.gpu_memory_utilization:g} of the card: lower it" if vllm else "")

    def large_engine(batch_rows: int, prompt: int, new_tokens: int) -> tuple[int, str]:
        """Bytes of one large-LM engine and its name: vLLM holds its reservation, HF what the batch needs."""
        if not vllm:
            return generation_bytes(large.shape, rows=batch_rows, prompt=prompt, new_tokens=new_tokens), "HF"
        reserved, needed = vllm_bytes(cfg.large, large.shape, gpu_gb, prompt=prompt, new_tokens=new_tokens)
        if needed > reserved:
            short.append((needed, f"the large LM's vLLM engine needs about {needed / GIB:.1f} GiB for its weights and one "
                         f"sequence of {prompt} + {new_tokens} tokens, over the {reserved / GIB:.1f} GiB it reserves "
                         f"(large.gpu_memory_utilization={cfg.large.gpu_memory_utilization:g} of {gpu_gb:g} GiB): "
                         "raise large.gpu_memory_utilization or lower large.max_input_tokens"))
        return reserved, f"vLLM reserving {cfg.large.gpu_memory_utilization:g} of the card"

    short: list[tuple[int, str]] = []  # (bytes, problem): the longest sequence's is the one to report
    teacher_new = ROLES["teacher"].reserve(gen)
    teacher, engine = large_engine(generator_rows(gen, gen.batch_size, l_limit, teacher_new), l_limit, teacher_new)
    ra = cfg.rationales
    rows.append(_row("teacher actor (large LM)", ra.num_actors, ra.gpus_per_actor, teacher, gpu_gb,
                     "lower generation.batch_size / max_batch_tokens or large.max_input_tokens, or raise "
                     "rationales.gpus_per_actor" + reserve_fix,
                     ", ".join(filter(None, [f"large LM ({engine})", _card_share(ra.gpus_per_actor)]))))
    source = min(dc.max_source_tokens or s_limit, s_limit)
    sc = dc.scaling
    distill = training_bytes(small.shape, batch=dc.per_device_batch_size, source=source, target=dc.max_target_tokens,
                             zero_stage=sc.zero_stage, world=sc.num_workers, bf16=sc.bf16,
                             checkpointing=sc.gradient_checkpointing)
    rows.append(_row("distill worker (small LM)", sc.num_workers, 1.0 if sc.use_gpu else 0.0, distill, gpu_gb,
                     "set distill.scaling.gradient_checkpointing: true, or lower distill.per_device_batch_size"))
    rc_sc = rc.scaling
    refine = training_bytes(small.shape, batch=rc.prompts_per_step * rc.num_generations, source=s_limit,
                            target=rollout_tokens(rc, gen),
                            zero_stage=rc_sc.zero_stage, world=rc_sc.num_workers, bf16=rc_sc.bf16,
                            checkpointing=rc_sc.gradient_checkpointing)
    refine += small.shape.params * (2 if rc_sc.bf16 else 4) * (rc.beta > 0)  # the frozen reference model
    rows.append(_row("refine worker (small LM)", rc_sc.num_workers, 1.0 if rc_sc.use_gpu else 0.0, refine, gpu_gb,
                     "set refine.scaling.gradient_checkpointing: true, or lower refine.prompts_per_step"))
    judge, engine = large_engine(rc.judge_batch_size, l_limit, ROLES["judge"].reserve(gen))
    rows.append(_row("judge actor (large LM)", rc.judge_num_actors, rc.judge_num_gpus, judge, gpu_gb,
                     "lower refine.judge_batch_size or raise refine.judge_num_gpus" + reserve_fix,
                     ", ".join(filter(None, [f"large LM ({engine})", _card_share(rc.judge_num_gpus)]))))
    # the evaluation's longest replies: the small LM's rationale, the large LM's CoT (rationale and answer)
    s_new, l_new = ROLES["small"].reserve(gen), ROLES["cot"].reserve(gen)
    small_bytes = generation_bytes(small.shape, rows=generator_rows(gen, gen.batch_size, s_limit, s_new),
                                   prompt=s_limit, new_tokens=s_new)
    large_bytes, engine = large_engine(generator_rows(gen, gen.batch_size, l_limit, l_new), l_limit, l_new)
    both, shares = small_bytes + large_bytes, f"small LM (HF, {small_bytes / GIB:.1f} GiB) + large LM ({engine})"
    if cfg.eval.on_cluster:
        rows.append(_row("eval actor (both LMs)", 1, cfg.eval.num_gpus, both, gpu_gb,
                         "lower generation.batch_size or raise eval.num_gpus" + reserve_fix, shares))
    rows.append(_row("search trial (both LMs)", cfg.search.max_concurrent_trials, cfg.search.trial_gpus, both, gpu_gb,
                     "lower generation.batch_size or raise search.trial_gpus" + reserve_fix,
                     ", ".join(filter(None, [shares, _card_share(cfg.search.trial_gpus)]))))
    return rows, s_limit, [max(short)[1]] if short else []


# -- the plan ---------------------------------------------------------------------------------
def make_plan(cfg, gpu_gb: float = DEFAULT_GPU_GB) -> dict:
    """Every budget and memory row of ``cfg``, and the problems found (empty when it fits)."""
    small = describe_model(cfg.small, "small.max_input_tokens")
    large = describe_model(cfg.large, "large.max_input_tokens")
    budgets = prompt_budgets(cfg, small, large)
    rows, longest_small, short = memory_rows(cfg, small, large, gpu_gb, budgets)
    stages = {}  # problem -> the stage it stops (budgets stop every stage)
    problems = short + [f"{b.role} prompts for {b.model} need {b.template_tokens} tokens with an empty context, over its "
                f"limit of {b.limit}: raise {_reads(b)}.max_input_tokens"
                for b in budgets if not b.fits]
    for r in rows:
        if not r.fits:
            text = f"{r.component} needs about {r.need_gb} GiB but asks for {r.gpus} GPU(s) of {gpu_gb:g} GiB: {r.fix}"
            problems.append(text)
            stages[text] = COMPONENT_STAGES[r.component.split(" ")[0]]
    dc = cfg.distill
    if dc.max_source_tokens and dc.max_source_tokens < longest_small:
        text = (f"distill.max_source_tokens={dc.max_source_tokens} is below the longest small-LM prompt "
                f"(~{longest_small} tokens): training prompts would be fitted tighter than at inference; "
                f"set it to {longest_small} or more, or lower small.max_input_tokens to match")
        problems.append(text)
        stages[text] = ("distill",)
    return {"gpu_gb": gpu_gb, "budgets": [asdict(b) for b in budgets], "memory": [asdict(r) for r in rows],
            "problems": problems, "stages": {p: list(stages.get(p, ("*",))) for p in problems}}


COMPONENT_STAGES = {"teacher": ("generate-rationales",), "distill": ("distill",), "refine": ("refine", "search"),
                    "judge": ("refine", "search"), "eval": ("eval",), "search": ("search",)}
"""Which stage commands a memory problem stops (``lmcot run`` runs them all)."""


def check_plan(cfg, gpu_gb: float = DEFAULT_GPU_GB, stage: str = "run") -> dict:
    """:func:`make_plan`, raising :class:`PlanError` with the problems that stop ``stage`` (a stage
    command, or ``run`` for the whole pipeline); problems of other stages are only logged."""
    plan = make_plan(cfg, gpu_gb)
    blocking = [p for p in plan["problems"] if stage == "run" or {"*", stage} & set(plan["stages"][p])]
    for p in plan["problems"]:
        if p not in blocking:
            log.warning("plan: a later stage will not fit: %s", p)
    if blocking:
        raise PlanError(f"the config cannot run {stage} as planned (`lmcot plan` shows why):\n- "
                        + "\n- ".join(blocking))
    return plan


def render_plan(plan: dict) -> str:
    lines = ["## Prompt budgets", "", "| role | model | input limit | template tokens | room for context | counted |",
             "|---|---|---:|---:|---:|---|"]
    for b in plan["budgets"]:
        lines.append(f"| {b['role']} | {b['model']} | {b['limit'] or 'none'} | {b['template_tokens']} | "
                     f"{b['context_room'] if b['limit'] else 'all'} | {'tokenizer' if b['exact'] else '~4 chars/token'} |")
    lines += ["", f"## GPU memory (GPUs of {plan['gpu_gb']:g} GiB)", "",
              "| component | count | GPUs each | need (GiB) | has (GiB) | fits | on the card |",
              "|---|---:|---:|---:|---:|---|---|"]
    for r in plan["memory"]:
        has = f"{r['have_gb']}" if r["gpus"] else "CPU"
        lines.append(f"| {r['component']} | {r['count']} | {r['gpus']:g} | {r['need_gb']} | {has} | "
                     f"{'yes' if r['fits'] else '**no**'} | {r.get('shares', '')} |")
    lines += ["", "Problems:" if plan["problems"] else "Everything fits."] + [f"- {p}" for p in plan["problems"]]
    return "\n".join(lines) + "\n"
