"""The continuous-batching engine on the tiny models and the shipped tiny-world T5: the same tokens as
``model.generate`` with rows joining and leaving at every step, seeded sampling, slots, cancellation,
failures confined to their own request, and the ``generation.engine`` switch."""

import pytest
import torch

from lmcot.config import GenerationConfig, ModelSpec
from lmcot.models.continuous import Cancelled, ContinuousEngine, ContinuousGenerator, Request
from lmcot.models.continuous_batch import ROWS, RowSampler, UnsupportedModel
from lmcot.prompting.fitting import PromptTooLong

PROMPTS = [
    "Question: Who founded Vexa?\nAnswer:",
    "x",
    "Context: Ilo founded Vexa in 1901. Vexa is a town in Norland, which lies north of the river.\n"
    "Question: In which country is the town that Ilo founded?\nAnswer:",
    "mid size prompt about a town",
    "Question: Is Norland north of the river? Answer yes or no.\nAnswer:",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from more threads, and lose a lot on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["tiny:t5-small", "tiny:causal-small", "tiny:world-large", "tiny:world-small"])
def generator(request):
    return ContinuousGenerator(ModelSpec(request.param), batch_size=3)


def engine_of(gen, **limits) -> ContinuousEngine:
    return ContinuousEngine(gen.model, gen.tokenizer, gen.family, gen.device, gen.fitter,
                            **{"max_slots": 3, **limits})


def reference(gen, prompt: str, max_new_tokens: int) -> list[int]:
    """``model.generate``'s greedy new tokens for ``prompt`` alone (fitted and formatted as the engine does)."""
    [fitted] = gen.fit([prompt], reserve=max_new_tokens)
    enc = gen.tokenizer([fitted.text], return_tensors="pt")
    out = gen.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=gen.tokenizer.pad_token_id,
                             do_sample=False)[0]
    return out[enc["input_ids"].shape[1]:].tolist() if gen.family == "causal" else out[1:].tolist()


def test_greedy_tokens_equal_generate_as_rows_join_mid_decode_and_leave_early(generator):
    engine = engine_of(generator)
    lengths = [14, 3, 9, 6, 11]  # rows leave early, at different steps
    handles = [engine.submit(Request(PROMPTS[0], lengths[0])), engine.submit(Request(PROMPTS[1], lengths[1]))]
    for _ in range(2):
        engine.step()
    handles += [engine.submit(Request(p, m)) for p, m in zip(PROMPTS[2:], lengths[2:])]  # join mid-decode
    seen_batches = set()
    while not all(h.done for h in handles):
        engine.step()
        assert engine.running_rows <= 3
        seen_batches.add(tuple(sorted(id(r.handle) for r in engine._running.rows)) if engine._running else ())
    assert len(seen_batches) > 3, "the batch's make-up must change while it decodes"
    for handle, prompt, m in zip(handles, PROMPTS, lengths):
        assert handle.state == "done"
        assert handle.samples[0] == reference(generator, prompt, m), prompt
    # the Protocol path gives the static engine's texts and token counts
    assert generator.generate(PROMPTS, max_new_tokens=10) == generator.static.generate(PROMPTS, max_new_tokens=10)


def test_cache_is_compacted_as_rows_leave(generator):
    engine = engine_of(generator, max_slots=4)
    engine.submit(Request(PROMPTS[2], 12))
    engine.step()
    engine.step()
    handles = [engine.submit(Request(p, 16)) for p in PROMPTS[:2]]
    while not all(h.done for h in handles):
        engine.step()
        batch = engine._running.batch if engine._running else None
        if batch is not None:
            assert batch.kv.time == int(batch.kv.lengths.max()), "no position is padding in every row"
            if generator.family == "seq2seq":
                assert batch.encoder_mask[:, -1].any(), "no encoder position is padding in every row"


@pytest.mark.parametrize("top_k", [50, 0, 3])
def test_sampling_distribution_equals_transformers_warpers(top_k):
    """Each row's candidates and probabilities are transformers' temperature, top-k and top-p warpers'
    distribution (its own temperature and top_p), the tokens past the top-k left out at probability 0."""
    from transformers import GenerationConfig as HFGenerationConfig
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    sampler = RowSampler(HFGenerationConfig(top_k=top_k), torch.device("cpu"))
    scores = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)) * 3
    settings = [(0.7, 0.9), (1.0, 1.0), (1.3, 0.5), (0.5, 0.05)]
    rows = [type("Row", (), {"temperature": t, "top_p": p}) for t, p in settings]
    candidates, probs = sampler.distribution(scores, rows)
    for r, (t, p) in enumerate(settings):
        warped = TemperatureLogitsWarper(t)(None, scores[r:r + 1])
        if top_k:
            warped = TopKLogitsWarper(top_k)(None, warped)
        expected = torch.softmax(TopPLogitsWarper(p)(None, warped), dim=-1)[0]
        ours = torch.zeros(300).index_add(0, candidates[r], probs[r])
        assert torch.allclose(ours, expected, atol=1e-6), (t, p)
        assert (expected > 0).sum() <= (top_k or 300)


