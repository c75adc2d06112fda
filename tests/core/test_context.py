"""Context building: dataset order, seeded shuffle, the oracle modes, token budgets with real (locally built) tokenizers."""

import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from lmcot.datasets.context import build_context  # noqa: E402
from lmcot.datasets.data import Example, Paragraph, load_json_file  # noqa: E402

EXAMPLE = Example(
    id="c1", question="Where was the director of Gray Dawn born?", answer="Ostra",
    paragraphs=(
        Paragraph("Noise One", ("Noise one is here.", "It says nothing.")),
        Paragraph("Kel Varo", ("Kel Varo was a director.", " He was born in Ostra.", "He liked boats.")),
        Paragraph("Noise Two", ("Noise two is here.",)),
        Paragraph("Gray Dawn", ("Gray Dawn is a film directed by Kel Varo.", "It is long.")),
    ),
    supporting_facts=(("Gray Dawn", 0), ("Kel Varo", 1)), type="bridge", dataset="hotpotqa", level="easy",
)


def _texts():
    dev = load_json_file("sample:hotpotqa_synthetic_dev", "hotpotqa")
    yield from (f"{p.title}: {' '.join(p.sentences)}" for ex in dev for p in ex.paragraphs)
    yield from (f"{p.title}: {' '.join(p.sentences)}" for p in EXAMPLE.paragraphs)


def build_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A word-level or a byte-level BPE tokenizer, built here from the sample texts (no hub)."""
    if kind == "wordlevel":
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]"])
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture(scope="module", params=["wordlevel", "bpe"])
def tokenizer(request):
    return build_tokenizer(request.param)


def count(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_all_mode_keeps_the_dataset_order_without_reading_gold_labels():
    unlabeled = Example("c1", EXAMPLE.question, "", EXAMPLE.paragraphs, (), "bridge", "hotpotqa")
    assert build_context(EXAMPLE) == build_context(unlabeled)
    assert [line.split(":")[0] for line in build_context(EXAMPLE).split("\n")] == [
        "Noise One", "Kel Varo", "Noise Two", "Gray Dawn"]


def test_shuffled_mode_is_a_seeded_permutation_per_question():
    unlabeled = Example("c1", EXAMPLE.question, "", EXAMPLE.paragraphs, (), "bridge", "hotpotqa")
    text = build_context(EXAMPLE, mode="shuffled")
    assert text == build_context(unlabeled, mode="shuffled"), "gold labels must not change the order"
    assert sorted(text.split("\n")) == sorted(build_context(EXAMPLE).split("\n"))
    orders = {build_context(Example(f"q{i}", "", "", EXAMPLE.paragraphs, (), "bridge", "hotpotqa"),
                            mode="shuffled") for i in range(20)}
    assert len(orders) > 1, "different questions get different orders"


def test_gold_first_mode_puts_gold_first_in_gold_order():
    lines = build_context(EXAMPLE, mode="gold_first").split("\n")
    assert [line.split(":")[0] for line in lines] == ["Gray Dawn", "Kel Varo", "Noise One", "Noise Two"]
    assert lines[1] == "Kel Varo: Kel Varo was a director. He was born in Ostra. He liked boats."


def test_ranked_mode_reads_the_question_and_follows_title_links_without_gold_labels():
    unlabeled = Example("c1", EXAMPLE.question, "", EXAMPLE.paragraphs, (), "bridge", "hotpotqa")
    titles = [line.split(":")[0] for line in build_context(unlabeled, mode="ranked").split("\n")]
    # the film the question names, then the director its text names (the second hop), then the rest
    assert titles == ["Gray Dawn", "Kel Varo", "Noise One", "Noise Two"]
    assert build_context(EXAMPLE, mode="ranked") == build_context(unlabeled, mode="ranked")


@pytest.mark.parametrize("name,fmt", [("hotpotqa_synthetic_dev", "hotpotqa"), ("2wiki_synthetic_dev", "2wiki")])
def test_ranked_mode_keeps_the_evidence_under_a_budget_that_cuts_dataset_order(tokenizer, name, fmt):
    """At a budget of about half the paragraphs, the dataset order loses some gold paragraph in most
    questions; the ranker keeps them (the tiny preset relies on this)."""
    dev = load_json_file(f"sample:{name}", fmt)

    def kept(mode):
        return sum(all(f"{t}:" in build_context(ex, mode=mode, tokenizer=tokenizer,
                                                max_tokens=count(tokenizer, build_context(ex)) // 2)
                       for t in ex.gold_titles) for ex in dev)

    assert kept("ranked") >= 0.9 * len(dev) > kept("all")


_RANK_SHIPPED = """
import json
from lmcot.datasets.context import rank_paragraphs
from lmcot.datasets.data import load_json_file
print(json.dumps([[p.title for p in rank_paragraphs(ex.question, ex.paragraphs)]
                  for path, fmt in (("hotpotqa_synthetic_dev", "hotpotqa"), ("2wiki_synthetic_dev", "2wiki"),
                                    ("tiny_world/hotpotqa_train", "hotpotqa"), ("tiny_world/2wiki_train", "2wiki"))
                  for ex in load_json_file("sample:" + path, fmt)]))
