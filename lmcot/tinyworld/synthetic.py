"""Write synthetic HotpotQA / 2WikiMultiHopQA data: the shipped samples in lmcot/data/, or new worlds.

Why synthetic: the real datasets cannot be downloaded where the project is
built and tested, yet every stage needs data in the *official* record layout.
This script invents a small, self-consistent fictional world (countries,
cities, three generations of people, films, companies, bands), renders one
Wikipedia-like paragraph per entity, and asks template questions whose answers
follow from exactly the gold paragraphs named by the supporting facts. Every
name is built from invented syllables, so no record describes a real entity.

Deterministic (one seeded ``random.Random``, no set iteration), stdlib only:
``python tools/make_synthetic_data.py`` rewrites the files byte for byte;
``--check`` fails if the shipped files differ from what the script writes.

New worlds: ``--seed S --out-dir D [--train N] [--dev N]`` writes the same five files
(same names, same official layouts, aliases included) for a different world: every
name is drawn again from the seed, so a model trained on one seed's world cannot have
memorised another's facts. ``--train`` / ``--dev`` set the number of questions per
dataset and split; the world grows with them (``--scale``, chosen automatically) so
every question template keeps enough distinct questions. With the default seed and
counts the random draws are exactly those of the shipped files.
"""

from __future__ import annotations

import argparse
import json
import itertools
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

SEED = 20240404
COUNTS = {"hotpotqa_synthetic_train": 100, "hotpotqa_synthetic_dev": 40,
          "2wiki_synthetic_train": 40, "2wiki_synthetic_dev": 40}
QUESTIONS_PER_SCALE = 140
"""A world of scale 1 (28 films, 18 companies, 16 bands, 84 people) comfortably holds this many
distinct questions per dataset with every template represented; larger requests grow the world."""
OUT_DIR = Path(__file__).resolve().parents[1] / "data"


# ----------------------------------------------------------------------------- the fictional world
SYLLABLES = ["ka", "lo", "ven", "dri", "mar", "tho", "sel", "quin", "bra", "vel", "dor", "fen", "ril", "zan",
             "mi", "ra", "tes", "wyn", "gal", "ber", "lis", "cor", "ath", "ul", "sha", "pir", "nor", "eth", "ast"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
COUNTRY_SUFFIXES = [("ia", "ian"), ("ar", "aran"), ("ovia", "ovian"), ("enne", "ennese"), ("and", "ander")]
CITY_SUFFIXES = ["ford", "haven", "mouth", "burg", "stead", "port", "wick", "dale"]
FILM_GENRES = ["drama", "comedy", "thriller", "western", "musical", "documentary"]
BAND_GENRES = ["folk rock", "jazz", "synth-pop", "post-punk", "bluegrass"]
COMPANY_KINDS = [("Motors", "automotive"), ("Textiles", "textile"), ("Foods", "food processing"),
                 ("Shipping", "shipping"), ("Instruments", "electronics"), ("Publishing", "publishing")]
OTHER_JOBS = ["painter", "novelist", "architect", "politician", "botanist", "sculptor", "chemist"]


@dataclass
class Entity:
    """Anything with a paragraph: its title is ``name``; ``qid`` is an invented Wikidata-style id."""

    name: str
    qid: str
    year: int = 0
    country: str = ""
    city: str = ""
    gender: str = ""
    date: str = ""
    birth_key: tuple = ()
    father: str = ""
    job: str = ""
    director: str = ""
    founder: str = ""
    genre: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class World:
    """All entities, one paragraph per entity title, and alias lists for 2Wiki scoring."""

    countries: list
    cities: list
    people: list
    films: list
    companies: list
    bands: list
    paragraphs: dict = field(default_factory=dict)

    def __post_init__(self):
        every = self.countries + self.cities + self.people + self.films + self.companies + self.bands
        self.by_name = {e.name: e for e in every}
        assert len(self.by_name) == len(every), "entity names must be unique: they are paragraph titles"
        self.titles = [e.name for e in every]
        self.people_by_name = {p.name: p for p in self.people}
        self.cities_by_name = {c.name: c for c in self.cities}

    def qid(self, name: str) -> str:
        return self.by_name[name].qid

    def demonym(self, country: str) -> str:
        return self.by_name[country].extra["demonym"]

    def alias_records(self) -> list[dict]:
        """Official id_aliases.json lines for countries, cities and people."""
        out = []
        for c in self.countries:
            out.append({"Q_id": c.qid, "aliases": [c.name, f"Republic of {c.name}"], "demonyms": [c.extra["demonym"]]})
        for c in self.cities:
            out.append({"Q_id": c.qid, "aliases": [c.name, f"{c.name} City"], "demonyms": []})
        for p in self.people:
            first, last = p.name.split(" ", 1)
            out.append({"Q_id": p.qid, "aliases": [p.name, f"{first[0]}. {last}"], "demonyms": []})
        return out


def first_qid(seed: int) -> int:
    """Where a world's entity ids start: the shipped world's as always, any other world's in a range of
    its own, so the 2Wiki alias files of two worlds can be merged (a train split from one world, the
    dev split from another) without one id naming two entities."""
    return 9100001 if seed == SEED else 10_000_000 * (seed + 1) + 1


def build_world(rng: random.Random, scale: int = 1, start_qid: int = 9100001) -> World:
    """Invent the entities (unique names), then write their paragraphs.

    ``scale`` multiplies every entity count except the five countries; scale 1 makes
    exactly the random draws of the shipped world.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    s = scale
    used: set = set()  # every invented word, so no two entities share a name part by accident
    counter = itertools.count(start_qid)

    def word(lo: int = 2, hi: int = 3, suffix: str = "") -> str:
        while True:
            w = ("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(lo, hi))) + suffix).capitalize()
            if w not in used:
                used.add(w)
                return w

    def entity(name: str, **kw) -> Entity:
        return Entity(name=name, qid=f"Q{next(counter)}", **kw)

    countries = []
    for suffix, dem in rng.sample(COUNTRY_SUFFIXES, 5):
        stem = word(2, 2)
        countries.append(entity(stem + suffix, extra={"demonym": stem + dem}))
    cities = [entity(word(1, 2, rng.choice(CITY_SUFFIXES)), country=countries[i % 5].name) for i in range(15 * s)]
    people: list = []

    def person(gen_years: tuple[int, int], father: Entity | None) -> Entity:
        gender = "m" if father is None or rng.random() < 0.6 else "f"
        first = word(1, 2, rng.choice(["o", "an", "ric"] if gender == "m" else ["a", "ine", "elle"]))
        surname = father.name.split(" ", 1)[1] if father else word(2, 3)
        year = father.year + rng.randint(22, 36) if father else rng.randint(*gen_years)
        month, day = rng.randint(1, 12), rng.randint(1, 28)
        city = rng.choice(cities)
        p = entity(f"{first} {surname}", year=year, gender=gender, father=father.name if father else "",
                   date=f"{day} {MONTHS[month - 1]} {year}", birth_key=(year, month, day),
                   city=city.name, country=city.country)
        people.append(p)
        return p

    elders = [person((1850, 1880), None) for _ in range(12 * s)]
    middle = [person((0, 0), rng.choice(elders)) for _ in range(22 * s)]
    middle += [person((1885, 1915), None) for _ in range(6 * s)]
    for _ in range(44 * s):
        person((0, 0), rng.choice([m for m in middle if m.gender == "m"]))
    pool = [p for p in people if p.year >= 1890]
    rng.shuffle(pool)
    directors, founders = pool[:14 * s], pool[14 * s:28 * s]
    musicians = [p for p in pool[28 * s:] if p.year >= 1915][:14 * s]
    films = []
    for _ in range(28 * s):
        d = rng.choice(directors)
        year = rng.randint(max(1935, d.year + 22), min(2005, d.year + 70))
        pattern = rng.choice(["{w} {n}", "The {n} of {w}", "{w}'s {n}"])
        noun = rng.choice(["Dawn", "Harbour", "Promise", "Winter", "Letters", "Crossing", "Garden", "Echo"])
        films.append(entity(pattern.format(w=word(2, 3), n=noun), year=year, director=d.name,
                            country=d.country, genre=rng.choice(FILM_GENRES)))
    companies = []
    for _ in range(18 * s):
        f = rng.choice(founders)
        kind, industry = rng.choice(COMPANY_KINDS)
        city = rng.choice(cities)
        companies.append(entity(f"{word(2, 3)} {kind}", year=rng.randint(f.year + 20, min(f.year + 50, 2010)),
                                founder=f.name, city=city.name, country=city.country, genre=industry))
    bands = []
    for _ in range(16 * s):
        m = rng.choice(musicians)
        name = rng.choice(["The {w} {n}", "{w} {n}"]).format(
            w=word(2, 2), n=rng.choice(["Lanterns", "Sparrows", "Engines", "Tides", "Foxes", "Echoes"]))
        bands.append(entity(name, year=rng.randint(m.year + 17, min(m.year + 40, 2015)), founder=m.name,
                            city=rng.choice(cities).name, genre=rng.choice(BAND_GENRES)))
    jobs = {p.name: "film director" for p in directors} | {p.name: "entrepreneur" for p in founders}
    jobs |= {p.name: "musician" for p in musicians}
    for p in people:
        p.job = jobs.get(p.name) or rng.choice(OTHER_JOBS)
    world = World(countries, cities, people, films, companies, bands)
    _write_paragraphs(rng, world)
    return world


def _write_paragraphs(rng: random.Random, w: World) -> None:
    """One paragraph per entity; the sentence indices used by the questions are fixed (see each comment)."""
    P = w.paragraphs
    capitals = {c.country: c.name for c in reversed(w.cities)}
    for c in w.countries:
        P[c.name] = [f"{c.name} is a sovereign state whose capital is {capitals[c.name]}.",
                     f"Its citizens are called {c.extra['demonym']}s.",
                     f"Its economy rests on {rng.choice(['fishing', 'mining', 'tourism', 'farming'])} and trade."]
    for c in w.cities:  # 0: country
        P[c.name] = [f"{c.name} is a {rng.choice(['small', 'large', 'coastal', 'hill'])} city in the "
                     f"{rng.choice(['north', 'south', 'east', 'west'])} of {c.country}.",
                     f"It has a population of about {rng.randint(8, 900) * 1000:,}.",
                     f"The city is known for its {rng.choice(['bridges', 'markets', 'festivals', 'canals'])}."]
    for p in w.people:  # 0: date of birth, nationality; 1: birthplace, country; 2: father (if any)
        he, his = ("He", "His") if p.gender == "m" else ("She", "Her")
        child = "son" if p.gender == "m" else "daughter"
        P[p.name] = [f"{p.name} (born {p.date}) was a {w.demonym(p.country)} {p.job}.",
                     f"{he} was born in {p.city}, a city in {p.country}.",
                     f"{he} was the {child} of {p.father}." if p.father else
                     f"{he} studied in {rng.choice(w.cities).name} as a young adult.",
                     f"{his} work is remembered in {rng.choice(w.cities).name}."]
    for f in w.films:  # 0: year, nationality, genre, director
        P[f.name] = [f"{f.name} is a {f.year} {w.demonym(f.country)} {f.genre} film directed by {f.director}.",
                     f"It was shot in {rng.choice(w.cities).name} over {rng.randint(3, 20)} weeks.",
                     f"It received {rng.choice(['mixed', 'warm', 'glowing'])} reviews on its release."]
    for c in w.companies:  # 1: year, founder
        P[c.name] = [f"{c.name} is a {w.demonym(c.country)} {c.genre} company headquartered in {c.city}.",
                     f"It was founded in {c.year} by {c.founder}.",
                     f"The company employs about {rng.randint(40, 9000)} people."]
    for b in w.bands:  # 0: city; 1: year, founder
        P[b.name] = [f"{b.name} are a {b.genre} band from {b.city}.",
                     f"The band was formed in {b.year} by {b.founder}.",
                     f"They have released {rng.randint(2, 14)} studio albums."]


# ----------------------------------------------------------------------------- questions
def _context(rng: random.Random, world: World, gold: list[str], n_distract: tuple[int, int]) -> list:
    """Gold paragraphs plus distractors, shuffled together as in the official distractor setting."""
    pool = [t for t in world.titles if t not in gold]
    titles = gold + rng.sample(pool, rng.randint(*n_distract))
    rng.shuffle(titles)
    return [[t, list(world.paragraphs[t])] for t in titles]


def _pair(rng: random.Random, items: list, attr: str) -> tuple:
    """Two distinct items that share ``attr`` half the time, so yes/no answers come out balanced."""
    x = rng.choice(items)
    same = rng.random() < 0.5
    matches = [i for i in items if i is not x and (getattr(i, attr) == getattr(x, attr)) == same]
    if not matches:  # a small world may have no such partner for x: take one of the other answer
        matches = [i for i in items if i is not x]
    return x, rng.choice(matches)


def _hotpot_question(rng: random.Random, w: World) -> dict:
    """One HotpotQA-style question: (question, answer, supporting facts, type)."""
    kind = rng.choice(["director_city", "founder_year", "band_country", "director_nationality"] * 3
                      + ["company_first", "band_first", "both_from", "born_first", "both_genre"])
    if kind == "director_city":
        f = rng.choice(w.films)
        d = w.people_by_name[f.director]
        return dict(q=f"The director of the film {f.name} was born in which city?", a=d.city,
                    sp=[(f.name, 0), (d.name, 1)], type="bridge")
    if kind == "founder_year":
        c = rng.choice(w.companies)
        p = w.people_by_name[c.founder]
        return dict(q=f"In what year was the founder of {c.name} born?", a=str(p.year),
                    sp=[(c.name, 1), (p.name, 0)], type="bridge")
    if kind == "band_country":
        b = rng.choice(w.bands)
        return dict(q=f"{b.name} were formed in a city that lies in which country?",
                    a=w.cities_by_name[b.city].country, sp=[(b.name, 0), (b.city, 0)], type="bridge")
    if kind == "director_nationality":
        f = rng.choice(w.films)
        d = w.people_by_name[f.director]
        return dict(q=f"What nationality is the director of {f.name}?", a=w.demonym(d.country),
                    sp=[(f.name, 0), (d.name, 0)], type="bridge")
    if kind in ("company_first", "band_first"):
        group = w.companies if kind == "company_first" else w.bands
        x, y = rng.sample(group, 2)
        while x.year == y.year:
            x, y = rng.sample(group, 2)
        verb = "founded" if kind == "company_first" else "formed"
        return dict(q=f"Which was {verb} first, {x.name} or {y.name}?", a=min(x, y, key=lambda e: e.year).name,
                    sp=[(x.name, 1), (y.name, 1)], type="comparison")
    if kind == "both_from":
        x, y = _pair(rng, w.people, "country")
        country = rng.choice([x.country, y.country])
        answer = "yes" if x.country == y.country == country else "no"
        return dict(q=f"Are {x.name} and {y.name} both from {country}?", a=answer,
                    sp=[(x.name, 1), (y.name, 1)], type="comparison")
    if kind == "born_first":
        x, y = rng.sample(w.people, 2)
        while x.birth_key == y.birth_key:
            x, y = rng.sample(w.people, 2)
        return dict(q=f"Who was born first, {x.name} or {y.name}?", a=min(x, y, key=lambda p: p.birth_key).name,
                    sp=[(x.name, 0), (y.name, 0)], type="comparison")
    x, y = _pair(rng, w.films, "genre")
    genre = rng.choice([x.genre, y.genre])
    return dict(q=f"Are {x.name} and {y.name} both {genre} films?", a="yes" if x.genre == y.genre == genre else "no",
                sp=[(x.name, 0), (y.name, 0)], type="comparison")


def _twowiki_question(rng: random.Random, w: World) -> dict:
    """One 2Wiki-style question with evidences (and ids), gold titles and answer_id."""
    kind = rng.choice(["compositional", "comparison", "inference", "bridge_comparison"])
    if kind == "compositional":
        rel = rng.choice(["place of birth", "date of birth", "country of citizenship"])
        f = rng.choice(w.films)
        d = w.people_by_name[f.director]
        ev = [[f.name, "director", d.name]]
        ev_id = [[f.qid, "director", d.qid]]
        if rel == "place of birth":
            q, a, aid, sp = f"Where was the director of film {f.name} born?", d.city, w.qid(d.city), [(d.name, 1)]
        elif rel == "date of birth":
            q, a, aid, sp = f"What is the date of birth of the director of film {f.name}?", d.date, None, [(d.name, 0)]
        else:
            q, a, aid = f"Which country is the director of film {f.name} from?", d.country, w.qid(d.country)
            sp = [(d.name, 0), (d.name, 1)]
        ev.append([d.name, rel, a])
        ev_id = ev_id + [[d.qid, rel, aid]] if aid else []
        return dict(q=q, a=a, aid=aid, sp=[(f.name, 0)] + sp, ev=ev, ev_id=ev_id, gold=[f.name, d.name], type=kind)
    if kind == "inference":
        x = rng.choice([p for p in w.people if p.father and w.people_by_name[p.father].father])
        y = w.people_by_name[x.father]
        z = w.people_by_name[y.father]
        return dict(q=f"Who is the paternal grandfather of {x.name}?", a=z.name, aid=z.qid,
                    sp=[(x.name, 2), (y.name, 2)], ev=[[x.name, "father", y.name], [y.name, "father", z.name]],
                    ev_id=[[x.qid, "father", y.qid], [y.qid, "father", z.qid]], gold=[x.name, y.name], type=kind)
    if kind == "comparison":
        if rng.random() < 0.5:
            x, y = rng.sample(w.films, 2)
            while x.year == y.year:
                x, y = rng.sample(w.films, 2)
            return dict(q=f"Which film came out first, {x.name} or {y.name}?", a=min(x, y, key=lambda f: f.year).name,
                        aid=None, sp=[(x.name, 0), (y.name, 0)],
                        ev=[[x.name, "publication date", str(x.year)], [y.name, "publication date", str(y.year)]],
                        ev_id=[], gold=[x.name, y.name], type=kind)
        x, y = _pair(rng, w.people, "country")
        return dict(q=f"Are {x.name} and {y.name} of the same nationality?", aid=None,
                    a="yes" if x.country == y.country else "no", sp=[(x.name, 0), (y.name, 0)],
                    ev=[[x.name, "country of citizenship", x.country], [y.name, "country of citizenship", y.country]],
                    ev_id=[[x.qid, "country of citizenship", w.qid(x.country)],
                           [y.qid, "country of citizenship", w.qid(y.country)]], gold=[x.name, y.name], type=kind)
    x, y = rng.sample(w.films, 2)
    dx, dy = w.people_by_name[x.director], w.people_by_name[y.director]
    while dx is dy or dx.birth_key == dy.birth_key:
        x, y = rng.sample(w.films, 2)
        dx, dy = w.people_by_name[x.director], w.people_by_name[y.director]
    later = rng.random() < 0.4
    pick = max if later else min
    answer = pick((x, dx), (y, dy), key=lambda pair: pair[1].birth_key)[0].name
    return dict(q=f"Which film has the director who was born {'later' if later else 'earlier'}, {x.name} or {y.name}?",
                a=answer, aid=None, sp=[(x.name, 0), (dx.name, 0), (y.name, 0), (dy.name, 0)],
                ev=[[x.name, "director", dx.name], [y.name, "director", dy.name],
                    [dx.name, "date of birth", dx.date], [dy.name, "date of birth", dy.date]],
                ev_id=[], gold=[x.name, dx.name, y.name, dy.name], type=kind)


def _count_try(tries: int, n: int, what: str) -> int:
    """Stop a question loop that cannot find ``n`` distinct questions (a world too small for ``n``)."""
    if tries > 200 * n + 10_000:
        raise ValueError(f"could not draw {n} distinct {what} questions from this world; pass a larger --scale")
    return tries + 1


def make_hotpot(rng: random.Random, world: World, n: int, seen: set) -> list[dict]:
    """``n`` HotpotQA records with distinct questions (``seen`` is shared across splits)."""
    out = []
    tries = 0
    while len(out) < n:
        tries = _count_try(tries, n, "HotpotQA")
        item = _hotpot_question(rng, world)
        if item["q"] in seen:
            continue
        seen.add(item["q"])
        gold = list(dict.fromkeys(t for t, _ in item["sp"]))
        out.append({"_id": f"{rng.getrandbits(96):024x}", "question": item["q"], "answer": item["a"],
                    "supporting_facts": [list(f) for f in item["sp"]],
                    "context": _context(rng, world, gold, (6, 8)), "type": item["type"],
                    "level": rng.choices(["easy", "medium", "hard"], weights=[2, 5, 3])[0]})
    return out


def make_2wiki(rng: random.Random, world: World, n: int, seen: set) -> list[dict]:
    """``n`` 2WikiMultiHopQA records (official v1.1 layout with ``evidences_id`` / ``answer_id``)."""
    out = []
    tries = 0
    while len(out) < n:
        tries = _count_try(tries, n, "2Wiki")
        item = _twowiki_question(rng, world)
        if item["q"] in seen:
            continue
        seen.add(item["q"])
        out.append({"_id": f"{rng.getrandbits(128):032x}", "type": item["type"], "question": item["q"],
                    "context": _context(rng, world, item["gold"], (6, 8)),
                    "supporting_facts": [list(f) for f in item["sp"]], "evidences": item["ev"],
                    "answer": item["a"], "entity_ids": "_".join(world.qid(t) for t in item["gold"]),
                    "evidences_id": item["ev_id"], "answer_id": item["aid"]})
    return out


def dump_records(records: list) -> str:
    """A JSON list with one record per line: small, and readable in a diff."""
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"


def counts_for(train: int | None = None, dev: int | None = None) -> dict[str, int]:
    """Questions per file: the shipped counts, or ``train`` / ``dev`` per dataset where given."""
    return {name: (n if (train if name.endswith("_train") else dev) is None
                   else (train if name.endswith("_train") else dev)) for name, n in COUNTS.items()}


def auto_scale(counts: dict[str, int]) -> int:
    """The smallest world scale that holds ``counts`` (1 for the shipped counts)."""
    per_dataset = max(sum(n for k, n in counts.items() if k.startswith(p)) for p in ("hotpotqa", "2wiki"))
    return max(1, -(-per_dataset // QUESTIONS_PER_SCALE))


def generate_world(seed: int = SEED, train: int | None = None, dev: int | None = None,
                   scale: int = 0) -> tuple[World, dict[str, list]]:
    """The world of ``seed`` and file stem -> records (``scale`` 0: :func:`auto_scale`)."""
    counts = counts_for(train, dev)
    rng = random.Random(seed)
    world = build_world(rng, scale or auto_scale(counts), first_qid(seed))
    hotpot_seen: set = set()
    wiki_seen: set = set()
    records = {}
    for name, n in counts.items():
        maker = make_hotpot if name.startswith("hotpotqa") else make_2wiki
        records[name] = maker(rng, world, n, hotpot_seen if maker is make_hotpot else wiki_seen)
    return world, records


def generate(seed: int = SEED, train: int | None = None, dev: int | None = None, scale: int = 0,
             rationales: bool = False) -> dict[str, str]:
    """File name -> file text for every file of one world (by default: the shipped samples).

    ``rationales`` adds each record's gold chain of thought (optional key ``rationale``: the supporting
    facts and the comparison step, :func:`lmcot.tinyworld.reasoning.reasoned_rationale`), as the
    evaluation worlds carry it for the gold-rationale reference row."""
    world, records = generate_world(seed, train, dev, scale)
    if rationales:
        from lmcot.datasets.data import parse_records
        from lmcot.tinyworld.reasoning import reasoned_rationale

        for name, recs in records.items():
            fmt = "hotpotqa" if name.startswith("hotpotqa") else "2wiki"
            for rec, ex in zip(recs, parse_records(recs, fmt, name)):
                rec["rationale"] = reasoned_rationale(world, ex)
    files = {f"{name}.json": dump_records(recs) for name, recs in records.items()}
    files["2wiki_synthetic_id_aliases.json"] = "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                       for r in world.alias_records())
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", "--out", dest="out", type=Path, default=OUT_DIR,
                        help="output folder (default: lmcot/data, the shipped samples)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"world seed (default {SEED}: the shipped world)")
    parser.add_argument("--train", type=int, default=None, help="train questions per dataset (default: shipped)")
    parser.add_argument("--dev", type=int, default=None, help="dev questions per dataset (default: shipped)")
    parser.add_argument("--scale", type=int, default=0, help="world size multiplier (default: as --train/--dev need)")
    parser.add_argument("--rationales", action="store_true",
                        help="add each record's gold chain of thought (key 'rationale'), as evaluation worlds do")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out-dir, write nothing")
    args = parser.parse_args(argv)
    shipped = (args.seed, args.train, args.dev, args.scale, args.rationales) == (SEED, None, None, 0, False)
    if not shipped and not args.check and args.out.resolve() == OUT_DIR.resolve():
        parser.error("a non-default world would overwrite the shipped samples; pass --out-dir")
    files = generate(args.seed, args.train, args.dev, args.scale, args.rationales)
    stale = [name for name, text in files.items()
             if not (args.out / name).is_file() or (args.out / name).read_text(encoding="utf-8") != text]
    if args.check:
        for name in stale:
            print(f"stale: {args.out / name} (run python tools/make_synthetic_data.py)")
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {args.out} ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
