"""The Trainer arguments lmcot's training stages share: no cluster needed."""

import torch

from lmcot.config import load_config
from lmcot.models.loading import load_tokenizer, resolve_model_path
from lmcot.prompting.prompts import small_rationale_prompt
from lmcot.training.sft_data import SFTPair, encode_pairs
from lmcot.stages.train_common import hf_training_args


def test_group_by_length_batches_prompts_of_similar_length(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, Seq2SeqTrainer, Seq2SeqTrainingArguments

    cfg = load_config("tiny", ["distill.group_by_length=true"])
    path = resolve_model_path("tiny:t5-small")
    tok = load_tokenizer(path, "seq2seq")
    pairs = [SFTPair("h", str(i), 0, small_rationale_prompt("Who?", "A: " + "word " * (5 + 40 * (i % 4))), "r")
             for i in range(256)]  # 4+ mega-batches: the sampler sorts within each
    data = encode_pairs(tok, pairs, family="seq2seq", max_source_tokens=512, max_target_tokens=8)
    common = hf_training_args(cfg.distill.scaling, output_dir=str(tmp_path), per_device_batch_size=8,
                              gradient_accumulation_steps=1, learning_rate=1e-4, group_by_length=True)
    common.pop("deepspeed"), common.pop("ddp_backend")  # one process, no DeepSpeed: the sampler alone
    trainer = Seq2SeqTrainer(model=AutoModelForSeq2SeqLM.from_pretrained(path), args=Seq2SeqTrainingArguments(**common),
                             train_dataset=data)
    order = list(trainer._get_train_sampler())
    assert sorted(order) == list(range(256))

    def spread(order):  # mean (longest - shortest) prompt within a batch of 8
        batches = [order[k:k + 8] for k in range(0, len(order), 8)]
        return sum(max(len(data[i]["input_ids"]) for i in b) - min(len(data[i]["input_ids"]) for i in b)
                   for b in batches) / len(batches)

    shuffled = spread(torch.randperm(256, generator=torch.Generator().manual_seed(0)).tolist())
    assert spread(order) < shuffled / 4, (spread(order), shuffled)
    assert hf_training_args(cfg.distill.scaling, output_dir=str(tmp_path), per_device_batch_size=8,
                            gradient_accumulation_steps=1, learning_rate=1e-4)["train_sampling_strategy"] == "random"
