"""lmcot.tinyworld.synthetic (tools/make_synthetic_data.py): the shipped samples are reproducible, other seeds make new worlds."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lmcot.datasets.data import load_json_file
from lmcot.tinyworld import synthetic

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "make_synthetic_data.py"


@pytest.fixture(scope="module")
def tool():
    return synthetic


def test_default_seed_reproduces_shipped_files_byte_for_byte(tool):
    files = tool.generate()
    shipped = sorted(p.name for p in (ROOT / "lmcot" / "data").glob("*.json"))
    assert sorted(files) == shipped
    for name, text in files.items():
        assert (ROOT / "lmcot" / "data" / name).read_bytes() == text.encode("utf-8"), name


def test_cli_with_explicit_default_seed_writes_the_shipped_files(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), "--seed", "20240404", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for path in (ROOT / "lmcot" / "data").glob("*.json"):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


TINY_WORLD_TRAIN_SEED, TINY_WORLD_TRAIN = 101, 500


def test_tiny_world_train_split_is_world_101_with_merged_aliases(tool):
    """The tiny preset trains on another world than its dev sets; the alias file holds both worlds,
    whose entity ids never collide."""
    files = tool.generate(seed=TINY_WORLD_TRAIN_SEED, train=TINY_WORLD_TRAIN, dev=0)
    shipped = ROOT / "lmcot" / "data"
    assert (shipped / "tiny_world" / "hotpotqa_train.json").read_text() == files["hotpotqa_synthetic_train.json"]
    assert (shipped / "tiny_world" / "2wiki_train.json").read_text() == files["2wiki_synthetic_train.json"]
    merged = (shipped / "2wiki_synthetic_id_aliases.json").read_text() + files["2wiki_synthetic_id_aliases.json"]
    assert (shipped / "tiny_world" / "2wiki_id_aliases.json").read_text() == merged
    ids = [json.loads(line)["Q_id"] for line in merged.splitlines()]
    assert len(ids) == len(set(ids))


def test_another_seed_makes_a_new_world(tool):
    shipped, _ = tool.generate_world()
    other, _ = tool.generate_world(seed=7)
    assert set(shipped.titles) & set(other.titles) == set()  # every person, film, city... renamed
    people = lambda w: {p.name.split(" ")[1] for p in w.people}  # noqa: E731
    assert not people(shipped) & people(other)


def test_a_non_default_world_refuses_to_overwrite_the_shipped_samples():
    done = subprocess.run([sys.executable, str(TOOL), "--seed", "7"], capture_output=True, text=True)
    assert done.returncode != 0 and "--out-dir" in done.stderr


def test_any_number_of_questions_of_every_template_in_official_layouts(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), "--seed", "11", "--out-dir", str(tmp_path),
                           "--train", "400", "--dev", "50"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    hot_train = load_json_file(tmp_path / "hotpotqa_synthetic_train.json", "hotpotqa")
    hot_dev = load_json_file(tmp_path / "hotpotqa_synthetic_dev.json", "hotpotqa")
    wiki_train = load_json_file(tmp_path / "2wiki_synthetic_train.json", "2wiki")
    wiki_dev = load_json_file(tmp_path / "2wiki_synthetic_dev.json", "2wiki")
    assert (len(hot_train), len(hot_dev), len(wiki_train), len(wiki_dev)) == (400, 50, 400, 50)
    assert not {e.question for e in hot_train} & {e.question for e in hot_dev}
    assert not {e.question for e in wiki_train} & {e.question for e in wiki_dev}
    # every template shows up: recognise them by their wording
    hot_templates = Counter(q.question.split(" ")[0] + ("?" if "both" in q.question else "") for q in hot_train)
    for start in ("The", "In", "What", "Which", "Are?", "Who"):
        assert hot_templates[start] > 0, start
    assert any(q.question.endswith("were formed in a city that lies in which country?") for q in hot_train)
    assert {e.type for e in wiki_train} == {"compositional", "comparison", "inference", "bridge_comparison"}
    # answers follow from the gold paragraphs named by the supporting facts
    for ex in hot_train[:50] + wiki_train[:50]:
        titles = {p.title for p in ex.paragraphs}
        assert set(ex.gold_titles) <= titles
    aliases = [json.loads(line) for line in (tmp_path / "2wiki_synthetic_id_aliases.json").read_text().splitlines()]
    ids = {a["Q_id"] for a in aliases}
    assert all(e.answer_id in ids for e in wiki_train if e.answer_id)
    assert all(set(a) == {"Q_id", "aliases", "demonyms"} for a in aliases)


def test_world_grows_with_the_request(tool):
    assert tool.auto_scale(tool.counts_for()) == 1
    assert tool.auto_scale(tool.counts_for(train=1000, dev=100)) == 8
    with pytest.raises(ValueError, match="--scale"):  # a world too small for n stops, never loops forever
        tool._count_try(200 * 5 + 10_001, 5, "HotpotQA")


def test_the_evaluation_world_files_are_what_the_registry_generates():
    """lmcot/data/tiny_world/eval/ is world 2000004 (seeds.EVALUATION) drawn as evaluation worlds are, with gold chains of
    thought; its aliases file adds that world's aliases to the training world's (ids never collide)."""
    from lmcot.tinyworld import seeds

    folder = ROOT / "lmcot" / "data" / "tiny_world" / "eval"
    files = seeds.evaluation_world_files(seeds.EVALUATION[0])
    train_aliases = (ROOT / "lmcot" / "data" / "tiny_world" / "2wiki_id_aliases.json").read_text()
    for name, text in files.items():
        expected = train_aliases + text if name.endswith("aliases.json") else text
        assert (folder / name).read_text(encoding="utf-8") == expected, name
    records = json.loads(files["hotpotqa_dev.json"])
    assert len(records) == seeds.EVAL_WORLD_SHAPE["dev"] and all(r["rationale"] for r in records)
