"""The algorithm of GRPO-family RL as pure tensor functions (no models, no scheduling).

Shapes: ``N`` completions (``B`` prompts x ``k`` samples, grouped by prompt: rows
``i*k .. i*k+k-1`` share prompt ``i``), ``T`` completion tokens, ``V`` vocabulary.

- :func:`group_advantages`: GRPO (reward minus the group mean, optionally divided by
  the group or batch std) or RLOO (reward minus the mean of the other k-1 samples).
- :func:`seq2seq_token_logps` / :func:`causal_token_logps`: log-probs of the sampled
  tokens from a model's logits, for both model families; :func:`completion_mask`
  keeps the tokens up to and including the first end-of-sequence token.
- :func:`clipped_policy_loss`: PPO's clipped ratio objective per token. With one
  update per batch the ratio is exactly 1 (the gradient is the plain policy
  gradient); with ``num_iterations > 1`` the clip bounds how far a batch moves it.
- :func:`kl_k3`: Schulman's k3 estimator of KL(policy || reference) per token,
  ``exp(ref - logp) - (ref - logp) - 1``: unbiased, always >= 0, low variance, and
  needs only the log-probs of the sampled tokens (what TRL's GRPO uses too).
- :func:`grpo_loss`: the whole per-batch loss and its statistics.

Kept tiny and separate from the training loops so each piece has a unit test
(the shape of verl's ``core_algos.py``).
"""

from __future__ import annotations

import torch

ALGORITHMS = ("grpo", "rloo")


def group_advantages(rewards: torch.Tensor, group_size: int, algorithm: str = "grpo", scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """Advantages of ``N`` rewards in groups of ``group_size`` consecutive rows.

    ``grpo``: ``r - mean(group)``; ``rloo``: ``r - mean(other samples of the group)``
    (= ``k/(k-1)`` times the GRPO centring). ``scale``: divide by the ``group`` std, the
    ``batch`` std, or ``none``. A group whose rewards are all equal gets zero advantages.

    >>> group_advantages(torch.tensor([1., 0., 0., 0.]), 2, scale="none").tolist()
    [0.5, -0.5, 0.0, 0.0]
    >>> group_advantages(torch.tensor([1., 0., 3., 3.]), 2, "rloo", scale="none").tolist()
    [1.0, -1.0, 0.0, 0.0]
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards cannot form groups of {group_size} (need >= 2 per group)")
    r = rewards.float().view(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    if algorithm == "grpo":
        adv = r - mean
    else:
        baseline = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
        adv = r - baseline
    if scale == "group":
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        adv = adv / (r.std() + eps)
    elif scale != "none":
        raise ValueError(f"scale={scale!r} is not one of group, batch, none")
    return adv.reshape(-1)


def completion_mask(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for the tokens of each row up to and including its first ``eos_token_id``, 0 after.

    >>> completion_mask(torch.tensor([[5, 1, 0, 0], [5, 6, 7, 8]]), eos_token_id=1)
    tensor([[1, 1, 0, 0],
            [1, 1, 1, 1]])
    """
    is_eos = ids == eos_token_id
    # position of the first eos (T when none): tokens after it are padding
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.full_like(ids[:, 0], ids.shape[1]))
    positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    return (positions <= first.unsqueeze(1)).long()


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[label]`` per position, in float32: ``[N, T, V], [N, T] -> [N, T]``.

    >>> token_logps(torch.zeros(1, 2, 4), torch.tensor([[0, 3]])).exp()
    tensor([[0.2500, 0.2500]])
    """
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def seq2seq_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Encoder-decoder: decoder logits at step t (fed ``labels[:t]`` after the start token) predict ``labels[t]``.

    >>> seq2seq_token_logps(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)).shape
    torch.Size([2, 3])
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"decoder logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    return token_logps(logits, labels)


def causal_token_logps(logits: torch.Tensor, input_ids: torch.Tensor, num_completion_tokens: int) -> torch.Tensor:
    """Decoder-only: log-probs of the last ``num_completion_tokens`` of ``input_ids`` (prompt + completion,
    prompts left-padded so every completion starts at the same column); logits at t predict token t+1.

    >>> causal_token_logps(torch.zeros(1, 5, 4), torch.tensor([[0, 1, 2, 3, 0]]), 2).exp()
    tensor([[0.2500, 0.2500]])
    """
    t = num_completion_tokens
    if not 0 < t < input_ids.shape[1]:
        raise ValueError(f"num_completion_tokens={t} must be in 1..{input_ids.shape[1] - 1} (the prompt needs a token)")
    return token_logps(logits[:, -t - 1 : -1], input_ids[:, -t:])


def sequence_logps(token_logps_: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of each whole completion: the masked sum of its token log-probs.

    >>> sequence_logps(torch.tensor([[-1.0, -2.0, -9.0]]), torch.tensor([[1, 1, 0]]))
    tensor([-3.])
    """
    return (token_logps_ * mask).sum(dim=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, loss_type: str = "dapo") -> torch.Tensor:
    """``dapo``: mean over all unmasked tokens; ``grpo``: mean per sequence, then over sequences.

    >>> v, m = torch.tensor([[1., 1., 1., 1.], [4., 0., 0., 0.]]), torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    >>> round(masked_mean(v, m, "dapo").item(), 4), masked_mean(v, m, "grpo").item()
    (1.6, 2.5)
    """
    mask = mask.to(values.dtype)
    if loss_type == "dapo":
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "grpo":
        return ((values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    raise ValueError(f"loss_type={loss_type!r} is not one of dapo, grpo")


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                        epsilon: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``-min(ratio * A, clip(ratio, 1-eps, 1+eps) * A)`` and where the clip was active.

    >>> loss, clipped = clipped_policy_loss(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2),
    ...                                     torch.tensor([1.0]), epsilon=0.2)
    >>> [round(x, 4) for x in loss[0].tolist()], clipped.tolist()
    ([-1.2, -0.5], [[True, False]])
    """
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon) * adv
    return -torch.min(unclipped, clipped), clipped < unclipped


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(policy || reference) per token: ``exp(d) - d - 1`` with ``d = ref - logp``.

    >>> kl_k3(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0]))
    tensor([0.0000, 0.7183])
    """
    d = ref_logps - logps
    return torch.exp(d) - d - 1.0


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              ref_logps: torch.Tensor | None = None, beta: float = 0.0, epsilon: float = 0.2,
              loss_type: str = "dapo") -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch (clipped policy term + ``beta`` x KL to the reference) and its statistics.

    >>> lp = torch.zeros(2, 3, requires_grad=True)
    >>> loss, stats = grpo_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 3))
    >>> loss.item(), stats["kl"], stats["clip_fraction"]
    (0.0, 0.0, 0.0)
    """
    per_token, clipped = clipped_policy_loss(logps, old_logps, advantages, epsilon)
    policy = masked_mean(per_token, mask, loss_type)
    loss = policy
    kl_value = 0.0
    if ref_logps is not None:
        kl = masked_mean(kl_k3(logps, ref_logps), mask, loss_type)
        kl_value = kl.item()
        if beta > 0:
            loss = loss + beta * kl
    stats = {
        "policy_loss": policy.item(),
        "kl": kl_value,
        "clip_fraction": masked_mean(clipped.float(), mask, "dapo").item(),
    }
    return loss, stats
