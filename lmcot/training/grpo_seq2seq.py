"""A compact GRPO / RLOO loop for encoder-decoder small LMs (T5), which TRL cannot train.

One step: sample ``k`` rationales per prompt from the policy, score them with the
lmcot rewards (one batched large-LM call per reward kind), turn the rewards into
advantages, and take ``num_iterations`` clipped policy-gradient updates. The
objective is the one TRL 1.16 optimises for causal models with the same config:

- ``algorithm: grpo`` = TRL ``GRPOTrainer``: group-relative advantages
  (``scale_rewards``), per-token clipped ratio, ``beta`` x per-token k3 KL to the
  frozen reference *in the loss*, aggregated by ``loss_type`` (``dapo``: over the
  global token count of all ranks).
- ``algorithm: rloo`` = TRL ``RLOOTrainer``: ``beta`` x the sequence's summed k1
  log-ratio to the reference subtracted *from the reward*, leave-one-out advantages
  (normalised over the whole batch when ``scale_rewards`` is not ``none``, TRL's
  ``normalize_advantages``), a per-sequence clipped ratio, mean over sequences;
  ``loss_type`` does not apply (TRL's RLOO has none).

The algorithm itself is the pure tensor code of :mod:`lmcot.training.rl`, looked up by
``refine.algorithm`` in its registries (advantage estimator, policy loss); this module only
schedules it.

A step whose task reward has no spread in any group (on any rank) carries no task signal:
whatever advantage is left comes from the judged aspects (or RLOO's KL penalty), and
``normalize_then_sum``'s batch normalisation scales it back to full size. With
``refine.skip_flat_steps`` (the default) such a step takes no optimizer step at all (its
loss and KL are still measured). Zeroing its advantages alone would not do: the KL term
would still step, pulling the policy back toward the distilled model by as much as flat
steps happen to come, and Adam's momentum would carry earlier steps on. Every step's metrics
carry ``flat_task_reward_step`` and the running ``flat_steps_total``; with
``skip_flat_steps: false`` the step is taken like any other and only flagged. A reward
function without a ``task`` component never flags a step.

The optimiser is behind an *engine*: anything with ``module``, ``__call__``
(forward), ``backward(loss)`` and ``step()``. The Ray Train stage passes the
DeepSpeed engine (ZeRO-2 by default); tests and single-process runs pass
:class:`PlainEngine`. Nothing here imports Ray or DeepSpeed.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from lmcot.training import rl
from lmcot.training.rewards import weighted_columns
from lmcot.config import RefineConfig

# (prompts, completions, columns) -> (total reward per completion, {component: rewards})
RewardFn = Callable[[list, list, dict], tuple[list, dict]]
TASK_REWARD = "task"
"""The component whose spread decides a flat step (``task`` of :data:`lmcot.training.rewards.REWARDS`)."""


class Engine(Protocol):
    """The slice of a DeepSpeed engine the loop uses."""

    module: torch.nn.Module

    def __call__(self, **inputs): ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None: ...


class PlainEngine:
    """A model and a torch AdamW optimiser behind the DeepSpeed engine's calling shape."""

    def __init__(self, model: torch.nn.Module, lr: float, max_grad_norm: float = 1.0):
        self.module = model
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                           weight_decay=0.0)
        self.max_grad_norm = max_grad_norm

    def __call__(self, **inputs):
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@dataclass
class Rollouts:
    """``k`` sampled completions per prompt, grouped by prompt, ready for a forward pass."""

    input_ids: torch.Tensor  # [N, S] encoder ids, each prompt repeated k times
    attention_mask: torch.Tensor  # [N, S]
    decoder_input_ids: torch.Tensor  # [N, T] start token + completion[:-1]
    labels: torch.Tensor  # [N, T] the sampled tokens
    mask: torch.Tensor  # [N, T] 1 up to and including the first eos
    texts: list[str]


def batch_indices(n_rows: int, step: int, per_rank: int, rank: int = 0, world_size: int = 1,
                  seed: int = 0) -> list[int]:
    """Row indices of one rank at one step: epochs of seeded shuffles, ranks take disjoint slices.

    A pure function of (step, rank), so a resumed run draws exactly the batches it would have.

    >>> batch_indices(4, 0, 2, rank=0, world_size=2) + batch_indices(4, 0, 2, rank=1, world_size=2)
    [2, 0, 1, 3]
    >>> sorted(batch_indices(4, 0, 2, 0, 2) + batch_indices(4, 0, 2, 1, 2)) == [0, 1, 2, 3]
    True
    """
    if n_rows < 1:
        raise ValueError("no training rows to draw from")
    out = []
    for j in range(per_rank):
        position = (step * world_size + rank) * per_rank + j
        epoch, offset = divmod(position, n_rows)
        order = list(range(n_rows))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[offset])
    return out


@torch.no_grad()
def sample_rollouts(model, tokenizer, prompts: Sequence[str], k: int, *, max_new_tokens: int,
                    temperature: float = 1.0, top_p: float = 1.0, max_prompt_tokens: int = 512) -> Rollouts:
    """Sample ``k`` completions per prompt (rows grouped by prompt) from an encoder-decoder model."""
    device = next(model.parameters()).device
    # Prompts come fitted to the small LM's limit (lmcot.prompting.fitting): never cut them here.
    enc = tokenizer(list(prompts), padding=True, truncation=False, return_tensors="pt")
    enc = {key: v.to(device) for key, v in enc.items()}
    was_training = model.training
    model.eval()
    out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                         max_new_tokens=max_new_tokens, num_return_sequences=k,
                         pad_token_id=tokenizer.pad_token_id)
    model.train(was_training)
    labels = out[:, 1:]
    mask = rl.completion_mask(labels, tokenizer.eos_token_id)
    labels = labels.masked_fill(mask == 0, tokenizer.pad_token_id)
    return Rollouts(
        input_ids=enc["input_ids"].repeat_interleave(k, dim=0),
        attention_mask=enc["attention_mask"].repeat_interleave(k, dim=0),
        decoder_input_ids=out[:, :-1],  # generate pads after eos, so no eos is ever fed back
        labels=labels,
        mask=mask,
        texts=[t.strip() for t in tokenizer.batch_decode(labels, skip_special_tokens=True)],
    )


