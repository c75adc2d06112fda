"""Every world seed of the tiny world, by purpose: the one place that says which data may make which choice.

Why: a recipe chosen by looking at the data it is reported on reports the choice, not the method. The
tiny world can draw any number of fresh worlds, so each purpose gets its own seeds, and the ones whose
results are reported (evaluation) are never used to choose anything:

- **pretraining**: the worlds the two T5s learn language, reading and the prompt formats on
  (``tools/pretrain_tiny_world.py``), all below :data:`PRETRAINING_LIMIT` minus the reserved seeds;
- **preset training**: the world the ``tiny_world`` preset distils and refines on;
- **tuning**: where recipe choices are made (sampling of self-consistency, the rationale filter,
  refinement's settings); ``docs/design.md`` records each choice with the tuning figure that made it;
- **evaluation**: what ``make run``'s report is measured on; never used for a choice; a world a failure
  was diagnosed on is **spent** (:data:`SPENT`) and replaced by a fresh one;
- **tests**: the shipped dev sets and the unseen-world test.

Reserved seeds sit at or above :data:`PRETRAINING_LIMIT` (the shipped dev world, tuning, evaluation) or are
listed in :data:`LEGACY_RESERVED` (two held-out worlds below the limit), so no ``--worlds N``
or ``--seed S`` of the pretraining tool can reach them: :func:`pretraining_seeds` refuses instead.
"""

from __future__ import annotations

SHIPPED_DEV = 20240404
"""The shipped sample files (``lmcot/data/*_synthetic_*``): the tests' dev sets."""
PRESET_TRAIN = 101
"""The ``tiny_world`` preset's train split (``lmcot/data/tiny_world/*_train.json``)."""
UNSEEN_TEST = 777
"""The unseen-world test (``tests/test_tiny_world.py``)."""
TUNING = (1_000_001, 1_000_002)
"""Worlds where recipe choices are made."""
EVALUATION = (2_000_004,)
"""Worlds ``make run`` reports on (``lmcot/data/tiny_world/eval/``); no choice is made on them."""
SPENT = (2_000_001, 2_000_002, 2_000_003)
"""Earlier evaluation worlds: one a diagnosis was read off (which rows fail and why), or ones earlier models
were reported on before they were retrained. They could have informed later choices, so they are never
reported as unseen again and never used to choose; their figures stay on record."""
PRETRAINING_LIMIT = 1_000_000
"""Pretraining seeds are below this; every held-out purpose above it (by range, not by listing)."""
LEGACY_RESERVED = (PRESET_TRAIN, UNSEEN_TEST)
"""Held-out worlds inside the pretraining range (the preset's train split, the unseen-world test): skipped by seed."""
EVAL_WORLD_SHAPE = {"train": 1000, "dev": 400}
"""How an evaluation or tuning world is drawn: the shipped samples' 5:2 train:dev draw order scaled up
(the dev split drawn after the train split, whose questions it never repeats), so its question types
are distributed like the shipped dev sets'; only the dev split is used."""


def pretraining_seeds(seed: int, n: int) -> list[int]:
    """``n`` pretraining world seeds derived from ``seed`` (``seed * 100_000 + 1, + 2, ...``), skipping the
    legacy reserved ones; refuses any seed at or above :data:`PRETRAINING_LIMIT`.

    >>> pretraining_seeds(0, 3), 101 in pretraining_seeds(0, 200)
    ([1, 2, 3], False)
    >>> pretraining_seeds(10, 1)
    Traceback (most recent call last):
    ...
    ValueError: pretraining world 1000001 (--seed 10) reaches the reserved seeds at 1000000 and above; use --seed 0-9 and fewer --worlds
    """
    out, i = [], 0
    while len(out) < n:
        s = seed * 100_000 + 1 + i
        i += 1
        if s >= PRETRAINING_LIMIT or s >= (seed + 1) * 100_000:
            raise ValueError(f"pretraining world {s} (--seed {seed}) reaches the reserved seeds at "
                             f"{PRETRAINING_LIMIT} and above; use --seed 0-9 and fewer --worlds")
        if s not in LEGACY_RESERVED:
            out.append(s)
    return out


def purpose(seed: int) -> str:
    """What a world seed is for.

    >>> purpose(5), purpose(101), purpose(2_000_004), purpose(1_000_002), purpose(2_000_003)
    ('pretraining', 'preset training', 'evaluation', 'tuning', 'spent evaluation')
    """
    named = {SHIPPED_DEV: "shipped dev sets (tests)", PRESET_TRAIN: "preset training", UNSEEN_TEST: "unseen-world test"}
    if seed in named:
        return named[seed]
    if seed in TUNING:
        return "tuning"
    if seed in EVALUATION:
        return "evaluation"
    if seed in SPENT:
        return "spent evaluation"
    return "pretraining" if 0 < seed < PRETRAINING_LIMIT else "unassigned (held out)"


def evaluation_world_files(seed: int) -> dict[str, str]:
    """The dev files of an evaluation (or tuning) world as ``lmcot/data/tiny_world/eval/`` holds them:
    ``{hotpotqa,2wiki}_dev.json`` with gold chains of thought, and the world's 2Wiki aliases."""
    from lmcot.tinyworld import synthetic

    files = synthetic.generate(seed=seed, rationales=True, **EVAL_WORLD_SHAPE)
    return {"hotpotqa_dev.json": files["hotpotqa_synthetic_dev.json"], "2wiki_dev.json": files["2wiki_synthetic_dev.json"],
            "2wiki_id_aliases.json": files["2wiki_synthetic_id_aliases.json"]}


def write_evaluation_world(seed: int):
    """:func:`evaluation_world_files` of ``seed`` written to a fresh temporary folder, which is returned
    (the tuning tools read a tuning world's dev split from files, as the preset reads its own)."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix=f"tiny-world-{seed}-"))
    for name, text in evaluation_world_files(seed).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder
