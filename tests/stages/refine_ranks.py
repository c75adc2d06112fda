"""One rank of the seq2seq refinement loop, as a process of its own (used by ``test_refine.py``).

``python refine_ranks.py MODEL OUT`` with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
in the environment runs the production worker pieces (``refine_worker.seq2seq_engine``: the
DeepSpeed ZeRO-2 engine over gloo; ``grpo_seq2seq.train``) for three steps with a global
batch of two prompts, split over the ranks. Rollouts are sampled per prompt with a seed of
the prompt's own, so that 1 and 2 ranks draw the same rollouts and only the split differs.
Rank 0 writes the step metrics and the final weights to OUT (``torch.save``).
"""

from __future__ import annotations

import os
import sys
import zlib

import torch
import torch.nn.functional as F


def per_prompt_sampler(sample):
    """``grpo_seq2seq.sample_rollouts`` drawing each prompt's rollouts with the prompt's own seed."""
    from lmcot.training.grpo_seq2seq import Rollouts

    def pad_cat(parts, value):
        width = max(t.shape[1] for t in parts)
        return torch.cat([F.pad(t, (0, width - t.shape[1]), value=value) for t in parts])

    def sample_rollouts(model, tokenizer, prompts, k, **kwargs):
        parts = []
        for prompt in prompts:
            torch.manual_seed(zlib.crc32(prompt.encode()))
            parts.append(sample(model, tokenizer, [prompt], k, **kwargs))
        pad = tokenizer.pad_token_id
        return Rollouts(input_ids=pad_cat([p.input_ids for p in parts], pad),
                        attention_mask=pad_cat([p.attention_mask for p in parts], 0),
                        decoder_input_ids=pad_cat([p.decoder_input_ids for p in parts], pad),
                        labels=pad_cat([p.labels for p in parts], pad), mask=pad_cat([p.mask for p in parts], 0),
                        texts=[t for p in parts for t in p.texts])

    return sample_rollouts


def main(model_path: str, out: str) -> None:
    import torch.distributed as dist

    from lmcot.training import grpo_seq2seq
    from lmcot.config import RefineConfig, ScalingConfig
    from lmcot.models.loading import load_tokenizer
    from lmcot.stages.refine_worker import seq2seq_engine

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    os.environ.setdefault("LOCAL_RANK", str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    grpo_seq2seq.sample_rollouts = per_prompt_sampler(grpo_seq2seq.sample_rollouts)
    rc = RefineConfig(num_generations=4, prompts_per_step=2 // world, max_steps=3, learning_rate=1e-3, beta=0.04,
                      loss_type="grpo", scaling=ScalingConfig(num_workers=world, zero_stage=2))
    tokenizer = load_tokenizer(model_path, "seq2seq")
    engine, ref = seq2seq_engine(model_path, rc)
    rows = [{"prompt": f"Question {i}: who wrote the book about the river {i}?"} for i in range(8)]

    def reward_fn(prompts, completions, columns):  # completion length: varies within every group
        rewards = [len(c) / 40 for c in completions]
        return rewards, {"length": rewards}

    history = grpo_seq2seq.train(engine, tokenizer, rows, reward_fn=reward_fn, cfg=rc, max_new_tokens=8,
                                 ref_model=ref, seed=0, rank=rank, world_size=world)
    if rank == 0:
        torch.save({"history": history, "weights": {k: v.detach().clone() for k, v in
                                                    engine.module.state_dict().items()}}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
