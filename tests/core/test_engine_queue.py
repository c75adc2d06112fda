"""The work queue on the continuous engine (``generation.engine: continuous``), on the tiny T5: a short
request overtakes a long one, a caller gone frees its slot, a failing request fails alone, and greedy
outputs and log-probabilities equal the static queue's."""

import asyncio
import threading
import time

import pytest
import torch

from lmcot.config import ModelSpec
from lmcot.models.continuous import ContinuousGenerator
from lmcot.models.generation import HFGenerator
from lmcot.serving.engine_queue import EngineQueue
from lmcot.serving.model_queue import QueuedModel
from lmcot.serving.work_queue import QueueLimits, WorkQueue

PROMPTS = ["Question: Who founded Vexa?\nAnswer:", "x", "mid size prompt about a town",
           "Question: Is Norland north of the river? Answer yes or no.\nAnswer:"]
LIMITS = QueueLimits(max_rows=4, max_cost=4 * 64)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded():
    from lmcot.models.loading import load_model

    return load_model(ModelSpec("tiny:t5-small"))


@pytest.fixture
def gen(loaded):
    """A generator with an engine of its own (one queue thread owns an engine), on the module's model."""
    return ContinuousGenerator(ModelSpec("tiny:t5-small"), batch_size=2, loaded=loaded)


class Gate:
    """Holds the engine's next ``step`` until ``gate`` is set, so what is queued by then is decided by the test;
    each step then takes at least ``delay`` seconds."""

    def __init__(self, engine, delay: float = 0.0):
        self.engine, self.step, self.delay = engine, engine.step, delay
        self.gate, self.steps = threading.Event(), 0

    def __enter__(self):
        def step():
            self.gate.wait(30)
            time.sleep(self.delay)
            self.steps += 1
            return self.step()

        self.engine.step = step
        return self

    def __exit__(self, *exc):
        self.gate.set()
        del self.engine.step