"""


def test_ranked_mode_is_the_same_in_every_process():
    """String hashing differs per process (PYTHONHASHSEED), and with it the order the question's words are
    summed in: a plain float sum broke the tie of a comparison question's two symmetric paragraphs
    differently in each process (32 shipped questions), so two runs of one config read different contexts."""
    orders = set()
    for hash_seed in ("0", "1", "2", "3"):
        done = subprocess.run([sys.executable, "-c", _RANK_SHIPPED], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONHASHSEED=hash_seed))
        assert done.returncode == 0, done.stderr
        orders.add(done.stdout)
    assert len(orders) == 1
    dev = load_json_file("sample:hotpotqa_synthetic_dev", "hotpotqa")
    tie = next(ex for ex in dev if ex.question == "Which was founded first, Wynpir Foods or Galvel Motors?")
    ranked = json.loads(orders.pop())[dev.index(tie)]
    assert ranked[:2] == ["Galvel Motors", "Wynpir Foods"], "the tie keeps the dataset order"


def test_gold_mode_keeps_only_gold():
    assert build_context(EXAMPLE, mode="gold").split("\n") == [
        "Gray Dawn: Gray Dawn is a film directed by Kel Varo. It is long.",
        "Kel Varo: Kel Varo was a director. He was born in Ostra. He liked boats.",
    ]


def test_gold_mode_without_supporting_facts_falls_back_to_all():
    bare = Example("c2", "q", "a", EXAMPLE.paragraphs, (), "bridge", "hotpotqa")
    assert build_context(bare, mode="gold") == build_context(bare, mode="all")


def test_unknown_mode_and_negative_budget():
    with pytest.raises(ValueError, match="data.context_mode.*all, shuffled, ranked, gold_first, gold"):
        build_context(EXAMPLE, mode="distractor")
    with pytest.raises(ValueError, match="context_max_tokens"):
        build_context(EXAMPLE, max_tokens=-1)


def test_no_budget_without_tokenizer_or_zero_budget(tokenizer):
    full = build_context(EXAMPLE, mode="gold_first")
    assert build_context(EXAMPLE, mode="gold_first", max_tokens=3) == full
    assert build_context(EXAMPLE, mode="gold_first", tokenizer=tokenizer, max_tokens=0) == full
    assert build_context(EXAMPLE, mode="gold_first", tokenizer=tokenizer, max_tokens=10_000) == full


def test_budget_drops_trailing_paragraphs_then_sentences(tokenizer):
    full = build_context(EXAMPLE, mode="gold_first")
    gold_two = "\n".join(full.split("\n")[:2])
    budget = count(tokenizer, gold_two)
    assert build_context(EXAMPLE, mode="gold_first", tokenizer=tokenizer, max_tokens=budget) == gold_two
    # A little more room: the next paragraph comes in partially, cut at a sentence boundary.
    partial = gold_two + "\nNoise One: Noise one is here."
    assert build_context(EXAMPLE, mode="gold_first", tokenizer=tokenizer, max_tokens=count(tokenizer, partial)) == partial


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 8, 13, 21, 34, 55])
def test_every_budget_fits_and_is_never_empty(tokenizer, budget):
    text = build_context(EXAMPLE, mode="gold_first", tokenizer=tokenizer, max_tokens=budget)
    assert text.strip() and count(tokenizer, text) <= budget
    # the first gold paragraph always leads; under a tiny budget its title itself is cut token-wise
    assert text.startswith("Gray Dawn") or "Gray Dawn".startswith(text)


def test_tight_budget_truncates_first_gold_paragraph_sentences(tokenizer):
    one_sentence = "Gray Dawn: Gray Dawn is a film directed by Kel Varo."
    text = build_context(EXAMPLE, mode="gold_first", tokenizer=tokenizer, max_tokens=count(tokenizer, one_sentence))
    assert text == one_sentence


def test_budget_on_shipped_samples(tokenizer):
    for ex in load_json_file("sample:hotpotqa_synthetic_dev", "hotpotqa")[:10]:
        text = build_context(ex, mode="gold_first", tokenizer=tokenizer, max_tokens=64)
        assert 0 < count(tokenizer, text) <= 64
        assert text.startswith(ex.gold_titles[0])


# One shortening rule (lmcot.datasets.context.shorten_lines) serves the context cap and every model's
# prompt fitter. These outputs were recorded before the two shared it: the same text, to the byte.
PINNED_CONTEXTS = {
    9: "Gray Dawn : Gray Dawn is a film directed",  # not one sentence fits: cut token-wise
    13: "Gray Dawn: Gray Dawn is a film directed by Kel Varo.",  # sentences of the first paragraph
    26: "Gray Dawn: Gray Dawn is a film directed by Kel Varo. It is long.\nKel Varo: Kel Varo was a director.",
}
PINNED_FITS = {  # (limit, tokenizer or a 4-characters-per-token estimate) -> (fitted context part, tokens)
    (24, True): ("Context:\nGray Dawn : Gray Dawn is a film directed by Kel", 24),
    (24, False): ("Context:\nGray Dawn: Gray Dawn is a film", 23),
    (33, True): ("Context:\nGray Dawn: Gray Dawn is a film directed by Kel Varo. It is long.\nKel Varo :", 33),
    (33, False): ("Context:\nGray Dawn: Gray Dawn is a film directed by Kel Varo. It is long.\nKel", 33),
    (44, True): ("Context:\nGray Dawn: Gray Dawn is a film directed by Kel Varo. It is long.\n"
                 "Kel Varo : Kel Varo was a director . He was born in Ostra", 44),
    (44, False): ("Context:\nGray Dawn: Gray Dawn is a film directed by Kel Varo. It is long.\n"
                  "Kel Varo: Kel Varo was a director. He was born in", 44),
}


def test_context_cap_and_prompt_fitter_shorten_exactly_as_pinned():
    from lmcot.prompting.fitting import PromptFitter
    from lmcot.prompting.prompts import Prompt

    tok = build_tokenizer("wordlevel")
    for budget, expected in PINNED_CONTEXTS.items():
        assert build_context(EXAMPLE, mode="gold_first", tokenizer=tok, max_tokens=budget) == expected, budget
    full = build_context(EXAMPLE, mode="gold_first")
    prompt = Prompt.build("test", "Context:\n{context}\n\nQuestion: {question}", full, question=EXAMPLE.question)
    for (limit, with_tokenizer), (expected, tokens) in PINNED_FITS.items():
        fitted = PromptFitter(model="m", limit=limit, tokenizer=tok if with_tokenizer else None).fit(prompt)
        assert fitted.context_cut and fitted.tokens == tokens, (limit, with_tokenizer)
        assert fitted.text == expected + "\n\nQuestion: " + EXAMPLE.question, (limit, with_tokenizer)
