"""RL refinement: bad input, learning on tiny models, and 2-worker DeepSpeed runs with the judge actor.

The learning tests run the production training code in-process (the lmcot GRPO loop for
T5, TRL's GRPOTrainer for the causal model) on a checkable reward: the share of digits
in the rationale. A random tiny model writes some digits by chance, so the reward has
signal from step one, and RL must raise it. The Ray tests run ``lmcot.stages.refine.run``
for real: a local 2-CPU cluster, 2 Ray Train workers with DeepSpeed ZeRO-2 over gloo,
the large LM in its own actor, checkpoints on disk, a worker killed mid-run.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from lmcot.cli import main
from lmcot.config import ModelSpec, RefineConfig, load_config
from lmcot.models.loading import load_model
from lmcot.runs.rundir import RunDir
from lmcot.stages import refine, refine_worker

ROWS = [{"prompt": f"Question {i}: who wrote the book about the river?", "answer": "x"} for i in range(16)]


def digit_share(prompts, completions, **_) -> list[float]:
    """The checkable reward of the learning tests."""
    return [sum(c.isdigit() for c in t) / max(1, len(t)) for t in completions]


def distilled_run(tmp_path, small: str) -> RunDir:
    """A run directory whose ``distill/model`` is a tiny model (what ``lmcot distill`` writes)."""
    run_dir = RunDir(tmp_path / "run")
    lm = load_model(ModelSpec(small))
    lm.model.save_pretrained(run_dir.distill_model)
    lm.tokenizer.save_pretrained(run_dir.distill_model)
    return run_dir


def config(small: str, large: str, *extra: str):
    return load_config("tiny", [
        f"small.name_or_path={small}", f"large.name_or_path={large}", "data.context_max_tokens=48",
        "refine.prompts_per_step=1", "refine.num_generations=2", "refine.max_new_tokens=8",
        "refine.scaling.num_workers=2", "refine.scaling.zero_stage=2", *extra,
    ])


# -- bad input: clear errors before anything starts ------------------------------------------
def test_missing_distilled_model_fails_before_ray_starts(tmp_path):
    import ray

    cfg = config("tiny:t5-small", "tiny:t5-large")
    connected = ray.is_initialized()
    with pytest.raises(FileNotFoundError, match="lmcot distill"):
        refine.run(cfg, RunDir(tmp_path / "empty-run"))
    assert ray.is_initialized() == connected, "the error came before Ray was started"


@pytest.mark.parametrize("override, message", [
    ("refine.reward_weights={taks: 1.0}", "unknown reward 'taks'"),
    ("refine.reward_weights={task: 0.0, fluency: 0.0}", "all zero"),
    ("refine.aspect_mode=mean", "reward_weights.quality"),
])
def test_bad_reward_weights_are_refused_by_the_command(tmp_path, capsys, override, message):
    assert main(["refine", "--run-dir", str(tmp_path / "run"), "--set", override]) == 2
    assert message in capsys.readouterr().err


def test_zero3_is_refused_for_seq2seq(tmp_path):
    run_dir = distilled_run(tmp_path, "tiny:t5-small")
    with pytest.raises(ValueError, match="zero_stage=3"):
        refine.prepare(config("tiny:t5-small", "tiny:t5-large", "refine.scaling.zero_stage=3"), run_dir)


# -- learning: the training code raises a checkable reward -----------------------------------
@pytest.fixture()
def one_thread():
    """Tiny models train fastest on one thread, the more so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_seq2seq_loop_learns_a_checkable_reward(algorithm, one_thread):
    import copy

    from lmcot.training.grpo_seq2seq import PlainEngine, train

    torch.manual_seed(0)
    lm = load_model(ModelSpec("tiny:t5-small"), for_training=True)
    ref = copy.deepcopy(lm.model).eval().requires_grad_(False)
    cfg = RefineConfig(algorithm=algorithm, num_generations=4, prompts_per_step=4, max_steps=12, learning_rate=1e-4,
                       beta=0.04, temperature=2.0)

    def reward_fn(prompts, completions, columns):
        r = digit_share(prompts, completions)
        return r, {"digits": r}

    history = train(PlainEngine(lm.model, lr=cfg.learning_rate), lm.tokenizer, ROWS, reward_fn=reward_fn, cfg=cfg,
                    max_new_tokens=12, ref_model=ref, seed=0)
    rewards = [h["reward"] for h in history]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-4:]) / 4
    assert last > first + 0.2, rewards
    assert history[0]["kl"] == 0.0 and history[-1]["kl"] > 0.0, "KL starts at 0 (policy == reference) and grows"
    assert history[0]["reward/digits"] == pytest.approx(rewards[0])
    assert all(h["rollouts"] == 16 and 0 < h["reward_share"] < 1 for h in history)


