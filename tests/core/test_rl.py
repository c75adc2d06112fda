"""The RL math: advantages, log-probs and masks of both families, clipping, KL; the registries that pick
an algorithm by name; the seq2seq loop's step on a batch whose task reward is flat."""

import pytest
import torch

from lmcot.training import rl


def test_grpo_advantages_are_zero_mean_unit_std_per_group():
    torch.manual_seed(0)
    rewards = torch.rand(12) * 5
    adv = rl.group_advantages(rewards, 4).view(3, 4)
    assert torch.allclose(adv.mean(dim=1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(adv.std(dim=1), torch.ones(3), atol=1e-3)
    # order inside a group is kept: the best sample gets the largest advantage
    assert adv.argmax(dim=1).tolist() == rewards.view(3, 4).argmax(dim=1).tolist()


def test_scaling_options():
    rewards = torch.tensor([0.0, 2.0, 10.0, 30.0])
    none = rl.group_advantages(rewards, 2, scale="none")
    assert none.tolist() == [-1.0, 1.0, -10.0, 10.0]
    group = rl.group_advantages(rewards, 2, scale="group")
    assert torch.allclose(group.abs(), torch.full((4,), 0.7071), atol=1e-3)  # each group scaled to unit std
    batch = rl.group_advantages(rewards, 2, scale="batch")
    assert torch.allclose(batch, none / rewards.std(), atol=1e-3)  # relative sizes between groups survive
    with pytest.raises(ValueError, match="scale"):
        rl.group_advantages(rewards, 2, scale="max")


def test_equal_rewards_give_zero_advantages():
    adv = rl.group_advantages(torch.tensor([0.7, 0.7, 0.7, 0.1, 0.1, 0.1]), 3)
    assert torch.equal(adv, torch.zeros(6))


def test_rloo_uses_the_leave_one_out_baseline():
    rewards = torch.tensor([1.0, 2.0, 6.0])
    adv = rl.rloo_advantages(rewards, 3)
    expected = [1.0 - 4.0, 2.0 - 3.5, 6.0 - 1.5]
    assert adv.tolist() == pytest.approx(expected)
    grpo = rl.group_advantages(rewards, 3, scale="none")
    assert adv.tolist() == pytest.approx((grpo * 3 / 2).tolist())  # k/(k-1) times the GRPO centring


def test_bad_groups_are_rejected():
    with pytest.raises(ValueError, match="groups of 4"):
        rl.group_advantages(torch.zeros(6), 4)


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[7, 8, 1, 0, 0], [1, 0, 0, 0, 0], [7, 7, 7, 7, 7], [7, 1, 9, 1, 0]])
    assert rl.completion_mask(ids, 1).tolist() == [
        [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]


def test_seq2seq_logps_match_the_model_loss():
    """Masked sequence log-prob equals minus the HF cross-entropy summed over the same tokens."""
    from lmcot.config import ModelSpec
    from lmcot.models.loading import load_model

    lm = load_model(ModelSpec("tiny:t5-small"))
    enc = lm.tokenizer(["who wrote it?"], return_tensors="pt")
    labels = torch.tensor([[11, 12, 13, lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id]])
    mask = rl.completion_mask(labels, lm.tokenizer.eos_token_id)
    with torch.no_grad():
        out = lm.model(**enc, labels=labels.masked_fill(mask == 0, -100))
    logps = rl.seq2seq_token_logps(out.logits, labels)
    assert rl.sequence_logps(logps, mask).item() == pytest.approx(-out.loss.item() * 4, rel=1e-4)


def test_causal_logps_pick_the_completion_tokens():
    from lmcot.config import ModelSpec
    from lmcot.models.loading import load_model

    lm = load_model(ModelSpec("tiny:causal-small"))
    ids = torch.tensor([[5, 6, 7, 20, 21, 22]])  # 3 prompt + 3 completion tokens
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits
        full = torch.log_softmax(logits.float(), -1)
    logps = rl.causal_token_logps(logits, ids, 3)
    expected = [full[0, 2, 20], full[0, 3, 21], full[0, 4, 22]]
    assert logps[0].tolist() == pytest.approx([e.item() for e in expected], rel=1e-5)
    with pytest.raises(ValueError, match="num_completion_tokens"):
        rl.causal_token_logps(logits, ids, 6)


def test_masked_tokens_do_not_count():
    logps = torch.tensor([[-1.0, -1.0, -50.0]])
    assert rl.sequence_logps(logps, torch.tensor([[1, 1, 0]])).item() == -2.0
    per_token = torch.tensor([[1.0, 1.0, 100.0]])
    assert rl.masked_mean(per_token, torch.tensor([[1, 1, 0]])).item() == 1.0


def test_ratio_one_gives_the_plain_policy_gradient():
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    loss, stats = rl.grpo_loss(logps, logps.detach(), adv, torch.ones(2, 2), loss_type="dapo")
    loss.backward()
    # d/dlogp of -ratio*A at ratio 1 is -A, averaged over the 4 tokens
    assert logps.grad.tolist() == [[-0.5, -0.5], [0.25, 0.25]]
    assert stats["clip_fraction"] == 0.0


def test_clipping_stops_the_gradient_beyond_the_trust_region():
    old = torch.zeros(1, 4)
    # ratios 1.5, 1.1, 0.5, 0.9
    logps = torch.log(torch.tensor([[1.5, 1.1, 0.5, 0.9]])).requires_grad_()
    loss_pos, clipped_pos = rl.clipped_policy_loss(logps, old, torch.tensor([1.0]), epsilon=0.2)
    loss_pos.sum().backward()
    # positive advantage: only the ratio above 1+eps is clipped (no gradient there)
    assert clipped_pos.tolist() == [[True, False, False, False]]
    assert logps.grad[0, 0].item() == 0.0 and logps.grad[0, 1].item() != 0.0
    assert loss_pos[0, 0].item() == pytest.approx(-1.2)
    logps.grad = None
    loss_neg, clipped_neg = rl.clipped_policy_loss(logps, old, torch.tensor([-1.0]), epsilon=0.2)
    loss_neg.sum().backward()
    # negative advantage: only the ratio below 1-eps is clipped
    assert clipped_neg.tolist() == [[False, False, True, False]]
    assert logps.grad[0, 2].item() == 0.0 and logps.grad[0, 3].item() != 0.0


def test_kl_is_zero_when_policy_equals_reference_and_positive_otherwise():
    torch.manual_seed(0)
    logps = -torch.rand(3, 5) * 3
    assert torch.equal(rl.kl_k3(logps, logps), torch.zeros(3, 5))
    other = -torch.rand(3, 5) * 3
    assert (rl.kl_k3(logps, other) >= 0).all() and rl.kl_k3(logps, other).sum() > 0
    _, stats = rl.grpo_loss(logps, logps, torch.zeros(3), torch.ones(3, 5), ref_logps=logps, beta=0.1)
    assert stats["kl"] == 0.0


def test_kl_k3_is_an_unbiased_estimate_of_the_true_kl():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6), 0)
    q = torch.softmax(torch.randn(6), 0)
    samples = torch.multinomial(p, 200_000, replacement=True)
    estimate = rl.kl_k3(p.log()[samples], q.log()[samples]).mean().item()
    true_kl = (p * (p.log() - q.log())).sum().item()
    assert estimate == pytest.approx(true_kl, rel=0.05)


