"""Teacher core: prompt rows, parsing and filtering, generation rows, and the rationale shards (the shard
store itself is tested in test_shards.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmcot.config import ModelSpec, RationalesConfig, load_config  # noqa: E402
from lmcot.datasets.data import load_split  # noqa: E402
from lmcot.scoring.metrics import load_aliases  # noqa: E402
from lmcot.models.loading import context_tokenizer  # noqa: E402
from lmcot.runs.shards import read_keys, shard_paths  # noqa: E402
from lmcot.training.teacher import (KEY_COLUMNS, SCHEMA, check_generation_settings, expected_keys,  # noqa: E402
                                    generate_rows, judge_output, question_rows, rationale_store, read_rationales,
                                    refilter, rows_to_table, split_evenly, summarize, teacher_manifest,
                                    teacher_prompt)


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", ["data.datasets.0.limit=6", "data.datasets.1.limit=3"])


@pytest.fixture(scope="module")
def examples(cfg):
    return {spec.name: load_split(spec, "train") for spec in cfg.data.datasets}


def row(dataset="hotpotqa", id="q1", sample=0, **extra) -> dict:
    base = dict(dataset=dataset, id=id, sample=sample, question="Who?", context="A: b.", rationale="r", output="o",
                teacher_answer="x", gold_answer="x", em=1.0, f1=1.0, kept=True, reason="", prompt_tokens=5,
                completion_tokens=3, teacher="t")
    return base | extra


# -- parsing and filtering ------------------------------------------------------------------
@pytest.mark.parametrize("text, golds, rc, expect", [
    ("X is in Y. So the answer is: Paris.", ["Paris"], RationalesConfig(), (True, "", 1.0)),
    ("X is in Y. So the answer is: London", ["Paris"], RationalesConfig(), (False, "wrong_answer", 0.0)),
    ("So the answer is: the Paris", ["Paris"], RationalesConfig(), (True, "", 1.0)),  # official normalisation
    ("So the answer is: Paris France", ["Paris"], RationalesConfig(filter="f1", f1_threshold=0.5), (True, "", 0.0)),
    ("So the answer is: Paris France Europe", ["Paris"], RationalesConfig(filter="f1", f1_threshold=0.6),
     (False, "low_f1", 0.0)),
    ("So the answer is: USA", ["United States", "USA"], RationalesConfig(), (True, "", 1.0)),  # 2Wiki alias
    ("a rambling rationale with no cue", ["Paris"], RationalesConfig(), (False, "no_answer", 0.0)),
    ("So the answer is:", ["Paris"], RationalesConfig(), (False, "no_answer", 0.0)),
    ("   ", ["Paris"], RationalesConfig(), (False, "empty_output", 0.0)),
    ("", ["Paris"], RationalesConfig(), (False, "empty_output", 0.0)),
    ("no cue", ["Paris"], RationalesConfig(filter="f1", f1_threshold=0.01), (False, "no_answer", 0.0)),
    # f1_threshold 0 keeps everything (a random teacher's plumbing run); the reason still says why it is odd.
    ("no cue", ["Paris"], RationalesConfig(filter="f1", f1_threshold=0.0), (True, "no_answer", 0.0)),
    ("So the answer is: London", ["Paris"], RationalesConfig(filter="f1", f1_threshold=0.0), (True, "", 0.0)),
])
def test_judge_output_keeps_only_right_answers(text, golds, rc, expect):
    r = judge_output(text, golds, rc)
    assert (r["kept"], r["reason"], r["em"]) == expect
    assert set(r) == {"rationale", "teacher_answer", "em", "f1", "kept", "reason"}
    if r["teacher_answer"]:
        assert r["teacher_answer"] and "answer is" not in r["rationale"]


def test_judge_output_rationale_is_the_text_before_the_cue():
    r = judge_output("Ann was born in Oslo. Oslo is in Norway. So the answer is: Norway.", ["Norway"],
                     RationalesConfig())
    assert r["rationale"] == "Ann was born in Oslo. Oslo is in Norway." and r["teacher_answer"] == "Norway"


@pytest.mark.parametrize("total, parts", [(0, 1), (7, 3), (64, 4), (1, 3)])
def test_split_evenly_sums_to_total(total, parts):
    pieces = split_evenly(total, parts)
    assert len(pieces) == parts and sum(pieces) == total and max(pieces) - min(pieces) <= 1


def test_many_samples_need_a_temperature():
    check_generation_settings(load_config("tiny", ["rationales.samples_per_question=1", "generation.temperature=0"]))
    with pytest.raises(ValueError, match="generation.temperature"):
        check_generation_settings(load_config("tiny", ["rationales.samples_per_question=3",
                                                       "generation.temperature=0"]))


# -- input rows and prompts -----------------------------------------------------------------
def test_question_rows_list_only_missing_samples(examples):
    hotpot = examples["hotpotqa"]
    done = {("hotpotqa", hotpot[0].id, 0), ("hotpotqa", hotpot[0].id, 1), ("hotpotqa", hotpot[1].id, 1),
            ("2wiki", hotpot[2].id, 0)}  # another dataset's key never hides this dataset's question
    rows = question_rows(hotpot, "hotpotqa", 2, done)
    assert [r["id"] for r in rows] == [ex.id for ex in hotpot[1:]]
    assert rows[0]["samples"] == [0] and all(r["samples"] == [0, 1] for r in rows[1:])
    assert expected_keys(hotpot, "hotpotqa", 2) - done == {("hotpotqa", r["id"], s) for r in rows for s in r["samples"]}
    json.dumps(rows)  # plain data: travels through Ray Data as Arrow


def test_question_rows_carry_2wiki_aliases(cfg, examples):
    spec = cfg.data.datasets[1]
    aliases = load_aliases(spec.aliases_path)
    rows = question_rows(examples["2wiki"], "2wiki", 1, aliases=aliases)
    for r, ex in zip(rows, examples["2wiki"]):
        assert r["golds"][0] == ex.answer
        assert set(r["golds"][1:]) == set(aliases.get(ex.answer_id, ())) - {ex.answer}


def test_teacher_prompt_rebuilds_the_context_in_the_teachers_token_budget(cfg, examples):
    tok = context_tokenizer(cfg.large)
    r = question_rows(examples["hotpotqa"][:1], "hotpotqa", 1)[0]
    context, prompt = teacher_prompt(r, cfg.data, tok)
    assert r["question"] in prompt and context in prompt and prompt.rstrip().endswith("Rationale:")
    assert len(tok(context, add_special_tokens=False)["input_ids"]) <= cfg.data.context_max_tokens
    unlimited, _ = teacher_prompt(r, cfg.data, None)
    assert len(unlimited) > len(context)  # the shipped contexts exceed the tiny budget


def test_api_teacher_has_no_tokenizer():
    assert context_tokenizer(ModelSpec("gpt-x", backend="openai", base_url="http://127.0.0.1:1/v1")) is None


def test_manifest_changes_with_the_teacher_not_with_the_pool(cfg):
    base = teacher_manifest(cfg)
    assert teacher_manifest(cfg.replace(rationales=RationalesConfig(num_actors=7, samples_per_question=2))) == base
    assert teacher_manifest(cfg.replace(large=ModelSpec("tiny:causal-large"))) != base


# -- generation with the real tiny teacher --------------------------------------------------
@pytest.fixture(scope="module")
def teacher(cfg):
    import torch

    from lmcot.models.factory import make_generator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from more, and loses a lot on a busy machine
    yield make_generator(cfg.large, cfg.generation)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("k", [1, 3])
def test_generate_rows_one_row_per_missing_sample(cfg, examples, teacher, k):
    cfg = load_config("tiny", [f"rationales.samples_per_question={k}", "generation.rationale_max_new_tokens=6",
                               "rationales.filter=em"])
    hotpot = examples["hotpotqa"][:2]
    rows = question_rows(hotpot, "hotpotqa", k, done={("hotpotqa", hotpot[0].id, 0)})
    out = generate_rows(teacher, rows, cfg, teacher.tokenizer, teacher="tiny:t5-large")
    keys = [(r["dataset"], r["id"], r["sample"]) for r in out]
    assert sorted(keys) == sorted(expected_keys(hotpot, "hotpotqa", k) - {("hotpotqa", hotpot[0].id, 0)})
    assert rows_to_table(out).schema == SCHEMA
    for r in out:
        assert r["gold_answer"] == next(ex.answer for ex in hotpot if ex.id == r["id"])
        assert r["prompt_tokens"] > 0 and 0 < r["completion_tokens"] <= 6
        # The random tiny teacher states no answer: judged, never a crash.
        assert r["kept"] is False and r["reason"] in ("no_answer", "empty_output", "wrong_answer")
    if k == 1:  # greedy: the same prompt gives the same text
        again = generate_rows(teacher, rows, cfg, teacher.tokenizer)
        assert [r["output"] for r in again] == [r["output"] for r in out]


class RuleTeacher:
    """Answers by role: its own CoT names the wrong city; asked from the rationale, the right one."""

    def __init__(self, right: str):
        self.right, self.calls = right, []

    def generate(self, prompts, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=None):
        from lmcot.models.generation import Generation

        self.calls.append([p.role for p in prompts])
        text = lambda p: self.right if p.role == "answer" else "A was born there. So the answer is: Nowhere."  # noqa: E731
        return [Generation((text(p),) * n, 10, 3 * n) for p in prompts]


def test_filter_can_judge_the_answer_the_large_lm_gives_from_the_rationale(cfg, examples):
    ex = examples["hotpotqa"][0]
    rows = question_rows([ex], "hotpotqa", 1, done=set())
    own = generate_rows(RuleTeacher(ex.answer), rows, load_config("tiny", ["rationales.filter=em"]))
    assert [(r["kept"], r["reason"]) for r in own] == [(False, "wrong_answer")]
    teacher = RuleTeacher(ex.answer)
    guided = generate_rows(teacher, rows, load_config("tiny", ["rationales.filter=em",
                                                               "rationales.judged_answer=from_rationale"]))
    assert teacher.calls == [["teacher"], ["answer"]]
    [r] = guided
    assert (r["kept"], r["teacher_answer"], r["rationale"]) == (True, ex.answer, "A was born there.")
    assert r["prompt_tokens"] == 20 and rows_to_table(guided).schema == SCHEMA


# -- the rationale shards ----------------------------------------------------------------------
def test_a_rationale_row_is_one_sample_of_one_question_of_one_dataset(tmp_path):
    with rationale_store(tmp_path, shard_rows=10) as store:
        assert store.add([row(), row(sample=1), row(dataset="2wiki"), row(id="q2"), row()]) == 4
        store.flush()
    assert read_keys(tmp_path, KEY_COLUMNS) == {("hotpotqa", "q1", 0), ("hotpotqa", "q1", 1), ("2wiki", "q1", 0),
                                                ("hotpotqa", "q2", 0)}


def test_store_shards_have_the_schema(tmp_path):
    with rationale_store(tmp_path, shard_rows=10) as store:
        store.add([row(), row(id="q2", kept=False, reason="no_answer", teacher_answer="")])
        store.flush()
    assert pq.read_schema(shard_paths(tmp_path)[0]).remove_metadata() == SCHEMA


def test_manifest_refuses_mixing_teachers(cfg, tmp_path):
    with rationale_store(tmp_path, shard_rows=1) as store:
        store.check_manifest(teacher_manifest(cfg))
        store.add([row()])
    with rationale_store(tmp_path) as store:
        store.check_manifest(teacher_manifest(cfg))  # same teacher: resumes
        with pytest.raises(ValueError, match="teacher.*--run-dir"):
            store.check_manifest(teacher_manifest(cfg.replace(large=ModelSpec("tiny:causal-large"))))


def test_summarize_counts_rows_kept_reasons_and_tokens(tmp_path):
    with rationale_store(tmp_path, shard_rows=2) as store:
        store.add([row(id="a"), row(id="b", kept=False, reason="no_answer", em=0.0, f1=0.0),
                   row(dataset="2wiki", id="c", kept=False, reason="wrong_answer", em=0.0, f1=0.5)])
        store.flush()
    s = summarize(Path(tmp_path))
    assert (s["rows"], s["kept"], s["reasons"]) == (3, 1, {"no_answer": 1, "wrong_answer": 1})
    assert s["kept_ratio"] == pytest.approx(1 / 3) and s["completion_tokens"] == 9 and s["prompt_tokens"] == 15
    assert s["datasets"]["2wiki"]["rows"] == 1 and s["datasets"]["hotpotqa"]["kept_ratio"] == 0.5
    assert summarize(tmp_path / "missing")["rows"] == 0


def test_a_changed_filter_refilters_the_rows_already_written(tmp_path):
    """A rerun with another filter decides again from the stored scores, not from the old decisions."""
    with rationale_store(tmp_path, shard_rows=2) as store:
        store.add([row(id="a"), row(id="b", kept=False, reason="wrong_answer", em=0.0, f1=0.5),
                   row(id="c", kept=False, reason="no_answer", em=0.0, f1=0.0)])
        store.flush()
    loose = RationalesConfig(filter="f1", f1_threshold=0.4)
    assert refilter(tmp_path, loose) == 1
    t = read_rationales(tmp_path, ["id", "kept", "reason"]).to_pylist()
    assert [(r["id"], r["kept"], r["reason"]) for r in t] == [("a", True, ""), ("b", True, ""), ("c", False, "no_answer")]
    assert refilter(tmp_path, loose) == 0, "the same filter changes nothing"
    assert refilter(tmp_path, RationalesConfig(filter="f1", f1_threshold=0.0)) == 1  # keep everything
    assert refilter(tmp_path, RationalesConfig()) == 2  # back to em: b and c dropped
    t = read_rationales(tmp_path, ["id", "kept", "reason"]).to_pylist()
    assert [(r["kept"], r["reason"]) for r in t] == [(True, ""), (False, "wrong_answer"), (False, "no_answer")]
    assert read_keys(tmp_path, KEY_COLUMNS) == {("hotpotqa", k, 0) for k in "abc"}


def test_vllm_backend_without_vllm_is_a_clear_error():
    import importlib.util

    from lmcot.models.factory import make_generator

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; the GPU tests cover it")
    with pytest.raises(ImportError, match="backend=vllm needs vLLM.*backend: hf"):
        make_generator(ModelSpec("tiny:causal-large", backend="vllm"))


def test_require_faithful_drops_a_right_answer_from_an_invented_name():
    from lmcot.config import RationalesConfig
    from lmcot.training.teacher import judge_output

    context = "Lisbra Tides: The band was formed in 1961 by Ethfenelle Tesberfen."
    lucky = "The band was formed in 1961 by Ulselo Ulbra. So the answer is: Lisbra Tides."
    faithful = "The band was formed in 1961 by Ethfenelle Tesberfen. So the answer is: Lisbra Tides."
    strict, loose = RationalesConfig(require_faithful=True), RationalesConfig()
    assert judge_output(lucky, ["Lisbra Tides"], loose, context)["kept"]
    assert (judge_output(lucky, ["Lisbra Tides"], strict, context)["reason"]) == "unfaithful"
    assert judge_output(faithful, ["Lisbra Tides"], strict, context)["kept"]