def wait_for(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_a_continuous_generator_gets_the_engine_queue_and_greedy_outputs_equal_the_static_queues(gen, loaded):
    model = QueuedModel(gen, LIMITS)
    assert isinstance(model.queue, EngineQueue)
    static = QueuedModel(HFGenerator(ModelSpec("tiny:t5-small"), batch_size=2, loaded=loaded), LIMITS)
    assert type(static.queue) is WorkQueue

    async def both(m):
        return await asyncio.gather(m.generate(PROMPTS[:3], max_new_tokens=12), m.generate(PROMPTS[3:], max_new_tokens=5))

    ours, theirs = asyncio.run(both(model)), asyncio.run(both(static))
    assert [[g.texts for g in call] for call in ours] == [[g.texts for g in call] for call in theirs]
    assert model.stats()["engine_requests"] == 4 and model.stats()["jobs"] == 2
    # scores keep the static path, on the same model thread
    assert asyncio.run(model.score_yes_no(PROMPTS[:2])) == pytest.approx(asyncio.run(static.score_yes_no(PROMPTS[:2])))
    assert model.stats()["engine_requests"] == 4

    # log-probabilities run on the engine, and come back as the static queue gives them
    kw = dict(max_new_tokens=6, n=1, temperature=0.0, top_p=1.0, top=3)
    ours = asyncio.run(model.generate_with_logprobs(PROMPTS, **kw))
    theirs = asyncio.run(static.generate_with_logprobs(PROMPTS, **kw))
    assert model.stats()["engine_requests"] == 4 + len(PROMPTS)
    assert [(len(a), t) for a, t in ours] == [(len(b), t) for b, t in theirs]
    for (a, _), (b, _) in zip(ours, theirs):
        assert [(s.text, s.tokens, [list(d) for d in s.top_logprobs]) for s in a] == \
               [(s.text, s.tokens, [list(d) for d in s.top_logprobs]) for s in b]
        assert [lp for s in a for lp in s.token_logprobs] == pytest.approx([lp for s in b for lp in s.token_logprobs], abs=1e-4)


def test_seeded_samples_equal_the_generators_own(gen, loaded):
    model = QueuedModel(gen, LIMITS)
    kw = dict(max_new_tokens=8, n=2, temperature=1.0, top_p=0.9, seed=7)
    queued = asyncio.run(model.generate(PROMPTS[:2], **kw))
    alone = ContinuousGenerator(ModelSpec("tiny:t5-small"), batch_size=2, loaded=loaded)  # the queue owns gen's engine
    assert [g.texts for g in queued] == [g.texts for g in alone.generate(PROMPTS[:2], **kw)]


def test_a_short_request_submitted_while_a_long_one_runs_finishes_before_it(gen):
    model = QueuedModel(gen, LIMITS)
    order = []
    with Gate(gen.engine) as gate:
        long = model.queue.submit(("generate", 60, 1, 1.0, 1.0, 3), [PROMPTS[0]])  # sampled: it runs its 60 tokens
        long.add_done_callback(lambda f: order.append("long"))
        wait_for(lambda: gen.engine.running_rows + gen.engine.queued == 1)
        gate.gate.set()
        wait_for(lambda: gate.steps >= 3)
        short = model.queue.submit(("generate", 3, 1, 0.0, 1.0, None), [PROMPTS[1]])
        short.add_done_callback(lambda f: order.append("short"))
        assert len(short.result(30)[0].texts) == 1 and long.result(60)[0].completion_tokens > 3
    assert order == ["short", "long"]


def test_a_cancelled_request_frees_its_slot_at_the_next_step(gen):
    model = QueuedModel(gen, LIMITS)  # the engine has 3 slots (batch size 2 and the reserve)
    with Gate(gen.engine) as gate:
        first = model.queue.submit(("generate", 200, 3, 1.0, 1.0, 1), [PROMPTS[0]])  # every slot, 200 tokens
        wait_for(lambda: gen.engine.queued == 1)
        gate.gate.set()
        wait_for(lambda: gen.engine.running_rows == 3)
        waiting = model.queue.submit(("generate", 4, 1, 0.0, 1.0, None), [PROMPTS[1]])
        time.sleep(0.2)
        assert not waiting.done() and gen.engine.queued == 0  # no slot yet: held by the queue
        steps = gate.steps
        first.cancel()
        assert waiting.result(30)[0].texts
        assert gate.steps - steps < 20  # freed at once, not after the cancelled request's 200 tokens
    stats = model.stats()
    assert stats["dropped_items"] == 1 and stats["jobs"] == 1


def test_a_failing_request_does_not_fail_its_neighbour(gen, monkeypatch, caplog):
    model = QueuedModel(gen, LIMITS)
    prefill = gen.engine._prefill

    def failing(group):
        if any("bad" in h.request.prompt for h in group):
            raise RuntimeError("probability tensor contains inf or nan")
        return prefill(group)

    monkeypatch.setattr(gen.engine, "_prefill", failing)

    async def three():
        return await asyncio.gather(model.generate([PROMPTS[0], PROMPTS[1]], max_new_tokens=6),
                                    model.generate(["bad prompt", PROMPTS[2]], max_new_tokens=6, tag="req-9"),
                                    model.generate([PROMPTS[3]], max_new_tokens=6), return_exceptions=True)

    good, bad, also_good = asyncio.run(three())
    assert isinstance(bad, RuntimeError) and "inf or nan" in str(bad)
    assert [g.texts for g in good] == [g.texts for g in gen.static.generate(PROMPTS[:2], max_new_tokens=6)]
    assert [g.texts for g in also_good] == [g.texts for g in gen.static.generate(PROMPTS[3:], max_new_tokens=6)]
    assert model.stats()["failed_jobs"] == 1
    assert any("request req-9 failed in the model" in r.getMessage() for r in caplog.records)
    # the engine keeps serving after the failure
    assert asyncio.run(model.generate([PROMPTS[1]], max_new_tokens=3))[0].texts


def test_long_requests_leave_a_slot_free_so_a_short_one_starts_at_once(gen):
    model = QueuedModel(gen, LIMITS)  # batch size 2: long requests (over 64 new tokens) take 2 rows, 1 more is kept
    assert model.queue.reserve_slots == 1 and gen.engine.max_slots == 3
    with Gate(gen.engine) as gate:
        long = model.queue.submit(("generate", 150, 1, 1.0, 1.0, 5), PROMPTS[:3])
        wait_for(lambda: gen.engine.queued == 1)
        gate.gate.set()
        wait_for(lambda: gate.steps >= 3)
        assert gen.engine.running_rows == 2 and gen.engine.queued == 0  # as many as a static batch; the third waits
        steps = gate.steps
        short = model.queue.submit(("generate", 4, 1, 0.0, 1.0, None), [PROMPTS[1]])
        assert short.result(30)[0].texts and not long.done()
        assert gate.steps - steps <= 6  # it joined at the next step, beside the long row
        assert len(long.result(120)) == 3


def test_a_short_request_passes_a_long_one_waiting_for_room(gen):
    """A second long request (fewer rows running, so the queue's first pick) that does not fit waits, and
    holds the line for long ones only: a short request behind it takes the reserved slot at once."""
    model = QueuedModel(gen, LIMITS)
    with Gate(gen.engine) as gate:
        first = model.queue.submit(("generate", 150, 2, 1.0, 1.0, 5), [PROMPTS[0]])  # the 2 long slots
        wait_for(lambda: gen.engine.queued == 1)
        gate.gate.set()
        wait_for(lambda: gen.engine.running_rows == 2)
        second = model.queue.submit(("generate", 150, 1, 1.0, 1.0, 6), [PROMPTS[2]])  # no room: waits
        time.sleep(0.2)
        assert gen.engine.running_rows == 2 and not second.done()
        steps = gate.steps
        short = model.queue.submit(("generate", 4, 1, 0.0, 1.0, None), [PROMPTS[1]])
        assert short.result(30)[0].texts and not first.done() and not second.done()
        assert gate.steps - steps <= 6  # it joined at the next step, in the reserved slot
        assert len(second.result(120)) == 1 and len(first.result(120)) == 1


def test_a_request_past_its_timeout_fails_alone_and_frees_its_rows(gen):
    model = QueuedModel(gen, LIMITS)
    with Gate(gen.engine, delay=0.01) as gate:  # 200 steps: 2 s at least
        slow = model.queue.submit(("generate", 200, 1, 1.0, 1.0, 2), [PROMPTS[0]], timeout_s=0.5, tag="req-3")
        other = model.queue.submit(("generate", 5, 1, 0.0, 1.0, None), [PROMPTS[1]])
        gate.gate.set()
        with pytest.raises(TimeoutError, match="0 of 1 prompts done"):
            slow.result(30)
        assert other.result(30)[0].texts
        wait_for(lambda: gen.engine.idle)  # the timed-out row left at the next step
    assert model.stats()["expired_jobs"] == 1
