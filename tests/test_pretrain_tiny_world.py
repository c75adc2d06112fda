"""tools/pretrain_tiny_world.py: the smoke run writes loadable models with their record; data and
training are deterministic from the seed; the shipped dev world is never trained on."""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "pretrain_tiny_world.py"


def run(out, *extra):
    """The tool's smoke run into ``out``, with ``extra`` arguments."""
    return subprocess.run([sys.executable, str(TOOL), "--smoke", "--threads", "1", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tool(load_script):
    return load_script("tools/pretrain_tiny_world.py")


@pytest.fixture(scope="module")
def tokenizer():
    from lmcot.models.tiny import build_tokenizer

    return build_tokenizer("seq2seq")


def test_smoke_run_writes_models_tokenizer_and_record(tmp_path):
    done = run(tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "tiny_world.json").read_text())
    assert summary["data"]["world_seeds"] and 20240404 not in summary["data"]["world_seeds"]
    for name in ("large", "small"):
        folder = tmp_path / name
        record = json.loads((folder / "lmcot_tiny_world.json").read_text())
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        assert record["sha256"]["model.safetensors"] == digest == summary["models"][name]["sha256"]["model.safetensors"]
        assert record["train"]["steps"] == 2 and record["world_seeds"] == summary["data"]["world_seeds"]
        assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
        # the training targets' cap is not saved with the tokenizer
        assert json.loads((folder / "tokenizer.json").read_text())["truncation"] is None
    import torch

    from lmcot.config import ModelSpec
    from lmcot.models.generation import HFGenerator
    from lmcot.tinyworld.training import SMOKE_SIZES, build_t5

    large = HFGenerator(ModelSpec(str(tmp_path / "large"), device="cpu"))
    assert large.tokenizer.model_max_length == 512 and large.family == "seq2seq"
    record = json.loads((tmp_path / "large" / "lmcot_tiny_world.json").read_text())
    config = large.model.config
    assert {k: getattr(config, k) for k in SMOKE_SIZES["large"]} == record["size"] == SMOKE_SIZES["large"]
    assert sum(p.numel() for p in large.model.parameters()) == record["parameters"]
    # the trained weights were saved, not the initial ones (same seed, same shapes)
    initial = build_t5(SMOKE_SIZES["large"], large.tokenizer, seed=0).state_dict()
    saved = large.model.state_dict()
    assert initial.keys() == saved.keys() and any(not torch.equal(initial[k], saved[k]) for k in saved)
    # the saved generation settings suppress <pad>: a barely trained T5 would otherwise write nothing
    assert large.model.generation_config.suppress_tokens == [large.tokenizer.pad_token_id]
    [out] = large.generate(["Question: who?\nAnswer:"], max_new_tokens=3)
    assert out.texts[0].strip() and 1 <= out.completion_tokens <= 3, out


def test_training_data_is_deterministic_and_uses_lmcot_templates(tool, tokenizer):
    args = argparse.Namespace(seed=3, worlds=1, questions=3, context_tokens=256, small_recipe="extraction")
    large_a, small_a, critic_a, prov = tool.build_pairs(args, tokenizer)
    large_b, small_b, critic_b, _ = tool.build_pairs(args, tokenizer)
    assert large_a == large_b and small_a == small_b and critic_a == critic_b
    assert prov["world_seeds"] == [300001]
    tasks = {t for t, _, _ in large_a}
    assert tasks == set(tool.LARGE_TASK_WEIGHTS)
    cot = next(tgt for t, _, tgt in large_a if t == "cot")
    assert "So the answer is:" in cot
    assert {tgt for t, _, tgt in large_a if t.startswith("judge")} == {"yes", "no"}
    assert all(src.endswith("Answer:") for t, src, _ in large_a if t == "standard")


def test_pretraining_cannot_reach_a_held_out_world(tool):
    """Reserved by range: every held-out purpose (shipped dev, tuning, evaluation) sits at or above the
    pretraining limit, and no --seed / --worlds reaches it; the two legacy worlds inside are skipped."""
    from lmcot.tinyworld import seeds

    assert not {101, 777} & set(tool.world_seeds(0, 1000))  # the preset's train world, the unseen-world test's
    held_out = [seeds.SHIPPED_DEV, *seeds.TUNING, *seeds.EVALUATION, *seeds.SPENT]
    assert all(s >= seeds.PRETRAINING_LIMIT for s in held_out)
    assert max(tool.world_seeds(9, 99_999)) < seeds.PRETRAINING_LIMIT
    for seed, n in ((10, 1), (0, 100_000), (202, 1)):
        with pytest.raises(ValueError, match="reserved seeds"):
            tool.world_seeds(seed, n)
    assert {seeds.purpose(s) for s in held_out} == {"shipped dev sets (tests)", "tuning", "evaluation",
                                                    "spent evaluation"}


@pytest.mark.parametrize("world", [2_000_001, 2_000_002, 2_000_003, 2_000_004])
def test_the_tool_refuses_to_probe_models_on_an_evaluation_world(tool, world, capsys):
    """Probing on the world the report is measured on (or one a diagnosis spent) would make it a tuning world."""
    with pytest.raises(SystemExit):
        tool.main(["--eval", "unused", "--eval-world", str(world)])
    assert "reserved" in capsys.readouterr().err


def test_each_corruption_changes_the_rationale(tool):
    world, records = tool.world_gen.generate_world(seed=5, train=4, dev=0)
    from lmcot.datasets.data import parse_records

    ex = parse_records(records["hotpotqa_synthetic_train"], "hotpotqa", "t")[0]
    rat = ex.evidence
    corrupt = tool.Corruptor(world)
    for kind in tool.CORRUPTIONS:
        assert corrupt(kind, random.Random(0), rat, ex.answer, ["An unrelated sentence."]) != rat, kind


def test_judge_pairs_cannot_be_told_apart_by_the_answer_cue(tool, tokenizer):
    """As many negatives as positives end in ``So the answer is:``: a first recipe gave the cue to
    half the positives and few negatives, and the judge learned the cue instead of the aspects."""
    args = argparse.Namespace(seed=4, worlds=1, questions=40, context_tokens=256, small_recipe="extraction")
    large, _, _, _ = tool.build_pairs(args, tokenizer)
    share = {}
    for label in ("judge_yes", "judge_no"):
        rationales = [src.rsplit("Rationale:", 1)[-1] for t, src, _ in large if t == label]
        share[label] = sum("So the answer is:" in r for r in rationales) / len(rationales)
    assert abs(share["judge_yes"] - share["judge_no"]) < 0.15, share
    assert 0.3 < share["judge_yes"] < 0.7, share


def test_critic_judge_pairs_differ_only_by_the_aspects_corruption(tool, tokenizer):
    """Each "no" stands beside a "yes" on the same question, aspect and context, and the two end in
    the answer cue equally often; the misled answers' rationales are wrong, their targets right."""
    from lmcot.prompting import prompts

    args = argparse.Namespace(seed=4, worlds=1, questions=20, context_tokens=256, small_recipe="extraction")
    _, _, critic, _ = tool.build_pairs(args, tokenizer)
    judged = [p for p in critic if p[0].startswith("judge_pair")]
    assert len(judged) == 2 * 2 * 40  # two aspects of each of 40 questions, a "yes" and a "no" each
    for (t_yes, yes, y), (t_no, no, n) in zip(judged[::2], judged[1::2]):
        assert (t_yes, y, t_no, n) == ("judge_pair_yes", "yes", "judge_pair_no", "no")
        parts = lambda src: re.fullmatch(r"(.*)Rationale: (.*)\n\n(.*)", src, re.S).groups()  # noqa: E731
        (head_yes, rationale_yes, aspect_yes), (head_no, rationale_no, aspect_no) = parts(yes), parts(no)
        assert (head_yes, aspect_yes) == (head_no, aspect_no) and rationale_yes != rationale_no
        assert (prompts.ANSWER_CUE in rationale_yes) == (prompts.ANSWER_CUE in rationale_no)
    drawn = collections.Counter(src.rsplit("\n\n", 1)[1].split(" Is the rationale")[0] for _, src, _ in judged)
    factual = drawn.pop(prompts.ASPECTS["factuality"].definition)
    assert factual > max(drawn.values()), drawn  # the aspect only the context can check is drawn most
    misled = [p for p in critic if p[0] == "answer_misled"]
    world, records = tool.world_gen.generate_world(seed=tool.world_seeds(4, 1)[0], train=20, dev=0)
    from lmcot.datasets.data import parse_records

    examples = [ex for name, fmt in (("hotpotqa_synthetic_train", "hotpotqa"), ("2wiki_synthetic_train", "2wiki"))
                for ex in parse_records(records[name], fmt, name)]
    assert [tgt for _, _, tgt in misled] == [ex.answer for ex in examples]
    wrong = sum(ex.evidence not in src for (_, src, _), ex in zip(misled, examples))
    assert wrong >= 0.9 * len(misled), wrong


def test_the_critic_phase_continued_from_a_checkpoint_equals_a_full_run(tmp_path):
    """``--continue-from`` trains only the critic phase, and gives the bytes a run from scratch gives;
    it refuses a checkpoint trained with other arguments."""
    assert run(tmp_path / "base").returncode == 0
    assert run(tmp_path / "full", "--critic-steps", "2").returncode == 0
    done = run(tmp_path / "cont", "--only", "large", "--continue-from", str(tmp_path / "base"), "--critic-steps", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    full, cont = (json.loads((tmp_path / d / "large" / "lmcot_tiny_world.json").read_text()) for d in ("full", "cont"))
    assert cont["sha256"] == full["sha256"] and cont["rerun"] == full["rerun"]
    base = json.loads((tmp_path / "base" / "large" / "lmcot_tiny_world.json").read_text())
    assert cont["continued_from"] == base["sha256"]
    refused = run(tmp_path / "again", "--only", "large", "--continue-from", str(tmp_path / "full"),
                  "--critic-steps", "2")
    assert refused.returncode != 0 and "--continue-from" in refused.stderr


def test_a_second_rationale_phase_keeps_the_first_and_records_its_target_cap(tmp_path):
    """A rationale phase continued from a model that had one is recorded beside it (its own name, its
    own data stream, its target cap), and the rerun line names every phase's arguments."""
    assert run(tmp_path / "base").returncode == 0
    first = run(tmp_path / "one", "--continue-from", str(tmp_path / "base"), "--rationale-steps", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run(tmp_path / "two", "--continue-from", str(tmp_path / "one"), "--rationale-steps", "2",
                 "--rationale-max-target", "192")
    assert second.returncode == 0, second.stderr[-2000:]
    one, two = (json.loads((tmp_path / d / "large" / "lmcot_tiny_world.json").read_text()) for d in ("one", "two"))
    assert two["phases"]["rationale"] == one["phases"]["rationale"]
    assert two["phases"]["rationale"]["max_target_tokens"] == 96
    assert two["phases"]["rationale_2"]["max_target_tokens"] == 192
    assert two["continued_from"] == one["sha256"] and two["sha256"] != one["sha256"]
    assert two["rerun"] == one["rerun"] + " --rationale-steps 2 --rationale-lr 0.001 --rationale-max-target 192"
    summary = json.loads((tmp_path / "two" / "tiny_world.json").read_text())
    assert summary["training"]["rationale_max_target"] == 192


def test_the_small_t5_trained_longer_goes_on_where_its_run_stopped(tmp_path):
    """``--small-more-steps`` continues the small T5 after the steps it took, each continuation recorded
    as a phase of its own with the step it started from; the large T5 is copied untouched, and a small
    T5 of another recipe or another learning rate is refused (its data or schedule would not be the
    run's), as is continuing both T5s in one call."""
    assert run(tmp_path / "base").returncode == 0
    one = run(tmp_path / "one", "--continue-from", str(tmp_path / "base"), "--small-more-steps", "3")
    assert one.returncode == 0, one.stderr[-2000:]
    two = run(tmp_path / "two", "--continue-from", str(tmp_path / "one"), "--small-more-steps", "2")
    assert two.returncode == 0, two.stderr[-2000:]
    base, first, second = (json.loads((tmp_path / d / "small" / "lmcot_tiny_world.json").read_text())
                           for d in ("base", "one", "two"))
    assert first["phases"]["more"]["first_step"] == base["train"]["steps"] == 2
    assert second["phases"]["more"] == first["phases"]["more"] and second["phases"]["more_2"]["first_step"] == 5
    assert first["continued_from"] == base["sha256"] and first["sha256"] != base["sha256"]
    assert second["rerun"] == base["rerun"] + " --small-more-steps 3 --small-more-steps 2"
    large = [json.loads((tmp_path / d / "large" / "lmcot_tiny_world.json").read_text())["sha256"] for d in ("base", "two")]
    assert large[0] == large[1]
    refused = run(tmp_path / "other", "--continue-from", str(tmp_path / "base"), "--small-more-steps", "2",
                  "--small-recipe", "extraction")
    assert refused.returncode != 0 and "--small-recipe" in refused.stderr
    refused = run(tmp_path / "other", "--continue-from", str(tmp_path / "two"), "--small-more-steps", "2",
                  "--lr", "0.01")
    assert refused.returncode != 0 and "'lr': 0.01" in refused.stderr
    refused = run(tmp_path / "other", "--continue-from", str(tmp_path / "base"), "--small-more-steps", "2",
                  "--rationale-steps", "2")
    assert refused.returncode != 0 and "one at a time" in refused.stderr


def test_a_continued_run_sees_the_batches_and_learning_rates_a_longer_run_would(tool, tokenizer, monkeypatch, capsys):
    from lmcot.tinyworld import training

    data = [([5 + i, 1], [20 + i, 1], "x") for i in range(7)]
    seen, collate = [], training.collate
    monkeypatch.setattr(training, "collate", lambda d, idx, pad: seen.append(list(idx)) or collate(d, idx, pad))

    def trained(steps, first_step=0):
        seen.clear()
        model = tool.build_t5(tool.SMOKE_SIZES["small"], tokenizer, seed=1)
        training.train(model, data, steps=steps, seconds=0, lr=1e-3, batch_size=2, seed=3, pad_id=0, log_every=1,
                       name="t", warmup=4, first_step=first_step)
        return list(seen)

    longer = trained(9)
    capsys.readouterr()
    assert trained(3, first_step=6) == longer[6:]
    lrs = re.findall(r"lr (\S+) ", capsys.readouterr().out)
    assert lrs == [f"{training.lr_at(s, 1e-3, 4):.2e}" for s in (6, 7, 8)]


def test_training_is_deterministic_from_the_seed(tool, tokenizer):
    data = [([5, 6, 7, 1], [8, 1], "x"), ([9, 10, 1], [11, 12, 1], "x"), ([13, 1], [14, 1], "x")]
    digests = []
    for _ in range(2):
        model = tool.build_t5(tool.SMOKE_SIZES["small"], tokenizer, seed=1)
        tool.train(model, data, steps=2, seconds=0, lr=1e-3, batch_size=2, seed=1, pad_id=0, log_every=1, name="t")
        digests.append(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
    assert digests[0] == digests[1]


def test_world_tokenizer_keeps_flan_t5_conventions_and_learns_no_shipped_name(tool):
    from lmcot.models import tiny

    shipped_corpus = tiny._corpus
    tok = tool.world_tokenizer(0, 1)
    assert tiny._corpus is shipped_corpus  # the tiny models' tokenizer is left as it was
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.model_max_length) == (0, 1, 2, 512)
    assert tok("yes")["input_ids"][-1] == tok.eos_token_id and len(tok) == tiny.VOCAB_SIZE
    shipped, _ = tool.world_gen.generate_world()
    whole = [t for t in shipped.titles if len(tok.tokenize(t)) == 1 and len(t) > 6]
    assert len(whole) < len(shipped.titles) // 20, whole[:10]  # names split into pieces every world shares