def rollout_logps(forward, r: Rollouts, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs ``[N, T]`` of the sampled tokens under ``forward`` (a model or an engine).

    Logits are divided by the sampling temperature, so the ratio compares the distributions
    the samples were drawn from.
    """
    out = forward(input_ids=r.input_ids, attention_mask=r.attention_mask, decoder_input_ids=r.decoder_input_ids,
                  use_cache=False)
    return rl.seq2seq_token_logps(out.logits / temperature, r.labels)


def grpo_step(engine: Engine, tokenizer, batch: Sequence[dict], *, reward_fn: RewardFn, cfg: RefineConfig,
              max_new_tokens: int, ref_model=None, max_prompt_tokens: int = 512) -> dict:
    """One RL step on a batch of rows (``prompt`` plus the reward columns); returns its metrics."""
    start = time.perf_counter()
    k = cfg.num_generations
    model = engine.module
    model.eval()  # no dropout: sampling and scoring see the same policy, so the first ratio is exactly 1
    prompts = [row["prompt"] for row in batch]
    r = sample_rollouts(model, tokenizer, prompts, k, max_new_tokens=max_new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, max_prompt_tokens=max_prompt_tokens)
    sampled = time.perf_counter()

    columns = {key: [row[key] for row in batch for _ in range(k)] for key in batch[0] if key != "prompt"}
    total, components = reward_fn([p for p in prompts for _ in range(k)], r.texts, columns)
    rewarded = time.perf_counter()
    device = r.labels.device
    rewards = torch.tensor(total, dtype=torch.float32, device=device)
    # this rank's share of the global token count (one collective per step): dapo's divisor, and
    # what makes the per-token statistics global means once mean_across_ranks averages them
    normalizer = rl.dapo_normalizer(r.mask)
    task = components.get(TASK_REWARD)
    flat = task is not None and rl.all_groups_flat(torch.tensor(task, dtype=torch.float32), k)
    skip = flat and cfg.skip_flat_steps  # the same on every rank: all_groups_flat pools them

    def columns() -> tuple[torch.Tensor, torch.Tensor]:
        weighted = weighted_columns(components, cfg.reward_weights, cfg.aspect_mode)
        return (torch.tensor([v for _, v in weighted.values()], dtype=torch.float32, device=device).T,
                torch.tensor([w for w, _ in weighted.values()]))

    estimator, policy_loss = rl.get_adv_estimator(cfg.algorithm), rl.get_policy_loss(cfg.algorithm)
    # The sampling policy's log-probs: with one update per batch they are the first forward's,
    # detached. An estimator that compares them with the reference (RLOO's reward penalty) gets them
    # from the same no-grad forward the reference gets (as TRL computes them): policy == reference
    # gives exactly 0, not autograd-kernel rounding.
    need_old = cfg.num_iterations > 1 or (estimator.reads_sampling_logps and ref_model is not None)
    with torch.no_grad():
        old_logps = rollout_logps(model, r, cfg.temperature) if need_old else None
        ref_logps = rollout_logps(ref_model, r, cfg.temperature) if ref_model is not None else None
    advantages = None
    for _ in range(1 if skip else cfg.num_iterations):
        with torch.no_grad() if skip else contextlib.nullcontext():  # a skipped step only measures
            logps = rollout_logps(engine, r, cfg.temperature)
        if old_logps is None:
            old_logps = logps.detach()
        if advantages is None:
            advantages = torch.zeros_like(rewards) if skip else estimator.fn(
                rl.Scored(rewards, k, r.mask, columns, old_logps, ref_logps), cfg)
        loss, stats = policy_loss(logps, old_logps, advantages, r.mask, ref_logps=ref_logps, cfg=cfg,
                                  normalizer=normalizer)
        if not skip:
            engine.backward(loss)
            engine.step()
    end = time.perf_counter()

    rewards = rewards.cpu()
    grouped = rewards.view(-1, k)
    metrics = {f"reward/{name}": sum(v) / len(v) for name, v in components.items()}
    metrics.update({f"frac_reward_zero_std/{name}": rl.zero_std_fraction(torch.tensor(v), k)
                    for name, v in components.items()})
    metrics.update(
        reward=rewards.mean().item(),
        reward_std=grouped.std(dim=1).mean().item(),
        frac_reward_zero_std=rl.zero_std_fraction(rewards, k),
        loss=loss.item(),
        **stats,
        completion_tokens=r.mask.sum(dim=1).float().mean().item(),
        rollouts=len(r.texts),
        step_seconds=end - start,
        sample_seconds=sampled - start,
        reward_seconds=rewarded - sampled,
        flat_task_reward_step=flat,
    )
    return metrics


def mean_across_ranks(metrics: dict) -> dict:
    """Average numeric metrics over the ranks of an initialised ``torch.distributed`` group
    (sums for ``rollouts``; maxima for times, since the slowest rank sets the pace). Flags (``bool``)
    are decided for all ranks together, so they are kept as they are."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return dict(metrics)
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    world = torch.distributed.get_world_size()
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    values = values.to(rl.reduce_device(values))  # NCCL reduces CUDA tensors only
    summed, maxed = values.clone(), values.clone()
    torch.distributed.all_reduce(summed)
    torch.distributed.all_reduce(maxed, op=torch.distributed.ReduceOp.MAX)
    summed, maxed = summed.cpu(), maxed.cpu()
    out = dict(metrics)
    for i, key in enumerate(keys):
        if key == "rollouts":
            out[key] = int(summed[i].item())
        elif key.endswith("_seconds"):
            out[key] = maxed[i].item()
        else:
            out[key] = summed[i].item() / world
    return out


def train(engine: Engine, tokenizer, rows: Sequence[dict], *, reward_fn: RewardFn, cfg: RefineConfig,
          max_new_tokens: int, ref_model=None, start_step: int = 0, seed: int = 0, rank: int = 0,
          world_size: int = 1, max_prompt_tokens: int = 512, flat_steps_before: int = 0,
          on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Steps ``start_step+1 .. cfg.max_steps``; ``on_step(step, metrics)`` after each (logging, checkpoints).

    Metrics are averaged over ranks when ``torch.distributed`` is initialised, and carry
    ``rollouts_per_s``, ``reward_share`` (share of the step spent computing rewards) and
    ``flat_steps_total``, counted on from ``flat_steps_before`` (the flat steps before ``start_step``).
    """
    history = []
    flat_total = flat_steps_before
    for step in range(start_step, cfg.max_steps):
        torch.manual_seed(seed * 1_000_003 + step * world_size + rank)
        batch = [rows[i] for i in batch_indices(len(rows), step, cfg.prompts_per_step, rank, world_size, seed)]
        metrics = mean_across_ranks(grpo_step(engine, tokenizer, batch, reward_fn=reward_fn, cfg=cfg,
                                              max_new_tokens=max_new_tokens, ref_model=ref_model,
                                              max_prompt_tokens=max_prompt_tokens))
        metrics["step"] = step + 1
        metrics["rollouts_per_s"] = metrics["rollouts"] / max(metrics["step_seconds"], 1e-9)
        metrics["reward_share"] = metrics["reward_seconds"] / max(metrics["step_seconds"], 1e-9)
        flat_total += metrics["flat_task_reward_step"]
        metrics["flat_steps_total"] = flat_total
        history.append(metrics)
        if on_step is not None:
            on_step(step + 1, metrics)
    return history
