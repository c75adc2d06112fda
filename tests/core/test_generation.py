"""The Hugging Face generator and model loading, on the locally built tiny models."""

import json

import pytest

from lmcot.config import GenerationConfig, ModelSpec
from lmcot.models.generation import HFGenerator
from lmcot.models.loading import ModelLoadError, detect_family, load_model, resolve_model_path


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
    from lmcot.prompting.fitting import PromptTooLong
    from lmcot.prompting.prompts import answer_from_rationale_prompt

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


# -- throughput paths (issue 12): row batches under a token budget, static cache, compile ----------------

def test_row_batches_keep_a_prompts_samples_together_under_the_token_budget():
    import random

    from lmcot.models.generation import bucket_length, row_batches

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 30))]
        n, rows, budget, new = rng.randint(1, 6), rng.randint(1, 40), rng.choice([0, 500, 4000]), rng.randint(1, 50)
        padded = lambda length: bucket_length(length)  # noqa: E731
        batches = row_batches(lengths, n=n, max_rows=rows, max_tokens=budget, new_tokens=new, padded=padded)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every prompt once, whole
        for b in batches:
            longest = max(padded(lengths[i]) for i in b)
            if len(b) > 1:  # only a prompt alone may exceed a limit
                assert len(b) * n <= rows and (not budget or len(b) * n * (longest + new) <= budget)
        # as many rows as allowed: joining two neighbouring batches would break a limit
        for b, c in zip(batches, batches[1:]):
            both = b + c
            longest = max(padded(lengths[i]) for i in both)
            assert len(both) * n > rows or (budget and len(both) * n * (longest + new) > budget)


