"""`lmcot plan` and `lmcot prompts`: presets checked against 80 GB GPUs and their models' limits, offline."""

import json

import pytest

from lmcot.cli import main
from lmcot.config import load_config
from lmcot.planning.memory import GIB, Shape, training_bytes
from lmcot.planning.plan import PlanError, check_plan, describe_model, known_model, make_plan
from lmcot.commands.prompts import list_prompts

CUES = {"teacher": "Rationale:", "small": "Rationale:", "answer": "Answer:", "standard": "Answer:",
        "cot": "<answer>.\"", "judge": "Answer:"}


@pytest.mark.parametrize("preset", ["tiny", "paper", "qwen"])
def test_shipped_presets_fit_80gb_gpus_and_their_limits(preset):
    plan = check_plan(load_config(preset))
    assert plan["memory"] and all(r["fits"] for r in plan["memory"])
    assert all(b["context_room"] > 0 for b in plan["budgets"])


def test_known_models_are_the_published_shapes_without_a_download():
    xxl = describe_model(load_config("paper").large, "large.max_input_tokens")
    assert known_model("google/flan-t5-xxl")["tokenizer"]["model_max_length"] == 512
    assert xxl.limit == 1024, "the preset's max_input_tokens overrides the declared 512"
    assert 10.9e9 < xxl.shape.params < 11.4e9 and xxl.shape.hidden == 4096 and xxl.shape.layers == 24
    qwen = describe_model(load_config("qwen").large, "large.max_input_tokens")
    assert qwen.limit == 32768 and qwen.shape.kv_dim == 8 * 128 and 14.0e9 < qwen.shape.params < 15.0e9


@pytest.mark.parametrize("batch, checkpointing, measured_gb", [(4, False, 46.7), (16, True, 15.7)])
def test_memory_estimate_is_within_the_planning_margin_of_measured_t5_large_peaks(batch, checkpointing, measured_gb):
    """H200 peaks of a FLAN-T5-Large-sized model trained in pure bf16 (no fp32 master weights), source
    1536 + target 128: the plan's own estimate for that precision, taken as it comes, errs high by at
    most 30 % and never low by more than 10 %."""
    shape = describe_model(load_config("paper").small, "small.max_input_tokens").shape
    estimate = training_bytes(shape, batch=batch, source=1536, target=128, zero_stage=0, world=1, bf16=True,
                              checkpointing=checkpointing, master_weights=False) / 1e9
    assert 0.9 * measured_gb < estimate < 1.3 * measured_gb


def test_memory_estimate_says_the_measured_out_of_memory_would_not_fit():
    shape = describe_model(load_config("paper").small, "small.max_input_tokens").shape
    oom = training_bytes(shape, batch=16, source=1536, target=128, zero_stage=0, world=1, bf16=True,
                         checkpointing=False, master_weights=False)
    assert oom / 1e9 > 141, "micro-batch 16 without checkpointing ran out of the H200's 141 GB"
    mixed = training_bytes(shape, batch=16, source=1536, target=128, zero_stage=0, world=1, bf16=True,
                           checkpointing=True)
    assert mixed - training_bytes(shape, batch=16, source=1536, target=128, zero_stage=0, world=1, bf16=True,
                                  checkpointing=True, master_weights=False) == 8 * shape.params


def test_a_config_that_cannot_fit_fails_naming_the_fields():
    too_big = load_config("paper", ["distill.scaling.gradient_checkpointing=false", "distill.max_source_tokens=2048",
                                    "small.max_input_tokens=2048", "generation.batch_size=128",
                                    "generation.max_batch_tokens=0"])
    with pytest.raises(PlanError) as err:
        check_plan(too_big)
    assert "distill.scaling.gradient_checkpointing" in str(err.value)
    assert "generation.batch_size" in str(err.value)
    with pytest.raises(PlanError, match="distill.max_source_tokens=256"):
        check_plan(load_config("tiny", ["distill.max_source_tokens=256"]))
    with pytest.raises(PlanError, match="small.max_input_tokens"):
        check_plan(load_config("tiny", ["small.max_input_tokens=64"]))


