"""The RL math: advantages, log-probs and masks of both families, clipping, KL."""

import pytest
import torch

from lmcot import rl


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
    adv = rl.group_advantages(rewards, 3, "rloo", scale="none")
    expected = [1.0 - 4.0, 2.0 - 3.5, 6.0 - 1.5]
    assert adv.tolist() == pytest.approx(expected)
    grpo = rl.group_advantages(rewards, 3, "grpo", scale="none")
    assert adv.tolist() == pytest.approx((grpo * 3 / 2).tolist())  # k/(k-1) times the GRPO centring


def test_bad_groups_are_rejected():
    with pytest.raises(ValueError, match="groups of 4"):
        rl.group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="algorithm"):
        rl.group_advantages(torch.zeros(4), 2, "ppo")


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[7, 8, 1, 0, 0], [1, 0, 0, 0, 0], [7, 7, 7, 7, 7], [7, 1, 9, 1, 0]])
    assert rl.completion_mask(ids, 1).tolist() == [
        [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]


def test_seq2seq_logps_match_the_model_loss():
    """Masked sequence log-prob equals minus the HF cross-entropy summed over the same tokens."""
    from lmcot.config import ModelSpec
    from lmcot.models import load_model

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
    from lmcot.models import load_model

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