def _model_calls(gen, prompts, **kw) -> list[tuple[int, int]]:
    """(rows, padded prompt length) of each ``model.generate`` call ``gen.generate`` makes."""
    calls, real_generate = [], gen.model.generate

    def recording(**kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else kwargs["attention_mask"]
        calls.append((ids.shape[0] * kwargs["num_return_sequences"], ids.shape[1]))
        return real_generate(**kwargs)

    gen.model.generate = recording
    try:
        out = gen.generate(prompts, **kw)
    finally:
        del gen.model.generate
    assert [len(g.texts) for g in out] == [kw.get("n", 1)] * len(prompts)
    return calls


def test_generate_calls_are_counted_in_rows_under_the_budget(generator):
    cfg = GenerationConfig(batch_size=6, max_batch_tokens=6 * (64 + 5), static_cache=True, length_buckets=(64, 256))
    fast = HFGenerator(generator.spec, loaded=_loaded(generator), config=cfg)
    calls = _model_calls(fast, ["q1", "q2 is a bit longer", "q3", "word " * 70], max_new_tokens=5, n=3,
                         temperature=1.0, seed=0)
    # q1 + q3: 2 prompts x 3 samples = 6 rows of the 64-token bucket (6 x 69 tokens = the budget); q2 would
    # make 9 rows; the long prompt (256-token bucket) with q2 would break the budget, so it runs alone
    assert sorted(calls) == [(3, 64), (3, 256), (6, 64)], calls
    # 3 prompts x 3 samples: padding the batch to a power of two (4 prompts) would break the 9-row limit
    nine = HFGenerator(generator.spec, loaded=_loaded(generator),
                       config=GenerationConfig(batch_size=9, static_cache=True, length_buckets=(64, 256)))
    assert _model_calls(nine, ["q1", "q2", "q3"], max_new_tokens=5, n=3, temperature=1.0, seed=0) == [(9, 64)]
    # ... while 3 prompts alone are padded to 4, so a later batch of 4 reuses the same shape
    assert _model_calls(nine, ["q1", "q2", "q3"], max_new_tokens=5) == [(4, 64)]


def _loaded(generator):
    from lmcot.models.loading import LoadedModel

    return LoadedModel(model=generator.model, tokenizer=generator.tokenizer, family=generator.family, path="",
                       device=generator.device)


PROMPTS = ["short", "a much longer prompt with many more words in it than the others", "mid size prompt", "x",
           "Is the sky blue? Answer:"]


def test_static_cache_with_buckets_gives_the_eager_greedy_text(generator):
    fast = HFGenerator(generator.spec, batch_size=3, loaded=_loaded(generator),
                       config=GenerationConfig(static_cache=True, bucket_step=16))
    eager, static = generator.generate(PROMPTS, max_new_tokens=8), fast.generate(PROMPTS, max_new_tokens=8)
    assert [g.texts for g in static] == [g.texts for g in eager]
    assert [(g.prompt_tokens, g.completion_tokens) for g in static] == [(g.prompt_tokens, g.completion_tokens)
                                                                       for g in eager]


def test_bucketed_yes_no_scores_equal_eager(generator):
    fast = HFGenerator(generator.spec, batch_size=4, loaded=_loaded(generator),
                       config=GenerationConfig(static_cache=True, length_buckets=(16, 48)))
    eager, bucketed = generator.score_yes_no(PROMPTS), fast.score_yes_no(PROMPTS)
    assert max(abs(a - b) for a, b in zip(eager, bucketed)) < 1e-3


@pytest.mark.gpu
def test_compiled_decoding_and_judging_equal_eager(generator):
    """The compiled path is for GPUs (CUDA graphs). On CPU, inductor builds C++ for about 5 min per
    model on 2 cores, too long for the suite; the static cache and buckets are checked above."""
    spec = ModelSpec(generator.spec.name_or_path, device="cuda")
    eager_gpu = HFGenerator(spec, batch_size=4)
    fast = HFGenerator(spec, batch_size=4, loaded=_loaded(eager_gpu),
                       config=GenerationConfig(static_cache=True, compile=True, bucket_step=32))
    prompts = PROMPTS[:4]
    eager = eager_gpu.generate(prompts, max_new_tokens=6)
    assert [g.texts for g in fast.generate(prompts, max_new_tokens=6)] == [g.texts for g in eager]
    assert [g.texts for g in fast.generate(prompts, max_new_tokens=6)] == [g.texts for g in eager]  # reused graphs
    diffs = [abs(a - b) for a, b in zip(eager_gpu.score_yes_no(prompts), fast.score_yes_no(prompts))]
    assert max(diffs) < 1e-3


def test_generation_config_checks_the_throughput_fields():
    assert GenerationConfig(static_cache=True, compile=True, length_buckets=(256, 512)).compile
    for bad, match in ((dict(compile=True), "static_cache"), (dict(max_batch_tokens=-1), "max_batch_tokens"),
                       (dict(length_buckets=(512, 256)), "ascending"), (dict(attn_implementation="flash"), "sdpa"),
                       (dict(bucket_step=0), "bucket_step")):
        with pytest.raises(ValueError, match=match):
            GenerationConfig(**bad)


def test_attention_implementation_is_chosen_by_config():
    gen = HFGenerator(ModelSpec("tiny:t5-small"), config=GenerationConfig(attn_implementation="eager"))
    assert gen.model.config._attn_implementation == "eager"


def test_gpu_suite_smoke_runs_lmcots_generator_paths_on_cpu(capsys, load_script):
    """bench/gpu_suite.py --smoke: the GPU script's generation and judging code at tiny sizes, no Ray."""
    suite = load_script("bench/gpu_suite.py")  # training and refinement: tests/test_gpu_suite.py
    rows = [row for name in ("gen_xxl", "gen_large_k5", "judge_xxl") for row in suite.run_bench(name, smoke=True)]
    assert not [r for r in rows if "error" in r], rows
    assert {(r["bench"], r["mode"]) for r in rows} == {(b, m) for b in ("gen_xxl", "gen_large_k5", "judge_xxl")
                                                      for m in ("eager", "static")}
    assert all(r["new_tokens_per_s"] > 0 for r in rows if r["bench"] != "judge_xxl")
    assert all(r["max_abs_diff_p_yes"] < 1e-3 for r in rows if r["bench"] == "judge_xxl")
    assert "| judge_xxl | static |" in suite.markdown(rows)


def test_logprobs_list_ordinary_tokens_with_their_likeliest_alternatives(generator):
    samples, prompt_tokens = generator.generate_with_logprobs(["Is the sky blue? Answer:"], max_new_tokens=4, top=3)
    [s] = samples
    assert prompt_tokens == generator.fit(["Is the sky blue? Answer:"], reserve=4)[0].tokens
    assert s.tokens and len(s.tokens) == len(s.token_logprobs) == len(s.top_logprobs) <= s.completion_tokens
    specials = {generator.tokenizer.decode([i]) for i in generator.tokenizer.all_special_ids}
    for token, lp, alternatives in zip(s.tokens, s.token_logprobs, s.top_logprobs):
        assert lp <= 0 and token not in specials and not specials & set(alternatives)
        assert 1 <= len(alternatives) <= 3 and max(alternatives.values()) >= lp - 1e-5, "greedy picks the top one"
    assert "".join(s.tokens).strip() == s.text