def test_sampling_is_reproducible_and_a_rows_own(generator):
    settings = dict(temperature=0.9, top_p=0.8)
    a = generator.generate(PROMPTS, max_new_tokens=8, n=3, seed=5, **settings)
    assert a == generator.generate(PROMPTS, max_new_tokens=8, n=3, seed=5, **settings)
    wide = ContinuousGenerator(generator.spec, batch_size=16, loaded=_loaded(generator))
    assert a == wide.generate(PROMPTS, max_new_tokens=8, n=3, seed=5, **settings), "rows' draws are their own"
    assert a != generator.generate(PROMPTS, max_new_tokens=8, n=3, seed=6, **settings)
    assert all(len(g.texts) == 3 for g in a)


def _loaded(gen):
    from lmcot.models.loading import LoadedModel

    return LoadedModel(gen.model, gen.tokenizer, gen.family, "", gen.device)


def test_cancel_frees_the_slot_at_the_next_step(generator):
    engine = engine_of(generator, max_slots=2)
    a, b, c, d = (engine.submit(Request(p, 20)) for p in PROMPTS[:4])
    engine.step()
    assert (a.state, b.state, c.state, engine.running_rows) == ("running", "running", "queued", 2)
    engine.cancel(d)  # queued: leaves at once
    engine.cancel(a)
    assert a.state == "cancelling" and d.state == "cancelled"
    ended = engine.step()
    assert a in ended and d in ended and a.state == "cancelled"
    assert c.state == "running" and engine.running_rows == 2, "the freed slot went to the next request"
    with pytest.raises(Cancelled):
        a.result()
    engine.run([b, c])
    assert b.samples[0] == reference(generator, PROMPTS[1], 20)


def test_max_slots_and_token_budget_are_respected(generator):
    engine = engine_of(generator, max_slots=4, max_tokens=0)
    requests = [Request(p, 4 + i, n=n, temperature=0.7 if n > 1 else 0.0, seed=i)
                for i, (p, n) in enumerate(zip(PROMPTS * 2, [1, 2, 3, 1, 2, 1, 1, 3, 2, 1]))]
    handles = [engine.submit(r) for r in requests]
    peak = 0
    while not engine.idle:
        engine.step()
        peak = max(peak, engine.running_rows)
        assert engine.running_rows <= 4
    assert peak >= 3 and all(h.state == "done" and len(h.result().texts) == h.request.n for h in handles)

    big = engine_of(generator, max_slots=2)
    alone = big.submit(Request(PROMPTS[0], 5, n=3, temperature=0.7))  # more samples than slots: runs alone
    after = big.submit(Request(PROMPTS[1], 5))
    big.step()
    assert big.running_rows == 3 and after.state == "queued"
    big.run([alone, after])

    tokens = [len(generator.tokenizer(f.text)["input_ids"]) for f in generator.fit(PROMPTS[:3], reserve=6)]
    budget = engine_of(generator, max_slots=8, max_tokens=tokens[0] + tokens[1] + 12)
    handles = [budget.submit(Request(p, 6)) for p in PROMPTS[:3]]
    budget.step()
    assert [h.state for h in handles] == ["running", "running", "queued"]
    budget.run(handles)


def test_a_failing_request_fails_alone(generator, monkeypatch):
    engine = engine_of(generator)
    monkeypatch.setattr(generator.fitter, "limit", 200)  # as a spec's max_input_tokens would set it
    too_long = engine.submit(Request("word " * 300, 5))
    invalid = engine.submit(Request(PROMPTS[0], 5, n=2))  # samples need a temperature
    assert too_long.state == invalid.state == "failed"
    assert isinstance(too_long.error, PromptTooLong) and "temperature" in str(invalid.error)
    with pytest.raises(PromptTooLong):
        too_long.result()

    rows_class = ROWS[generator.family]
    original = rows_class.prefill.__func__
    poison = engine.submit(Request("poison " + PROMPTS[1], 6))
    poison_ids = poison.prompt_ids

    def prefill(cls, model, prompts, repeats, **kw):
        if poison_ids in prompts:
            raise RuntimeError("bad row")
        return original(cls, model, prompts, repeats, **kw)

    good = [engine.submit(Request(p, 6)) for p in PROMPTS[:2]]
    monkeypatch.setattr(rows_class, "prefill", classmethod(prefill))
    ended = engine.step()
    assert too_long in ended and invalid in ended and poison in ended
    assert poison.state == "failed" and str(poison.error) == "bad row"
    engine.run(good)
    assert [h.samples[0] for h in good] == [reference(generator, p, 6) for p in PROMPTS[:2]]

    # a decode step that raises fails the rows in it; the engine goes on with the queue
    engine = engine_of(generator, max_slots=1)
    first, second = engine.submit(Request(PROMPTS[0], 6)), engine.submit(Request(PROMPTS[1], 6))
    engine.step()
    monkeypatch.setattr(type(engine._running.batch), "decode", lambda self, tokens: 1 / 0)
    engine.step()
    assert first.state == "failed" and isinstance(first.error, ZeroDivisionError)
    monkeypatch.undo()
    engine.run([second])
    assert second.samples[0] == reference(generator, PROMPTS[1], 6)


