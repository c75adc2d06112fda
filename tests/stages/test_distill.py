"""Rationale distillation on Ray Train + DeepSpeed ZeRO-2, CPU, 2 workers, gloo.

Real parts only: a local 2-CPU Ray cluster, the real HF trainers with real DeepSpeed,
real checkpoints on disk, a real worker process that dies (``os._exit``) mid-run.
Each training test overfits 8 questions so that the exported model must reproduce
their rationales: proof that prompts, labels, training, checkpoints and export are
wired end to end, not only that a loss went down.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from lmcot.config import ModelSpec, load_config
from lmcot.datasets.context import build_context
from lmcot.datasets.data import load_split
from lmcot.models.generation import HFGenerator
from lmcot.scoring.metrics import normalize_answer
from lmcot.models.loading import load_tokenizer, resolve_model_path
from lmcot.prompting.prompts import small_rationale_prompt
from lmcot.runs.jsonl import load_jsonl
from lmcot.runs.rundir import RunDir
from lmcot.training.sft_data import NoRationalesError
from lmcot.stages import distill
from lmcot.stages.train_common import CHAOS_ENV

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CONTEXT_TOKENS = 64


def hotpot(n: int):
    cfg = load_config("tiny")
    return load_split(cfg.data.datasets[0], "train")[:n]


def write_rationales(run_dir: RunDir, examples, *, with_context: bool, kept: bool = True) -> list[dict]:
    """A shard in the schema ``lmcot generate-rationales`` writes (context column optional)."""
    teacher = load_tokenizer(resolve_model_path("tiny:t5-large"), "seq2seq")
    rows = []
    for ex in examples:
        row = {"dataset": "hotpotqa", "id": ex.id, "sample": 0, "question": ex.question,
               "rationale": f"{ex.gold_titles[0]} leads to {ex.gold_titles[-1]}.", "output": "",
               "teacher_answer": ex.answer, "gold_answer": ex.answer, "em": 1.0, "f1": 1.0, "kept": kept,
               "reason": "" if kept else "wrong_answer", "prompt_tokens": 10, "completion_tokens": 5}
        if with_context:
            row["context"] = build_context(ex, mode="all", tokenizer=teacher, max_tokens=CONTEXT_TOKENS)
        rows.append(row)
    run_dir.rationales.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(run_dir.rationales / "part-000000.parquet")
    return rows


def config(model: str, steps: int, lr: float, *extra: str):
    return load_config("tiny", [
        f"small.name_or_path={model}", f"data.context_max_tokens={CONTEXT_TOKENS}",
        f"distill.max_steps={steps}", f"distill.learning_rate={lr}", "distill.per_device_batch_size=4",
        "distill.max_source_tokens=512", "distill.max_target_tokens=32", "distill.eval_fraction=0.1",
        "distill.logging_steps=5", "distill.scaling.num_workers=2", "distill.scaling.zero_stage=2", *extra,
    ])


def reproduced(model_dir, rows: list[dict], contexts: dict[str, str]) -> int:
    """How many training rationales the exported model writes back exactly (normalised), greedy."""
    gen = HFGenerator(ModelSpec(str(model_dir)), batch_size=8)
    prompts = [small_rationale_prompt(r["question"], contexts[r["id"]]) for r in rows]
    outs = gen.generate(prompts, max_new_tokens=32)
    return sum(normalize_answer(o.texts[0]) == normalize_answer(r["rationale"]) for o, r in zip(outs, rows))


def train_rows(cfg, rows):
    """The rows that landed in training (not validation), with the contexts the prompts used."""
    from lmcot.training.sft_data import split_pairs, build_pairs, rebuild_contexts

    teacher = load_tokenizer(resolve_model_path(cfg.large.name_or_path), "seq2seq")
    exs = {("hotpotqa", ex.id): ex for ex in hotpot(len(rows))}
    contexts = rebuild_contexts(rows, exs, mode=cfg.data.context_mode, tokenizer=teacher, max_tokens=CONTEXT_TOKENS)
    train, _ = split_pairs(build_pairs(rows, contexts), cfg.distill.eval_fraction, cfg.seed)
    ids = {p.id for p in train}
    return [r for r in rows if r["id"] in ids], {k[1]: v for k, v in contexts.items()}


def test_seq2seq_zero2_overfits_and_exports_a_model_lmcot_eval_can_load(ray_cluster, tmp_path):
    run_dir = RunDir(tmp_path / "run")
    rows = write_rationales(run_dir, hotpot(9), with_context=False)  # contexts rebuilt from the dataset
    cfg = config("tiny:t5-small", 40, 0.01, "distill.save_steps=20", "distill.eval_steps=20")
    out = distill.run(cfg, run_dir)

    assert out["step"] == 40 and not out["skipped"]
    assert (out["train_pairs"], out["val_pairs"]) == (8, 1)
    assert out["train_loss"] < out["first_loss"] / 4, out
    assert out["eval_loss"] is not None and len(out["samples"]) == 1 and out["samples"][0]["generated"]
    assert out["samples_per_second"] > 0 and out["resumed_from_step"] == 0
    history = load_jsonl(run_dir.metrics("distill"))  # what the report draws
    assert sum("eval_loss" in e for e in history) == 2  # at step 20 and at the end
    assert [e["step"] for e in history if "loss" in e] == list(range(5, 41, 5))  # distill.logging_steps=5

    run_root = run_dir.distill_checkpoints / out["run"]
    assert sorted(p.name for p in run_root.glob("checkpoint-*")) == ["checkpoint-000020", "checkpoint-000040"]
    assert any(run_root.glob("checkpoint-000040/global_step40/*optim_states.pt")), "DeepSpeed shards are saved"

    model_dir = run_dir.distill_model
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "lmcot_model.json"):
        assert (model_dir / name).is_file(), name
    assert not list(model_dir.glob("*.bin")) and not (model_dir / "optimizer.pt").exists()

    train, contexts = train_rows(cfg, rows)
    assert reproduced(model_dir, train, contexts) >= 6, "overfitting 8 questions must reproduce their rationales"

    meta = json.loads(RunDir.model_meta(model_dir).read_text())
    assert meta["identity"] == out["identity"] and meta["family"] == "seq2seq" and meta["step"] == 40
    again = distill.run(cfg, run_dir)
    assert again["skipped"] and again["identity"] == out["identity"] and again["train_loss"] == out["train_loss"]
    run_only = distill.run(config("tiny:t5-small", 40, 0.01, "distill.save_steps=20", "distill.eval_steps=20",
                                  "distill.scaling.max_failures=0", "distill.scaling.checkpoints_to_keep=3"), run_dir)
    assert run_only["skipped"], "changing only run-only fields reruns nothing"


def test_causal_zero2_survives_a_killed_worker_and_resumes(ray_cluster, tmp_path, monkeypatch):
    run_dir = RunDir(tmp_path / "run")
    rows = write_rationales(run_dir, hotpot(9), with_context=True)
    marker = tmp_path / "worker-killed"
    monkeypatch.setenv(CHAOS_ENV, str(marker))
    cfg = config("tiny:causal-small", 80, 0.005, "distill.save_steps=20", "distill.eval_steps=40")
    out = distill.run(cfg, run_dir)

    assert marker.is_file(), "the drill killed rank 1 after the first checkpoint"
    assert out["resumed_from_step"] == 20, "the restarted group resumed from the checkpoint, not from scratch"
    assert out["step"] == 80 and out["train_loss"] < out["first_loss"] / 4, out

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run_dir.distill_model).config.model_type == "qwen2"
    contexts = {r["id"]: r["context"] for r in rows}
    train = [r for r in rows if r["id"] != out["samples"][0]["id"]]
    assert reproduced(run_dir.distill_model, train, contexts) >= 4


def test_bad_input_fails_before_any_worker_starts(ray_cluster, tmp_path):
    run_dir = RunDir(tmp_path / "run")
    cfg = config("tiny:t5-small", 4, 0.01)

    with pytest.raises(NoRationalesError, match="generate-rationales"):
        distill.run(cfg, run_dir)

    write_rationales(run_dir, hotpot(3), with_context=True, kept=False)
    with pytest.raises(NoRationalesError, match="rationales.filter"):
        distill.run(cfg, run_dir)

    write_rationales(run_dir, hotpot(3), with_context=True)
    with pytest.raises(ValueError, match="no config.json"):
        distill.run(config(str(tmp_path / "no-such-model"), 4, 0.01), run_dir)

    wrong = tmp_path / "wrong-tokenizer"
    shutil.copytree(resolve_model_path("tiny:t5-small"), wrong)
    tok = load_tokenizer(str(wrong), "seq2seq")
    tok.add_tokens([f"<extra_{i}>" for i in range(64)])
    tok.save_pretrained(wrong)
    with pytest.raises(ValueError, match="not this model's tokenizer"):
        distill.run(config(str(wrong), 4, 0.01), run_dir)

    with pytest.raises(ValueError, match="distill.scaling asks for 3 workers"):
        distill.run(config("tiny:t5-small", 4, 0.01, "distill.scaling.num_workers=3"), run_dir)

    assert not run_dir.distill_checkpoints.exists() and not run_dir.distill_model.exists()


def test_one_and_two_workers_take_the_same_steps(ray_cluster, tmp_path):
    """The same global batch of 8 on 1 worker x 8 or 2 workers x 4 gives the same losses: the loss is
    normalised by the global batch's target tokens, whatever their split over the ranks (the rationales
    differ in length, so a mean per rank would differ). T5 without dropout, whose masks would differ."""
    model = tmp_path / "t5-no-dropout"
    shutil.copytree(resolve_model_path("tiny:t5-small"), model)
    config_file = model / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "dropout_rate": 0.0}))
    losses = {}
    for workers in (1, 2):
        run_dir = RunDir(tmp_path / f"run-{workers}")
        write_rationales(run_dir, hotpot(16), with_context=True)
        cfg = config(str(model), 2, 0.01, f"distill.scaling.num_workers={workers}",
                     f"distill.per_device_batch_size={8 // workers}", "distill.eval_fraction=0.0",
                     "distill.sample_rationales=0", "distill.logging_steps=1", "distill.save_steps=2",
                     "distill.eval_steps=2")
        distill.run(cfg, run_dir)
        losses[workers] = [e["loss"] for e in load_jsonl(run_dir.metrics("distill")) if "loss" in e]
    assert len(losses[1]) == 2
    assert losses[2] == pytest.approx(losses[1], rel=1e-3), losses
    assert losses[1][0] != pytest.approx(losses[1][1], rel=1e-2), "the first step changed the model"


@pytest.mark.gpu
def test_gpu_smoke_bf16_with_gradient_checkpointing(ray_cluster, tmp_path):
    """On a GPU: one worker, bf16, gradient checkpointing, the real DeepSpeed path; the model learns."""
    run_dir = RunDir(tmp_path / "run")
    write_rationales(run_dir, hotpot(9), with_context=True)
    cfg = config("tiny:t5-small", 20, 0.01, "distill.scaling.num_workers=1", "distill.scaling.use_gpu=true",
                 "distill.scaling.bf16=true", "distill.scaling.gradient_checkpointing=true", "distill.save_steps=20",
                 "distill.eval_steps=20")
    out = distill.run(cfg, run_dir)
    assert out["step"] == 20 and out["train_loss"] < out["first_loss"] / 2, out
    assert (run_dir.distill_model / "model.safetensors").is_file()
