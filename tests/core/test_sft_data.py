"""Distillation pairs: reading kept rationales, prompts, labels, the validation split, the collator."""

import pandas as pd
import pytest

from lmcot.config import DatasetSpec
from lmcot.datasets.data import load_split
from lmcot.prompting.fitting import PromptTooLong
from lmcot.models.loading import load_tokenizer, resolve_model_path
from lmcot.prompting.prompts import small_rationale_prompt
from lmcot.training.sft_data import (IGNORE_INDEX, CompletionCollator, NoRationalesError, SFTPair, build_pairs,
                            check_tokenizer_vocab, encode_pairs, format_prompt, pairs_fingerprint, read_kept_rows,
                            rebuild_contexts, rows_needing_context, split_pairs)


@pytest.fixture(scope="module")
def t5_tok():
    return load_tokenizer(resolve_model_path("tiny:t5-small"), "seq2seq")


@pytest.fixture(scope="module")
def causal_tok():
    return load_tokenizer(resolve_model_path("tiny:causal-small"), "causal")


def row(i, kept=True, rationale=None, context="Ann: Ann lives in Paris.", **extra):
    return {"dataset": "hotpotqa", "id": f"q{i}", "sample": 0, "question": f"Where does person {i} live?",
            "context": context, "rationale": rationale if rationale is not None else f"Person {i} lives in Paris.",
            "kept": kept, "teacher_answer": "Paris", "gold_answer": "Paris", "em": 1.0, "f1": 1.0, **extra}


def write_shard(root, rows, name="part-000000.parquet"):
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / name)


def test_reads_only_kept_rows_with_text_across_shards(tmp_path):
    write_shard(tmp_path, [row(1), row(2, kept=False), row(3, rationale="  ")])
    write_shard(tmp_path, [row(4)], name="part-000001.parquet")
    (tmp_path / ".part-000002.parquet.tmp").write_text("half-written")
    rows = read_kept_rows(tmp_path)
    assert [r["id"] for r in rows] == ["q1", "q4"]


def test_no_shards_says_to_generate_rationales(tmp_path):
    with pytest.raises(NoRationalesError, match="generate-rationales"):
        read_kept_rows(tmp_path / "rationales")


def test_nothing_kept_says_to_loosen_the_filter(tmp_path):
    write_shard(tmp_path, [row(1, kept=False), row(2, kept=False)])
    with pytest.raises(NoRationalesError, match=r"2 rationales but none is kept.*rationales\.filter"):
        read_kept_rows(tmp_path)


def test_a_foreign_parquet_file_is_refused(tmp_path):
    write_shard(tmp_path, [{"id": "x", "text": "y"}])
    with pytest.raises(NoRationalesError, match="not a rationale shard"):
        read_kept_rows(tmp_path)


def test_pairs_use_the_small_lm_prompt_and_the_context_column():
    pairs = build_pairs([row(1, rationale=" Person 1 lives in Paris. ")])
    assert pairs[0].prompt == small_rationale_prompt("Where does person 1 live?", "Ann: Ann lives in Paris.")
    assert pairs[0].target == "Person 1 lives in Paris."
    assert build_pairs([row(i) for i in range(5)], limit=3)[-1].id == "q2"


def test_missing_contexts_are_rebuilt_from_the_dataset():
    spec = DatasetSpec(name="hotpotqa", train_path="sample:hotpotqa_synthetic_train")
    ex = load_split(spec, "train")[0]
    rows = [{"dataset": "hotpotqa", "id": ex.id, "question": ex.question, "rationale": "r", "kept": True},
            {"id": ex.id, "question": ex.question, "rationale": "r2", "kept": True}]  # no dataset column value
    assert len(rows_needing_context(rows)) == 2
    contexts = rebuild_contexts(rows, {("hotpotqa", ex.id): ex}, mode="gold")
    pairs = build_pairs(rows, contexts)
    assert ex.gold_titles[0] in pairs[0].prompt and pairs[0].prompt == pairs[1].prompt
    with pytest.raises(ValueError, match="no example in the training splits"):
        rebuild_contexts([{"dataset": "2wiki", "id": "nope", "question": "q"}], {("hotpotqa", ex.id): ex}, mode="all")


def test_split_keeps_samples_of_a_question_together_and_is_deterministic():
    pairs = [SFTPair("h", f"q{i}", s, f"p{i}", f"t{i}{s}") for i in range(20) for s in range(3)]
    train, val = split_pairs(pairs, 0.1, seed=1)
    assert len({p.id for p in val}) == 2 and len(val) == 6
    assert not {p.id for p in val} & {p.id for p in train}
    assert split_pairs(pairs, 0.1, seed=1) == (train, val)
    assert split_pairs(pairs, 0.1, seed=2)[1] != val
    assert split_pairs(pairs, 0.0)[1] == []
    one = [SFTPair("h", "q", 0, "p", "t")]
    assert split_pairs(one, 0.5) == (one, []), "training never loses its only question"