def test_repetition_penalty_matches_generate():
    gen = ContinuousGenerator(ModelSpec("tiny:causal-small"), batch_size=2)
    gen.model.generation_config.repetition_penalty = 1.5
    try:
        engine = engine_of(gen, max_slots=2)
        handles = [engine.submit(Request(p, 10)) for p in PROMPTS[:3]]
        engine.run(handles)
        assert [h.samples[0] for h in handles] == [reference(gen, p, 10) for p in PROMPTS[:3]]
    finally:
        gen.model.generation_config.repetition_penalty = None


def test_settings_the_engine_does_not_apply_are_named():
    from transformers import GenerationConfig as HFGenerationConfig

    with pytest.raises(UnsupportedModel, match="no_repeat_ngram_size.*engine: static"):
        RowSampler(HFGenerationConfig(no_repeat_ngram_size=3), torch.device("cpu"))
    sampler = RowSampler(HFGenerationConfig(eos_token_id=[1, 2], top_k=20), torch.device("cpu"))
    assert sampler.eos == {1, 2} and sampler.top_k == 20


def test_scoring_runs_on_the_static_path():
    gen = ContinuousGenerator(ModelSpec("tiny:t5-small"), batch_size=2)
    assert gen.score_yes_no(PROMPTS[:2]) == gen.static.score_yes_no(PROMPTS[:2])


def test_greedy_logprobs_from_the_engine_equal_the_static_paths(generator):
    """Decoded by the engine, rows joining and leaving: the same tokens, log-probabilities (to float
    noise), alternatives, end flags and prompt tokens as ``generate(output_logits=True)`` reports."""
    ours, our_tokens = generator.generate_with_logprobs(PROMPTS, max_new_tokens=7, top=3)
    theirs, their_tokens = generator.static.generate_with_logprobs(PROMPTS, max_new_tokens=7, top=3)
    assert our_tokens == their_tokens
    for a, b in zip(ours, theirs):
        assert (a.text, a.tokens, a.completion_tokens, a.ended) == (b.text, b.tokens, b.completion_tokens, b.ended)
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
        assert [list(d) for d in a.top_logprobs] == [list(d) for d in b.top_logprobs]
        assert all(len(d) <= 3 for d in a.top_logprobs) and any(a.top_logprobs)
        for d, lp in zip(a.top_logprobs, a.token_logprobs):
            assert max(d.values()) >= lp - 1e-5  # a greedy token is the likeliest (or ties with one)


def test_sampled_logprobs_are_reproducible_and_report_the_sampled_tokens(generator):
    kw = dict(max_new_tokens=6, n=2, temperature=1.0, top_p=0.9, seed=11)
    first, _ = generator.generate_with_logprobs(PROMPTS[:2], top=2, **kw)
    again, _ = generator.generate_with_logprobs(PROMPTS[:2], top=0, **kw)
    texts = [t for g in generator.generate(PROMPTS[:2], **kw) for t in g.texts]
    assert [s.text for s in first] == [s.text for s in again] == texts  # the same draws as plain generation
    assert [s.token_logprobs for s in first] == [s.token_logprobs for s in again]
    assert all(d == {} for s in again for d in s.top_logprobs) and all(len(d) <= 2 for s in first for d in s.top_logprobs)
    assert all(lp <= 0 for s in first for lp in s.token_logprobs)
    with pytest.raises(ValueError, match="logprobs must be >= 0"):
        engine_of(generator).submit(Request(PROMPTS[0], 3, logprobs=-1)).result()


def test_engine_switch():
    from lmcot.models.factory import make_generator
    from lmcot.models.generation import HFGenerator

    assert GenerationConfig().engine == "static"
    with pytest.raises(ValueError, match="engine must be one of static, continuous, got 'dynamic'"):
        GenerationConfig(engine="dynamic")
    assert type(make_generator(ModelSpec("tiny:t5-small"))) is HFGenerator
    assert isinstance(make_generator(ModelSpec("tiny:t5-small"), GenerationConfig(engine="continuous")),
                      ContinuousGenerator)
