"""The Hugging Face generator and model loading, on the locally built tiny models."""

import json

import pytest

from lmcot.config import ModelSpec
from lmcot.generation import HFGenerator
from lmcot.models import ModelLoadError, detect_family, load_model, resolve_model_path


@pytest.fixture(scope="module", params=["tiny:t5-small", "tiny:causal-small"])
def generator(request):
    return HFGenerator(ModelSpec(request.param), batch_size=3)


def test_tiny_models_load_through_the_hub_code_path():
    for name, family in (("tiny:t5-small", "seq2seq"), ("tiny:causal-small", "causal")):
        path = resolve_model_path(name)
        assert (json.loads((__import__("pathlib").Path(path) / "config.json").read_text()))
        assert detect_family(path) == family
        lm = load_model(ModelSpec(name))
        assert lm.family == family and not lm.model.training


def test_generates_text_in_prompt_order_with_token_counts(generator):
    prompts = ["short", "a much longer prompt with many more words in it than the others", "mid size prompt", "x"]
    out = generator.generate(prompts, max_new_tokens=6)
    assert len(out) == 4
    for p, g in zip(prompts, out):
        assert len(g.texts) == 1 and g.texts[0], "a tiny model must still yield text (pad is suppressed)"
        assert g.prompt_tokens == len(generator.tokenizer(generator.fitter.format(p))["input_ids"])
        assert 1 <= g.completion_tokens <= 6
    # batching by length must not reorder results: a prompt alone gives the same greedy output
    alone = generator.generate([prompts[1]], max_new_tokens=6)[0]
    assert alone.texts == out[1].texts


def test_samples_k_per_prompt_reproducibly(generator):
    a = generator.generate(["q1", "q2"], max_new_tokens=5, n=4, temperature=1.0, seed=7)
    b = generator.generate(["q1", "q2"], max_new_tokens=5, n=4, temperature=1.0, seed=7)
    assert [g.texts for g in a] == [g.texts for g in b]
    assert all(len(g.texts) == 4 for g in a)
    with pytest.raises(ValueError, match="temperature"):
        generator.generate(["q"], max_new_tokens=3, n=2)


def test_yes_no_scores_are_probabilities_from_logits(generator):
    scores = generator.score_yes_no(["Is the sky blue? Answer:", "Is water dry? Answer:", "x"])
    assert len(scores) == 3 and all(0.0 < s < 1.0 for s in scores)
    assert scores == generator.score_yes_no(["Is the sky blue? Answer:", "Is water dry? Answer:", "x"])


def test_yes_and_no_token_ids_spell_yes_and_no(generator):
    spell = lambda ids: {generator.tokenizer.decode([i]).strip().lower() for i in ids}  # noqa: E731
    assert spell(generator._yes_ids) == {"yes"} and spell(generator._no_ids) == {"no"}


def test_over_long_prompts_reach_the_model_fitted_with_their_question(generator):
    from lmcot.fitting import PromptTooLong
    from lmcot.prompts import answer_from_rationale_prompt

    limit = 512 if generator.family == "seq2seq" else 32768  # FLAN-T5's and Qwen2.5's declared limits
    assert generator.fitter.limit == limit
    generator.fitter.limit = 200  # as a spec's max_input_tokens would set it
    try:
        context = "\n".join(f"Para {i}: " + "word " * 40 for i in range(30))
        prompt = answer_from_rationale_prompt("Who founded Vexa?", context, "Vexa was founded by Ilo.")
        [g] = generator.generate([prompt], max_new_tokens=4)
        assert g.prompt_tokens <= 200 - (4 if generator.family == "causal" else 0)
        [fitted] = generator.fit([prompt], reserve=4)
        assert fitted.tokens == g.prompt_tokens and fitted.context_cut
        assert "Para 0: word" in fitted.text and "Rationale: Vexa was founded by Ilo.\nAnswer:" in fitted.text
        with pytest.raises(PromptTooLong, match="max_input_tokens"):
            generator.generate(["word " * 300], max_new_tokens=4)  # a plain string is never cut
    finally:
        generator.fitter.limit = limit


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(ModelSpec(str(tmp_path / "missing-model")))


def test_unsupported_family_is_named(tmp_path):
    from transformers import DistilBertConfig

    DistilBertConfig(vocab_size=10, dim=8, n_layers=1, n_heads=1, hidden_dim=8).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="neither a seq2seq LM"):
        load_model(ModelSpec(str(tmp_path)))


def test_declared_family_mismatch_is_named():
    with pytest.raises(ModelLoadError, match="family: causal"):
        load_model(ModelSpec("tiny:t5-small", family="causal"))


def test_unknown_tiny_model_lists_the_valid_ones():
    with pytest.raises(ValueError, match="tiny:t5-small"):
        resolve_model_path("tiny:gpt-huge")
