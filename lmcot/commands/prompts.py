"""``lmcot prompts``: the exact text each model receives, with its token count and that model's limit.

For the first dev questions of each dataset, every role's prompt (:data:`lmcot.prompting.roles.ROLES`:
its builder, its model and the reply it reserves, as the method sends it) is built from the same
context a run builds (:func:`lmcot.datasets.context.build_context`) and fitted by the same
:class:`~lmcot.prompting.fitting.PromptFitter` the generator of that model uses (chat template
applied, context shortened to the input limit), so what is printed is what is sent.
The rationale inside the large LM's and the judge's prompts is a stand-in of the longest
length the small LM may write (``generation.rationale_max_new_tokens``), the worst case
for the context budget.
"""

from __future__ import annotations

from lmcot.datasets.context import build_context
from lmcot.datasets.data import load_split
from lmcot.models.loading import context_tokenizer
from lmcot.planning.plan import describe_model
from lmcot.prompting.roles import METHOD_ROLES, ROLES

ALL_ROLES = tuple(ROLES)


def stand_in_rationale(tokens: int) -> str:
    """A placeholder rationale of about ``tokens`` tokens.

    >>> stand_in_rationale(12)
    '(a rationale of up to 12 tokens) step step step step'
    """
    head = f"(a rationale of up to {tokens} tokens)"
    return head + " step" * max(1, tokens - 8)


def list_prompts(cfg, *, method: str | None = None, limit: int = 2) -> list[dict]:
    """One record per (question, prompt): ``id, dataset, role, model, tokens, limit, counted, text``."""
    if method is not None and method not in METHOD_ROLES:
        raise ValueError(f"--method {method!r}: use one of {', '.join(METHOD_ROLES)}")
    small = describe_model(cfg.small, "small.max_input_tokens")
    large = describe_model(cfg.large, "large.max_input_tokens")
    gen = cfg.generation
    cap_tokenizer = context_tokenizer(cfg.large) if cfg.data.context_max_tokens and large.exact_tokens else None
    rationale = stand_in_rationale(gen.rationale_max_new_tokens)
    roles = METHOD_ROLES[method] if method else ALL_ROLES
    records = []
    for spec in cfg.data.datasets:
        for ex in load_split(spec, "dev")[:limit]:
            context = build_context(ex, mode=cfg.data.context_mode, tokenizer=cap_tokenizer,
                                    max_tokens=cfg.data.context_max_tokens if cap_tokenizer else 0)
            for role in (ROLES[name] for name in roles):
                info = small if role.model == "small" else large
                reserve = role.reserve(gen)
                for prompt in role.prompts(ex.question, context, rationale):
                    fitted = info.fitter.fit(prompt, reserve)
                    records.append({
                        "id": ex.id, "dataset": spec.name, "role": prompt.role, "model": info.name,
                        "tokens": fitted.tokens, "limit": info.fitter.budget(reserve) or None,
                        "context_cut": fitted.context_cut,
                        "counted": "tokenizer" if info.exact_tokens else "estimate (~4 characters per token)",
                        "text": fitted.text,
                    })
    return records


def render_listing(records: list[dict]) -> str:
    out = []
    for r in records:
        cut = ", context shortened" if r["context_cut"] else ""
        out.append(f"=== {r['dataset']}/{r['id']} · {r['role']} · {r['model']} · {r['tokens']} / "
                   f"{r['limit'] or 'no limit'} tokens ({r['counted']}{cut})")
        out.append(r["text"])
        out.append("")
    return "\n".join(out)
