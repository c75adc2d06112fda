"""Prompt templates and answer parsing."""

import pytest

from lmcot.prompting import prompts


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Paris", "Paris"),
        (" Paris.\nQuestion: next", "Paris"),
        ("The answer is: yes", "yes"),
        ("Answer: \"The Beatles\"", "The Beatles"),
        ("**1912**", "1912"),
        ("", ""),
        ("So the final answer is Bob Smith!", "Bob Smith"),
    ],
)
def test_parse_answer(text, answer):
    assert prompts.parse_answer(text) == answer


@pytest.mark.parametrize(
    "text, rationale, answer",
    [
        ("X was born in 1901. So the answer is: X.", "X was born in 1901.", "X"),
        ("Step one. The answer is no", "Step one.", "no"),
        ("A. Answer: B. So the answer is: C.", "A. Answer: B.", "C"),
        ("just reasoning, no conclusion", "just reasoning, no conclusion", None),
        ("Reasoning. So the answer is:", "Reasoning.", None),
    ],
)
def test_split_rationale(text, rationale, answer):
    assert prompts.split_rationale(text) == (rationale, answer)


def test_every_role_has_its_inputs_in_the_prompt():
    q, c, r = "Who founded Vexa?", "Vexa: Vexa was founded by Ilo Mant.", "Vexa was founded by Ilo Mant."
    for make in (prompts.standard_prompt, prompts.cot_prompt, prompts.teacher_rationale_prompt,
                 prompts.small_rationale_prompt):
        text = make(q, c)
        assert q in text and c in text
    assert r in prompts.answer_from_rationale_prompt(q, c, r)
    assert "step by step" in prompts.cot_prompt(q, c)


def test_judge_has_one_question_per_aspect():
    assert set(prompts.ASPECTS) == {"factuality", "relevance", "logicality", "consistency", "coherence",
                                    "fluency", "naturalness", "readability"}
    texts = {a: prompts.judge_prompt(a, "q", "c", "r") for a in prompts.ASPECTS}
    assert len(set(texts.values())) == 8
    assert all(t.rstrip().endswith("Answer:") and "yes or no" in t for t in texts.values())
    with pytest.raises(KeyError, match="valid"):
        prompts.judge_prompt("beauty", "q", "c", "r")


@pytest.mark.parametrize("text, answer", [
    ("B founded it. So the answer is: Answers in Genesis.", "Answers in Genesis"),
    ("It is the album. Final answer: Final Answer (album)", "Final Answer (album)"),
    ("So the answer is: The Answer", "The Answer"),
    ("So the answer is: Unanswered Questions.", "Unanswered Questions"),
])
def test_answers_that_contain_the_word_answer_survive(text, answer):
    assert prompts.split_rationale(text)[1] == answer
    assert prompts.parse_answer(answer) == answer


def test_a_prompt_keeps_its_shrinkable_context_through_pickling():
    """Prompts cross Ray (judge actors, Serve replicas) and are fitted where the model lives."""
    import pickle

    p = prompts.judge_prompt("fluency", "Who?", "A: one.\nB: two.", "A is one.")
    q = pickle.loads(pickle.dumps(p))
    assert (q, q.role, q.context) == (p, "judge:fluency", "A: one.\nB: two.")
    assert q.render("A: one.") == str(p).replace("\nB: two.", "")