def test_plan_command_exit_codes(capsys):
    assert main(["plan", "--config", "qwen"]) == 0
    assert "Everything fits" in capsys.readouterr().out
    assert main(["plan", "--config", "paper", "--gpu-memory-gb", "24", "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert plan["problems"] and any(not r["fits"] for r in plan["memory"])


def test_every_prompt_at_flan_t5_limit_keeps_its_question_and_cue():
    # no context cap: every model fits the whole context to its own 512-token limit
    cfg = load_config("tiny", ["data.context_max_tokens=0", "generation.rationale_max_new_tokens=128"])
    records = list_prompts(cfg, limit=2)
    roles = {r["role"].split(":")[0] for r in records}
    assert roles == set(CUES)
    assert {r["limit"] for r in records} == {512}, "a seq2seq model's output does not share its input limit"
    for r in records:
        assert r["tokens"] <= r["limit"], r
        assert r["text"].rstrip().endswith(CUES[r["role"].split(":")[0]]), r["text"][-80:]
        assert "Question: " in r["text"]
    assert any(r["context_cut"] for r in records), "whole distractor contexts exceed 512 tokens"


def test_prompts_command_json(capsys):
    assert main(["prompts", "--config", "tiny", "--method", "lm_guided", "--limit", "1", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["role"] for r in records} == {"small", "answer"}
    assert all({"id", "role", "model", "tokens", "limit", "text"} <= set(r) for r in records)
    assert training_bytes(Shape("causal", 10, 8, 1, 8, 1, 0, 10), batch=1, source=1, target=1, zero_stage=0,
                          world=1, bf16=True, checkpointing=False) > GIB, "runtime overhead is counted"


def test_lmcot_run_checks_the_plan_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "--config", "tiny", "--run-dir", str(run), "--set", "distill.max_source_tokens=256"]) == 2
    assert "distill.max_source_tokens=256" in capsys.readouterr().err
    assert not run.exists(), "nothing started, nothing written"


def test_each_stage_fails_only_on_what_stops_it(caplog):
    cfg = load_config("tiny", ["distill.max_source_tokens=256"])
    with pytest.raises(PlanError, match="distill.max_source_tokens"):
        check_plan(cfg, stage="distill")
    check_plan(cfg, stage="eval")  # evaluation never reads distill settings: a warning only
    assert "distill.max_source_tokens" in caplog.text
    with pytest.raises(PlanError, match="small.max_input_tokens"):
        check_plan(load_config("tiny", ["small.max_input_tokens=64"]), stage="eval")


def test_every_role_is_budgeted_with_the_reply_room_the_method_asks_for():
    from lmcot.prompting.roles import ROLES

    cfg = load_config("qwen")  # causal models: a prompt shares its positions with the reply
    plan = check_plan(cfg)
    budgets = {b["role"]: b for b in plan["budgets"]}
    assert set(budgets) == set(ROLES)
    for name, b in budgets.items():
        assert b["limit"] - b["template_tokens"] - b["context_room"] == ROLES[name].reserve(cfg.generation), name
    assert budgets["answer"]["context_room"] > budgets["cot"]["context_room"], "an answer reserves less than a CoT"


def test_plan_counts_what_vllm_reserves_and_who_shares_its_card():
    plan = check_plan(load_config("qwen"))
    rows = {r["component"].split(" (")[0]: r for r in plan["memory"]}
    assert rows["teacher actor"]["need_gb"] == pytest.approx(0.85 * 80, abs=0.1), "the reservation, not the need"
    assert "vLLM" in rows["eval actor"]["shares"] and "small LM" in rows["eval actor"]["shares"]
    assert rows["eval actor"]["need_gb"] > rows["teacher actor"]["need_gb"], "the small LM adds to the reservation"
    with pytest.raises(PlanError, match="large.gpu_memory_utilization"):
        check_plan(load_config("qwen", ["large.gpu_memory_utilization=0.95"]))  # no room left for the small LM
    with pytest.raises(PlanError, match="raise large.gpu_memory_utilization"):
        check_plan(load_config("qwen", ["large.gpu_memory_utilization=0.3"]))  # 24 GiB cannot hold 14B weights
    shared = make_plan(load_config("qwen", ["rationales.gpus_per_actor=0.5"]))
    teacher = next(r for r in shared["memory"] if r["component"].startswith("teacher"))
    assert not teacher["fits"] and "2 such actors per card" in teacher["shares"]


def test_plan_markdown_shows_the_reservation():
    from lmcot.planning.plan import render_plan

    assert "vLLM reserving 0.85 of the card" in render_plan(make_plan(load_config("qwen")))