def test_beta_adds_the_kl_term():
    logps = torch.tensor([[-1.0, -1.0]])
    ref = torch.tensor([[-2.0, -2.0]])
    without, s0 = rl.grpo_loss(logps, logps, torch.tensor([0.0]), torch.ones(1, 2), ref_logps=ref, beta=0.0)
    with_kl, s1 = rl.grpo_loss(logps, logps, torch.tensor([0.0]), torch.ones(1, 2), ref_logps=ref, beta=0.5)
    assert s0["kl"] == s1["kl"] > 0
    assert with_kl.item() == pytest.approx(without.item() + 0.5 * s1["kl"])


def test_k3_is_clamped_as_verl_does_so_bf16_cannot_overflow():
    logps = torch.tensor([[-100.0, -1.0, 0.0]], dtype=torch.bfloat16)
    ref = torch.tensor([[0.0, -1.0, -100.0]], dtype=torch.bfloat16)
    raw = rl.kl_k3(logps, ref, clamp=False)
    assert torch.isinf(raw[0, 0])  # exp(100) overflows bf16 (and float32)
    kl = rl.kl_k3(logps, ref)
    assert torch.isfinite(kl).all()
    assert kl[0].tolist() == [10.0, 0.0, 10.0]  # both directions capped at 10, as verl's low_var_kl
    # inside the clamp the value is the plain k3
    small = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -0.5])
    assert torch.allclose(rl.kl_k3(*small), rl.kl_k3(*small, clamp=False))