def test_seq2seq_labels_are_the_rationale_with_eos(t5_tok):
    pair = SFTPair("h", "q", 0, small_rationale_prompt("Who?", "A: B."), "Ann is the answer.")
    enc = encode_pairs(t5_tok, [pair], family="seq2seq", max_source_tokens=512, max_target_tokens=64)
    item = enc[0]
    assert item["input_ids"] == t5_tok(pair.prompt)["input_ids"]
    assert item["labels"][-1] == t5_tok.eos_token_id
    assert t5_tok.decode(item["labels"], skip_special_tokens=True) == pair.target
    assert enc.truncated_sources == enc.truncated_targets == 0


def test_causal_labels_mask_the_prompt_completion_only(causal_tok):
    pair = SFTPair("h", "q", 0, small_rationale_prompt("Who?", "A: B."), "Ann is the answer.")
    item = encode_pairs(causal_tok, [pair], family="causal", max_source_tokens=512, max_target_tokens=64)[0]
    templated = format_prompt(causal_tok, pair.prompt, "causal")
    assert templated.startswith("<|im_start|>system") and templated.endswith("<|im_start|>assistant\n")
    n_prompt = len(causal_tok(templated)["input_ids"])
    assert item["input_ids"][:n_prompt] == causal_tok(templated)["input_ids"]
    assert item["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    completion = item["labels"][n_prompt:]
    assert completion == item["input_ids"][n_prompt:] and completion[-1] == causal_tok.eos_token_id
    # the generator decodes and strips: the learned completion reads back as the rationale
    assert causal_tok.decode(completion, skip_special_tokens=True).strip() == pair.target


def test_long_prompts_lose_only_context_and_are_counted(t5_tok, causal_tok):
    prompt = small_rationale_prompt("Who won?", "Filler: " + "filler words " * 200)
    for tok, family in ((t5_tok, "seq2seq"), (causal_tok, "causal")):
        enc = encode_pairs(tok, [SFTPair("h", "q", 0, prompt, "word " * 50)], family=family,
                           max_source_tokens=96, max_target_tokens=8)
        text = tok.decode(enc.source_ids(0), skip_special_tokens=True)
        assert len(enc.source_ids(0)) <= 96
        assert text.startswith(("Write the reasoning", "system")) and "Question: Who won?\nRationale:" in text
        assert "Filler: filler" in text, "the context is shortened, not dropped"
        assert len(enc.target_ids(0)) == 8
        assert (enc.truncated_sources, enc.truncated_targets) == (1, 1)


def test_a_limit_below_the_template_fails_naming_the_field(t5_tok):
    pair = SFTPair("h", "q", 0, small_rationale_prompt("Who won?", "A: b."), "b")
    with pytest.raises(PromptTooLong, match="distill.max_source_tokens"):
        encode_pairs(t5_tok, [pair], family="seq2seq", max_source_tokens=16, max_target_tokens=8)


def test_chat_template_wraps_causal_prompts_like_the_generator(causal_tok):
    tok = causal_tok.__class__.from_pretrained(resolve_model_path("tiny:causal-small"))
    tok.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<bot>"
    assert format_prompt(tok, "hi", "causal") == "<user>hi</user><bot>"
    assert format_prompt(tok, "hi", "causal", chat_template=False) == "hi"
    assert format_prompt(tok, "hi", "seq2seq") == "hi"
    enc = encode_pairs(tok, [SFTPair("h", "q", 0, "hi", "there")], family="causal", max_source_tokens=64,
                       max_target_tokens=8)
    assert tok.decode(enc.source_ids(0)) == "<user>hi</user><bot>"
    assert tok.decode(enc.target_ids(0), skip_special_tokens=True) == "there", "no space after the template"


def test_tokenized_pairs_select_and_pickle(t5_tok):
    import pickle

    pairs = [SFTPair("h", f"q{i}", 0, f"prompt {i}", f"target {i}") for i in range(4)]
    enc = encode_pairs(t5_tok, pairs, family="seq2seq", max_source_tokens=64, max_target_tokens=16)
    sub = enc.select([2, 0])
    assert len(sub) == 2 and sub[0] == enc[2] and sub[1] == enc[0]
    back = pickle.loads(pickle.dumps(enc))
    assert [back[i] for i in range(4)] == [enc[i] for i in range(4)]
    with pytest.raises(IndexError):
        enc[4]


def test_collator_pads_right_and_ignores_padding_in_the_loss():
    batch = CompletionCollator(pad_token_id=9, pad_to_multiple_of=4)(
        [{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]}, {"input_ids": [4], "labels": [4]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9], [4, 9, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100], [4, -100, -100, -100]]


def test_tokenizer_larger_than_the_vocab_is_refused(t5_tok):
    check_tokenizer_vocab(t5_tok, len(t5_tok), "m")
    with pytest.raises(ValueError, match="not this model's tokenizer.*small.name_or_path"):
        check_tokenizer_vocab(t5_tok, len(t5_tok) - 10, "m")


def test_fingerprint_follows_content():
    a = [SFTPair("h", "q", 0, "p", "t")]
    assert pairs_fingerprint(a) == pairs_fingerprint(list(a))
    assert pairs_fingerprint(a) != pairs_fingerprint([SFTPair("h", "q", 0, "p", "t2")])