def test_causal_trl_grpo_learns_a_checkable_reward(tmp_path, one_thread):
    run_dir = distilled_run(tmp_path, "tiny:causal-small")
    cfg = RefineConfig(num_generations=4, prompts_per_step=4, max_steps=40, learning_rate=1e-2, beta=0.0,
                       temperature=1.0, save_steps=1000)
    common = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=cfg.learning_rate,
                  use_cpu=True, report_to="none", seed=0, disable_tqdm=True, save_strategy="no")
    trainer = refine_worker.build_causal_trainer(str(run_dir.distill_model), ROWS, cfg, common=common, max_new_tokens=6,
                                          reward_funcs=[digit_share], reward_weights=[1.0])
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == 40
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.2, rewards
    assert [h for h in trainer.state.log_history if "reward" in h][0]["rewards/digit_share/mean"] == rewards[0]


def test_causal_rloo_trainer_gives_lmcot_leave_one_out_advantages(tmp_path, one_thread):
    """TRL's ``RLOOTrainer`` as lmcot configures it (``refine.algorithm: rloo``) gives each completion the
    advantage lmcot's own RLOO gives (:func:`lmcot.training.rl.rloo_advantages`) of the reward it was
    scored with, so the causal and seq2seq families train one algorithm. ``scale_rewards: none`` turns
    TRL's batch normalisation off: normalised, a leave-one-out baseline and the group mean give
    proportional advantages (``k/(k-1)`` apart), so only raw advantages show which baseline was used.
    On the first step the policy is the reference, so the KL penalty in the reward is 0. Whether RLOO
    moves a policy the right way: ``tests/core/test_rl.py``."""
    from lmcot.training import rl

    run_dir = distilled_run(tmp_path, "tiny:causal-small")
    cfg = RefineConfig(algorithm="rloo", num_generations=2, prompts_per_step=2, max_steps=1, beta=0.04,
                       scale_rewards="none")
    common = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=cfg.learning_rate,
                  use_cpu=True, report_to="none", seed=0, disable_tqdm=True, save_strategy="no")
    scored: list[list[float]] = []

    def distinct_chars(prompts, completions, **_) -> list[float]:
        """A reward that differs between almost any two completions, recorded as scored."""
        scored.append([len(set(t)) / max(1, len(t)) for t in completions])
        return scored[-1]

    trainer = refine_worker.build_causal_trainer(str(run_dir.distill_model), ROWS, cfg, common=common, max_new_tokens=6,
                                          reward_funcs=[distinct_chars], reward_weights=[1.0])
    assert type(trainer).__name__ == "RLOOTrainer"
    assert (trainer.beta, trainer.normalize_advantages, trainer.num_generations) == (0.04, False, 2)
    batches = []
    generate = trainer._generate_and_score_completions

    def recorded(*args, **kwargs):
        batches.append(generate(*args, **kwargs))
        return batches[-1]

    trainer._generate_and_score_completions = recorded
    trainer.train()
    assert len(scored) == len(batches) == 1
    rewards = torch.tensor(scored[0])
    assert len(rewards) == 4 and rewards.view(2, 2).std(dim=1).max() > 0, "the reward has spread in a group"
    advantages = batches[0]["advantages"]
    torch.testing.assert_close(advantages, rl.rloo_advantages(rewards, 2), atol=1e-5, rtol=1e-4)
    pairs = rewards.view(2, 2)
    assert advantages.view(2, 2)[:, 0].tolist() == pytest.approx((pairs[:, 0] - pairs[:, 1]).tolist(), abs=1e-5), \
        "k=2: each completion's baseline is the other completion's reward, not the group mean"
    assert [h for h in trainer.state.log_history if "reward" in h][0]["kl"] == pytest.approx(0.0, abs=1e-6)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_seq2seq_loop_on_one_and_two_deepspeed_ranks_takes_the_same_steps(tmp_path):
    """The same global batch (2 prompts x 4 rollouts) on 1 rank or split over 2 DeepSpeed ZeRO-2 ranks
    (gloo) gives the same rewards, losses and weights after three steps. The rollouts are drawn per
    prompt with the prompt's own seed (``refine_ranks.py``), so only the split differs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    model = distilled_run(tmp_path, "tiny:t5-small").distill_model
    script = Path(__file__).with_name("refine_ranks.py")
    results = {}
    for world in (1, 2):
        out, port = tmp_path / f"world-{world}.pt", free_port()
        ranks = [subprocess.Popen([sys.executable, str(script), str(model), str(out)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
                 for r in range(world)]
        for proc in ranks:
            log, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, log[-3000:]
        results[world] = torch.load(out)
    one, two = results[1]["history"], results[2]["history"]
    assert [h["rollouts"] for h in two] == [8, 8, 8]
    for key in ("reward", "loss"):
        assert [h[key] for h in two] == pytest.approx([h[key] for h in one], rel=1e-4, abs=1e-6), key
    assert one[-1]["kl"] > 0, "the policy moved away from the reference"
    for name, weight in results[1]["weights"].items():
        torch.testing.assert_close(results[2]["weights"][name], weight, rtol=1e-4, atol=1e-6)


# -- the stage on Ray Train + DeepSpeed with the large LM in its own actor --------------------
def check_outputs(run_dir: RunDir, out: dict, steps: int, components: set[str]) -> list[dict]:
    lines = [json.loads(line) for line in run_dir.refine_metrics.read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, steps + 1)), "one line per step, none repeated after a resume"
    for m in lines:
        assert {f"reward/{c}" for c in components} <= set(m), m
        for key in ("reward", "kl", "loss", "step_seconds", "reward_share", "rollouts_per_s"):
            assert isinstance(m[key], float), (key, m)
    assert run_dir.curves("refine").stat().st_size > 10_000
    lm = load_model(ModelSpec(str(run_dir.refine_model)))  # loadable like distillation's output
    assert lm.model.config.vocab_size == load_model(ModelSpec(str(run_dir.distill_model))).model.config.vocab_size
    meta = json.loads(RunDir.model_meta(run_dir.refine_model).read_text())
    assert meta["step"] == steps and meta["identity"] == out["identity"]
    return lines


@pytest.mark.ray
@pytest.mark.slow
def test_seq2seq_refine_two_deepspeed_workers_judge_actor_and_a_killed_worker(ray_cluster, tmp_path, monkeypatch):
    from lmcot.stages.train_common import CHAOS_ENV

    run_dir = distilled_run(tmp_path, "tiny:t5-small")
    marker = tmp_path / "worker-killed"
    monkeypatch.setenv(CHAOS_ENV, str(marker))
    cfg = config("tiny:t5-small", "tiny:t5-large", "refine.max_steps=4", "refine.save_steps=2",
                 "refine.reward_weights={task: 1.0, fluency: 0.1, relevance: 0.1, degenerate: 0.5}")
    out = refine.run(cfg, run_dir)

    assert marker.is_file(), "the drill killed rank 1 after the first checkpoint"
    assert out["resumed_from_step"] == 2, "the restarted group resumed from the checkpoint"
    lines = check_outputs(run_dir, out, 4, {"task", "fluency", "relevance", "degenerate"})
    assert all(m["rollouts"] == 4 for m in lines), "2 workers x 1 prompt x 2 samples"
    flags = [m["flat_task_reward_step"] for m in lines]
    assert all(isinstance(f, bool) for f in flags), flags
    assert [m["flat_steps_total"] for m in lines] == list(itertools.accumulate(map(int, flags))), \
        "flat steps are counted on across the restart"
    # every worker's rewards went through the judge actor: per step and worker, one answer call
    # (2 prompts) and one aspect call (2 aspects x 2 rationales), steps 3-4 after the restart
    served = sum(s["prompts"] for s in out["judge"])
    calls = sum(s["calls"] for s in out["judge"])
    assert served >= 4 * 2 * 6
    # one answer call (2 prompts) per aspect call (4 prompts): each call served whole, exactly once
    assert served == 3 * calls, out["judge"]
    # a call (at most 4 prompts) never needs two forward passes: batches beyond the calls would
    # mean the queue split calls; fewer batches than calls mean workers' calls were merged
    assert sum(s["batches"] for s in out["judge"]) <= calls, out["judge"]
    again = refine.run(cfg, run_dir)
    assert again["skipped"] is True, "a finished run is not trained again"
    judges_moved = refine.run(config("tiny:t5-small", "tiny:t5-large", "refine.max_steps=4", "refine.save_steps=2",
                                     "refine.reward_weights={task: 1.0, fluency: 0.1, relevance: 0.1, degenerate: 0.5}",
                                     "refine.judge_num_cpus=0.5", "refine.judge_batch_wait_ms=0",
                                     "refine.scaling.max_failures=0"), run_dir)
    assert judges_moved["skipped"] is True, "judge resources and retries are run-only: nothing reruns"


@pytest.mark.ray
@pytest.mark.slow
def test_causal_refine_trl_on_two_deepspeed_workers_with_mean_quality(ray_cluster, tmp_path):
    run_dir = distilled_run(tmp_path, "tiny:causal-small")
    cfg = config("tiny:causal-small", "tiny:causal-large", "refine.max_steps=2", "refine.save_steps=2",
                 "refine.aspect_mode=mean", "refine.quality_aspects=[fluency, coherence]",
                 "refine.reward_weights={task: 1.0, quality: 0.5}")
    out = refine.run(cfg, run_dir)
    lines = check_outputs(run_dir, out, 2, {"task", "quality", "fluency", "coherence"})
    for m in lines:
        assert m["reward"] == pytest.approx(m["reward/task"] + 0.5 * m["reward/quality"], abs=1e-5)
        assert m["reward/quality"] == pytest.approx((m["reward/fluency"] + m["reward/coherence"]) / 2, abs=1e-5)