def _trl_rloo_reference(rewards, old_lp, ref_lp, mask, beta, k, normalize, logps, epsilon):
    """TRL 1.16 ``RLOOTrainer`` transcribed (``_generate_and_score_completions`` + ``_compute_loss``),
    single process, every completion scorable: the yardstick lmcot's seq2seq RLOO must equal."""
    per_token_kl = old_lp - ref_lp
    kl = (per_token_kl * mask).sum(-1)
    rewards = rewards - beta * kl
    grouped = rewards.view(-1, k)
    baselines = ((grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)).view(-1)
    advantages = rewards - baselines
    if normalize:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-4)
    seq_logps = (logps * mask).sum(1)
    seq_old = (old_lp * mask).sum(1)
    coef_1 = torch.exp(seq_logps - seq_old)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon)
    loss = -torch.min(coef_1 * advantages, coef_2 * advantages).mean()
    return advantages, loss


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_rloo_matches_trl_rlootrainer(normalize, beta):
    torch.manual_seed(1)
    k, n, t = 4, 12, 6
    rewards = torch.rand(n)
    old_lp = -torch.rand(n, t) * 3
    ref_lp = -torch.rand(n, t) * 3
    mask = torch.ones(n, t)
    mask[0, 3:] = 0
    mask[5, 1:] = 0
    logps = (old_lp + 0.3 * torch.randn(n, t)).requires_grad_()
    want_adv, want_loss = _trl_rloo_reference(rewards, old_lp, ref_lp, mask, beta, k, normalize, logps, 0.2)

    penalized = rl.rloo_rewards(rewards, old_lp, ref_lp, mask, beta)
    adv = rl.rloo_advantages(penalized, k, normalize=normalize)
    loss, stats = rl.rloo_loss(logps, old_lp, adv, mask, epsilon=0.2)
    assert torch.allclose(adv, want_adv, atol=1e-5)
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-5, abs=1e-6)
    assert 0.0 < stats["clip_fraction"] <= 1.0  # ratios of summed log-probs leave the trust region


def test_rloo_kl_is_a_summed_reward_penalty_not_a_loss_term():
    rewards = torch.tensor([1.0, 1.0])
    old = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-2.0, -2.0, -2.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # row 0: k1 = 1 per token over 2 tokens -> penalty 0.1 * 2; row 1: policy == reference
    assert rl.rloo_rewards(rewards, old, ref, mask, beta=0.1).tolist() == pytest.approx([0.8, 1.0])
    assert torch.equal(rl.rloo_rewards(rewards, old, ref, mask, beta=0.0), rewards)
    assert torch.equal(rl.rloo_rewards(rewards, old, None, mask, beta=0.1), rewards)
    # the penalty moves the advantage (the baseline sees it) ...
    assert rl.rloo_advantages(rl.rloo_rewards(rewards, old, ref, mask, 0.1), 2).tolist() == pytest.approx([-0.2, 0.2])
    # ... and the loss has no KL: equal advantages -> zero loss whatever the reference
    lp = old.clone().requires_grad_()
    loss, _ = rl.rloo_loss(lp, old, torch.zeros(2), mask)
    assert loss.item() == 0.0


def test_rloo_normalisation_is_over_the_batch_not_per_group():
    rewards = torch.tensor([0.0, 2.0, 10.0, 30.0])
    raw = rl.rloo_advantages(rewards, 2)
    assert raw.tolist() == [-2.0, 2.0, -20.0, 20.0]
    normed = rl.rloo_advantages(rewards, 2, normalize=True)
    assert torch.allclose(normed, (raw - raw.mean()) / (raw.std() + 1e-4))
    assert abs(normed[2].item()) > 5 * abs(normed[0].item())  # the low-variance group stays small
    with pytest.raises(ValueError, match="groups of 3"):
        rl.rloo_advantages(torch.zeros(4), 3)


def test_rloo_loss_is_per_sequence():
    # at ratio 1 every token of a sequence gets -A / N_sequences, whatever the sequence's length
    logps = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    loss, _ = rl.rloo_loss(logps, logps.detach(), torch.tensor([2.0, 2.0]), mask)
    loss.backward()
    assert logps.grad.tolist() == [[-1.0, -1.0, -1.0, -1.0], [-1.0, 0.0, 0.0, 0.0]]
    # the ratio is of whole sequences: 4 tokens each +0.1 -> ratio e^0.4 > 1.2, clipped for A > 0
    old = torch.zeros(1, 4)
    lp = torch.full((1, 4), 0.1, requires_grad=True)
    loss, stats = rl.rloo_loss(lp, old, torch.tensor([1.0]), torch.ones(1, 4), epsilon=0.2)
    loss.backward()
    assert stats["clip_fraction"] == 1.0 and lp.grad.abs().sum().item() == 0.0
    assert loss.item() == pytest.approx(-1.2)


def test_dapo_normalizer_single_process_is_the_token_count():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert rl.dapo_normalizer(mask).item() == 4.0
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    assert rl.masked_mean(values, mask, "dapo", rl.dapo_normalizer(mask)).item() == 2.5
    lp = torch.zeros(2, 4)
    a = rl.grpo_loss(lp, lp, torch.tensor([1.0, -1.0]), mask, loss_type="dapo")
    b = rl.grpo_loss(lp, lp, torch.tensor([1.0, -1.0]), mask, loss_type="dapo", normalizer=4.0)
    assert a[0].item() == b[0].item() and a[1] == b[1]


def _two_rank_worker(rank, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        masks = [torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]])]
        advs = [torch.tensor([1.0, -1.0]), torch.tensor([2.0, -0.5])]
        rewards = [torch.tensor([0.0, 1.0, 2.0, 6.0]), torch.tensor([10.0, 30.0, 5.0, 5.0])]
        logps = torch.zeros(2, 4, requires_grad=True)
        loss, _ = rl.grpo_loss(logps, logps.detach(), advs[rank], masks[rank], loss_type="dapo")
        loss.backward()
        torch.save({
            "normalizer": rl.dapo_normalizer(masks[rank]).item(),
            # DeepSpeed / DDP apply the mean of the ranks' gradients: each rank's rows weigh 1/2
            "avg_grad": logps.grad / 2,
            "rloo": rl.rloo_advantages(rewards[rank], 2, normalize=True),
            "batch": rl.group_advantages(rewards[rank], 2, scale="batch"),
            "sum": rl.distributed_sum(torch.tensor([float(rank + 1)])).item(),
        }, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_normalise_by_the_global_batch(tmp_path):
    """dapo divides by the token count of all ranks (TRL's ``num_items_in_batch``); RLOO's
    normalisation and GRPO's batch std pool the ranks, as TRL's gathered batch does."""
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert r0["normalizer"] == r1["normalizer"] == 5.0  # (7 + 3) tokens / 2 ranks
    assert r0["sum"] == r1["sum"] == 3.0
    # each token's share of the averaged update equals one process holding the whole batch: -A / (all 10 tokens)
    whole_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    lp = torch.zeros(4, 4, requires_grad=True)
    loss, _ = rl.grpo_loss(lp, lp.detach(), torch.tensor([1.0, -1.0, 2.0, -0.5]), whole_mask, loss_type="dapo")
    loss.backward()
    assert torch.allclose(torch.cat([r0["avg_grad"], r1["avg_grad"]]), lp.grad)
    whole_rewards = torch.tensor([0.0, 1.0, 2.0, 6.0, 10.0, 30.0, 5.0, 5.0])
    assert torch.allclose(torch.cat([r0["rloo"], r1["rloo"]]), rl.rloo_advantages(whole_rewards, 2, normalize=True))
    assert torch.allclose(torch.cat([r0["batch"], r1["batch"]]), rl.group_advantages(whole_rewards, 2, scale="batch"))


def test_normalize_then_sum_keeps_a_flat_group_small_only_beside_groups_whose_task_reward_moves():
    """Group 1: the task reward is the same for both samples, a 0.1-weighted aspect differs by noise.
    Summed first and group-scaled, that noise becomes a full unit advantage; normalised per reward, it
    stays a tenth of the task reward's say, as long as another group's task reward moves. When every
    group's task reward is flat, the batch normalisation scales the noise back to unit size."""
    task = torch.tensor([1.0, 1.0, 0.0, 1.0])
    aspect = torch.tensor([0.50, 0.52, 0.50, 0.50])
    summed = rl.group_advantages(task + 0.1 * aspect, 2, scale="group")
    assert abs(summed[0].item()) > 0.6, "sum_then_normalize: noise gets as large an advantage as the task"
    adv = rl.normalize_then_sum(torch.stack([task, aspect], dim=1), torch.tensor([1.0, 0.1]), 2)
    assert abs(adv[1] - adv[0]).item() < 0.25 * abs(adv[3] - adv[2]).item()
    assert rl.zero_std_fraction(task, 2) == 0.5 and rl.zero_std_fraction(aspect, 2) == 0.5
    assert not rl.all_groups_flat(task, 2)

    flat_task = torch.tensor([1.0, 1.0, 0.0, 0.0])
    noise = torch.tensor([0.50, 0.52, 0.51, 0.50])
    adv = rl.normalize_then_sum(torch.stack([flat_task, noise], dim=1), torch.tensor([1.0, 0.1]), 2)
    assert rl.all_groups_flat(flat_task, 2)
    assert adv.abs().min().item() > 0.8, "all groups flat: judge noise alone, scaled to unit size"


# -- the registries ----------------------------------------------------------------------------
def test_every_algorithm_the_config_accepts_has_an_estimator_a_loss_and_a_trl_trainer():
    from lmcot.config.refine import ALGORITHMS
    from lmcot.stages.refine_worker import TRL_TRAINERS

    assert set(ALGORITHMS) == set(rl.ADV_ESTIMATORS) == set(rl.POLICY_LOSSES) == set(TRL_TRAINERS)


def test_an_unknown_algorithm_names_the_field_and_the_registered_names():
    with pytest.raises(ValueError, match=r"refine\.algorithm='ppo' names no registered advantage estimator: "
                                         r"use one of grpo, rloo"):
        rl.get_adv_estimator("ppo")
    with pytest.raises(ValueError, match=r"refine\.algorithm='ppo' names no registered policy loss"):
        rl.get_policy_loss("ppo")
    with pytest.raises(ValueError, match="registered twice"):
        rl.register_adv_est("grpo")(lambda scored, cfg: scored.rewards)


def test_registered_estimators_and_losses_are_the_tensor_functions():
    from lmcot.config import RefineConfig

    torch.manual_seed(0)
    k, n, t = 2, 6, 4
    rewards, mask = torch.rand(n), torch.ones(n, t)
    old, ref = -torch.rand(n, t), -torch.rand(n, t)
    cols = torch.stack([rewards, torch.rand(n)], dim=1)
    scored = rl.Scored(rewards, k, mask, lambda: (cols, torch.tensor([1.0, 0.1])), old, ref)
    for scale in ("group", "batch", "none"):
        cfg = RefineConfig(scale_rewards=scale)
        assert torch.equal(rl.get_adv_estimator("grpo").fn(scored, cfg), rl.group_advantages(rewards, k, scale))
    cfg = RefineConfig(reward_aggregation="normalize_then_sum")
    assert torch.equal(rl.get_adv_estimator("grpo").fn(scored, cfg),
                       rl.normalize_then_sum(cols, torch.tensor([1.0, 0.1]), k))
    cfg = RefineConfig(algorithm="rloo", beta=0.05)
    rloo = rl.get_adv_estimator("rloo")
    assert rloo.reads_sampling_logps and not rl.get_adv_estimator("grpo").reads_sampling_logps
    assert torch.equal(rloo.fn(scored, cfg),
                       rl.rloo_advantages(rl.rloo_rewards(rewards, old, ref, mask, 0.05), k, normalize=True))
    logps = old + 0.1
    loss, stats = rl.get_policy_loss("grpo")(logps, old, rewards, mask, ref_logps=ref, cfg=cfg, normalizer=None)
    want, want_stats = rl.grpo_loss(logps, old, rewards, mask, ref_logps=ref, beta=0.05)
    assert loss.item() == want.item() and stats == want_stats
    loss, stats = rl.get_policy_loss("rloo")(logps, old, rewards, mask, ref_logps=ref, cfg=cfg, normalizer=None)
    assert loss.item() == rl.rloo_loss(logps, old, rewards, mask)[0].item()
    assert stats["kl"] == pytest.approx(rl.kl_k1(old, ref).mean().item())


# -- RLOO through the registry: what it does to a policy -----------------------------------------
def test_rloo_baseline_leaves_each_sample_out():
    """d advantage_i / d reward_j is 1 for i == j and -1/(k-1) within the group, 0 across groups:
    a sample's own reward is not in its baseline (a group-mean baseline gives 1 - 1/k on the diagonal)."""
    from lmcot.config import RefineConfig

    k = 4
    cfg = RefineConfig(algorithm="rloo", beta=0.0, scale_rewards="none")
    estimator = rl.get_adv_estimator("rloo")
    mask = torch.ones(2 * k, 3)

    def advantages(rewards):
        return estimator.fn(rl.Scored(rewards, k, mask), cfg)

    jacobian = torch.autograd.functional.jacobian(advantages, torch.rand(2 * k))
    block = torch.eye(k) - (1 - torch.eye(k)) / (k - 1)
    assert torch.allclose(jacobian, torch.block_diag(block, block))
    # each group's advantages sum to 0, so normalising over the batch leaves a flat group at exactly 0
    normed = estimator.fn(rl.Scored(torch.tensor([0.3] * k + [0.0, 1.0, 0.0, 0.0]), k, mask),
                          RefineConfig(algorithm="rloo", beta=0.0))
    assert normed[:k].abs().max().item() < 1e-6 and normed[k + 1] > 0 > normed[k]


class ToyPolicy:
    """A position-wise categorical policy over 5 tokens; each row of ``labels`` is one rollout."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels
        self.logits = torch.zeros(labels.shape[1], 5, requires_grad=True)

    def token_logps(self) -> torch.Tensor:
        return rl.token_logps(self.logits.expand(len(self.labels), -1, -1), self.labels)

    def sequence_logps(self) -> torch.Tensor:
        with torch.no_grad():
            return rl.sequence_logps(self.token_logps(), torch.ones_like(self.labels))


def rloo_update(policy: ToyPolicy, rewards, k: int, *, beta: float = 0.0, ref_logps=None) -> torch.Tensor:
    """One RLOO step through the registered estimator and loss (plain SGD); the change in each
    rollout's sequence log-probability."""
    from lmcot.config import RefineConfig

    cfg = RefineConfig(algorithm="rloo", beta=beta)
    before = policy.sequence_logps()
    mask = torch.ones_like(policy.labels)
    logps = policy.token_logps()
    old = logps.detach()
    advantages = rl.get_adv_estimator("rloo").fn(rl.Scored(torch.tensor(rewards), k, mask, None, old, ref_logps), cfg)
    loss, _ = rl.get_policy_loss("rloo")(logps, old, advantages, mask, ref_logps=ref_logps, cfg=cfg, normalizer=None)
    loss.backward()
    with torch.no_grad():
        policy.logits -= 0.5 * policy.logits.grad
    return policy.sequence_logps() - before


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rloo_moves_the_policy_toward_the_higher_reward_rollout(sign):
    """Two prompts, two rollouts each, no token shared between rollouts: one step makes the rewarded
    rollouts likelier and the others less likely; with the reward negated, the reverse."""
    labels = torch.tensor([[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]])
    change = rloo_update(ToyPolicy(labels), [sign * r for r in (1.0, 0.0, 0.0, 1.0)], k=2)
    rewarded, other = change[[0, 3]], change[[1, 2]]
    if sign > 0:
        assert (rewarded > 0.05).all() and (other < -0.05).all(), change
    else:
        assert (rewarded < -0.05).all() and (other > 0.05).all(), change


def test_rloo_kl_penalty_pulls_the_drifted_rollout_back_toward_the_reference():
    """Equal rewards, but rollout 0 is likelier under the policy than under the reference: with
    ``beta`` > 0 its penalised reward is lower, so the step makes it less likely; with ``beta`` 0
    the step moves nothing."""
    labels = torch.tensor([[1, 1, 1], [2, 2, 2]])
    policy = ToyPolicy(labels)
    ref = policy.token_logps().detach() - torch.tensor([[0.5], [0.0]])  # rollout 0 drifted by 1.5 nats
    assert rloo_update(ToyPolicy(labels), [1.0, 1.0], k=2, beta=0.0, ref_logps=ref).abs().max() < 1e-6
    change = rloo_update(policy, [1.0, 1.0], k=2, beta=0.1, ref_logps=ref)
    assert change[0] < -0.05 and change[1] > 0.05, change


# -- the seq2seq loop on a batch whose task reward is flat -------------------------------------
PROMPTS = [{"prompt": f"Question {i}: who wrote the book about the river?"} for i in range(2)]


@pytest.fixture(scope="module")
def tiny_t5():
    """The tiny T5, on one thread (tiny models step fastest so, the more on a busy machine)."""
    from lmcot.config import ModelSpec
    from lmcot.models.loading import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(ModelSpec("tiny:t5-small"), for_training=True)
    torch.set_num_threads(threads)


def task_reward(*groups: list[float]):
    """A reward function whose ``task`` component is ``groups`` (one list per prompt, one value per
    sample), beside a ``relevance`` aspect of pure noise: what the judge adds on a flat batch."""
    def reward_fn(prompts, completions, columns):
        task = [v for group in groups for v in group]
        noise = torch.rand(len(completions)).tolist()
        return [t + 0.1 * a for t, a in zip(task, noise)], {"task": task, "relevance": noise}
    return reward_fn


def one_step(lm, reward_fn, **overrides):
    """One step of the seq2seq loop from ``lm``'s weights; returns (metrics, weights moved)."""
    import copy

    from lmcot.config import RefineConfig
    from lmcot.training.grpo_seq2seq import PlainEngine, grpo_step

    cfg = RefineConfig(**{"num_generations": 4, "prompts_per_step": 2, "learning_rate": 1e-3, "temperature": 2.0,
                          "beta": 0.04, "reward_weights": {"task": 1.0, "relevance": 0.1},
                          "reward_aggregation": "normalize_then_sum", **overrides})
    model = copy.deepcopy(lm.model)
    before = [p.detach().clone() for p in model.parameters()]
    ref = copy.deepcopy(lm.model).eval().requires_grad_(False)
    torch.manual_seed(0)
    metrics = grpo_step(PlainEngine(model, lr=cfg.learning_rate), lm.tokenizer, PROMPTS, reward_fn=reward_fn,
                        cfg=cfg, max_new_tokens=6, ref_model=ref)
    moved = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    return metrics, moved


@pytest.mark.parametrize("algorithm, aggregation", [("grpo", "normalize_then_sum"), ("grpo", "sum_then_normalize"),
                                                    ("rloo", "sum_then_normalize")])
def test_a_step_whose_every_group_has_a_flat_task_reward_updates_nothing(tiny_t5, algorithm, aggregation):
    flat = task_reward([1.0] * 4, [0.0] * 4)
    metrics, moved = one_step(tiny_t5, flat, algorithm=algorithm, reward_aggregation=aggregation)
    assert metrics["flat_task_reward_step"] is True
    assert not moved, "no optimizer step on a flat batch"
    assert metrics["policy_loss"] == 0.0, "zero advantages"
    assert metrics["kl"] == 0.0 and "loss" in metrics, "still measured (policy == reference here)"
    # the same batch with the skip off takes the step it took before the skip existed: judge noise moves it
    metrics, moved = one_step(tiny_t5, flat, algorithm=algorithm, reward_aggregation=aggregation,
                              skip_flat_steps=False)
    assert metrics["flat_task_reward_step"] is True and moved


def test_a_step_with_one_group_whose_task_reward_moves_still_updates(tiny_t5):
    metrics, moved = one_step(tiny_t5, task_reward([1.0] * 4, [0.0, 1.0, 0.0, 0.0]))
    assert metrics["flat_task_reward_step"] is False and moved


def test_no_task_reward_never_flags_a_step(tiny_t5):
    def alternating(prompts, completions, columns):
        r = [float(i % 2) for i in range(len(completions))]
        return r, {"digits": r}

    metrics, moved = one_step(tiny_t5, alternating, reward_weights={"digits": 1.0},
                              reward_aggregation="sum_then_normalize")
    assert metrics["flat_task_reward_step"] is False and moved


def test_skip_off_is_the_plain_step_of_the_registered_algorithm(tiny_t5):
    """``skip_flat_steps: false`` on a flat batch: the loop's update equals one hand-made GRPO step
    (normalize_then_sum advantages, the GRPO loss, one optimizer step) on the same rollouts."""
    import copy

    from lmcot.config import RefineConfig
    from lmcot.training.grpo_seq2seq import PlainEngine, grpo_step, rollout_logps, sample_rollouts

    cfg = RefineConfig(num_generations=4, prompts_per_step=2, learning_rate=1e-3, temperature=2.0, beta=0.0,
                       reward_weights={"task": 1.0, "relevance": 0.1}, reward_aggregation="normalize_then_sum",
                       skip_flat_steps=False)
    looped = copy.deepcopy(tiny_t5.model)
    torch.manual_seed(0)
    metrics = grpo_step(PlainEngine(looped, lr=cfg.learning_rate), tiny_t5.tokenizer, PROMPTS,
                        reward_fn=task_reward([1.0] * 4, [0.0] * 4), cfg=cfg, max_new_tokens=6)
    by_hand = copy.deepcopy(tiny_t5.model).eval()
    engine = PlainEngine(by_hand, lr=cfg.learning_rate)
    torch.manual_seed(0)
    r = sample_rollouts(by_hand, tiny_t5.tokenizer, [p["prompt"] for p in PROMPTS], 4, max_new_tokens=6,
                        temperature=2.0)
    _, components = task_reward([1.0] * 4, [0.0] * 4)(None, r.texts, {})
    cols = torch.tensor([components["task"], components["relevance"]]).T
    advantages = rl.normalize_then_sum(cols, torch.tensor([1.0, 0.1]), 4)
    logps = rollout_logps(engine, r, 2.0)
    loss, _ = rl.grpo_loss(logps, logps.detach(), advantages, r.mask)
    loss.backward()
    engine.step()
    assert metrics["flat_task_reward_step"] is True and metrics["loss"] == pytest.approx(loss.item(), abs=1e-7)
    for a, b in zip(looped.parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b)


def test_the_metrics_count_flat_steps_and_resume_counting(tiny_t5):
    import copy

    from lmcot.config import RefineConfig
    from lmcot.training.grpo_seq2seq import PlainEngine, train

    steps = iter([[[1.0] * 4, [0.0] * 4], [[1.0] * 4, [0.0, 1.0, 1.0, 0.0]], [[0.5] * 4, [0.5] * 4]])

    def reward_fn(prompts, completions, columns):
        return task_reward(*next(steps))(prompts, completions, columns)

    cfg = RefineConfig(num_generations=4, prompts_per_step=2, max_steps=3, learning_rate=1e-3, temperature=2.0,
                       beta=0.0, reward_weights={"task": 1.0, "relevance": 0.1},
                       reward_aggregation="normalize_then_sum")
    model = copy.deepcopy(tiny_t5.model)
    history = train(PlainEngine(model, lr=cfg.learning_rate), tiny_t5.tokenizer, PROMPTS * 4, reward_fn=reward_fn,
                    cfg=cfg, max_new_tokens=6, flat_steps_before=5)
    assert [h["flat_task_reward_step"] for h in history] == [True, False, True]
    assert [h["flat_steps_total"] for h in history] == [6, 6, 7]


def test_skip_flat_steps_is_a_boolean():
    from lmcot.config import RefineConfig, load_config

    with pytest.raises(ValueError, match="skip_flat_steps"):
        RefineConfig(skip_flat_steps="no")
    assert load_config("tiny", ["refine.skip_flat_steps=false"]).refine.skip_flat_steps is False
    assert RefineConfig().skip_flat_steps is True


# -- the seq2seq loop's direction: toward the reward, away from its negation ----------------------
MARKED = [{"prompt": f"Question {i}: who wrote the book about the {thing}?"}
          for i, thing in enumerate(("river", "mill", "bridge", "harbour"))]


@pytest.fixture(scope="module")
def marker(tiny_t5):
    """A word the tiny T5 writes in some of its sampled rationales and not in others (the reward's
    spread), and those rollouts: the probe whose log-probabilities the direction test follows."""
    import collections

    from lmcot.training.grpo_seq2seq import sample_rollouts

    torch.manual_seed(0)
    probe = sample_rollouts(tiny_t5.model, tiny_t5.tokenizer, [p["prompt"] for p in MARKED], 8, max_new_tokens=8,
                            temperature=1.0)
    seen = collections.Counter(w for text in probe.texts for w in set(text.split()))
    word = min(seen, key=lambda w: (abs(seen[w] - len(probe.texts) / 2), w))
    has = torch.tensor([word in text.split() for text in probe.texts])
    assert 0 < has.sum() < len(has), (word, probe.texts)
    return word, probe, has


def rewarded_gap(model, probe, has) -> float:
    """Mean log-probability of the probe's rollouts that hold the marker minus that of the others."""
    from lmcot.training.grpo_seq2seq import rollout_logps

    with torch.no_grad():
        seq = rl.sequence_logps(rollout_logps(model.eval(), probe), probe.mask)
    return (seq[has].mean() - seq[~has].mean()).item()


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_seq2seq_loop_moves_toward_the_reward_and_away_from_its_negation(tiny_t5, marker, algorithm, sign):
    """A few steps with reward ``sign`` x (the rationale holds the marker word): rollouts holding it
    become likelier than the others (their log-probability gap grows) and are sampled more often with
    ``sign`` +1; with the reward negated, both go the other way. A loop that followed the reward's
    sign the wrong way (a flipped advantage or loss) fails one of the two."""
    import copy

    from lmcot.config import RefineConfig
    from lmcot.training.grpo_seq2seq import PlainEngine, train

    word, probe, has = marker

    def reward_fn(prompts, completions, columns):
        r = [sign * float(word in text.split()) for text in completions]
        return r, {"marker": r}

    cfg = RefineConfig(algorithm=algorithm, num_generations=4, prompts_per_step=4, max_steps=3, learning_rate=5e-4,
                       temperature=1.0, beta=0.0, reward_weights={"marker": 1.0})
    model = copy.deepcopy(tiny_t5.model)
    before = rewarded_gap(model, probe, has)
    history = train(PlainEngine(model, lr=cfg.learning_rate), tiny_t5.tokenizer, MARKED, reward_fn=reward_fn,
                    cfg=cfg, max_new_tokens=8, seed=0)
    moved = rewarded_gap(model, probe, has) - before
    share = [sign * h["reward/marker"] for h in history]  # share of the step's rollouts holding the marker
    if sign > 0:
        assert moved > 1.0 and share[-1] > share[0], (moved, share)
    else:
        assert moved < -1.0 and share[-1] < share[0], (moved, share)
