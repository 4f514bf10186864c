"""Synthetic fictitious-news benchmark in the exact schema and local layout of MUSE (``data/sources.py``).

Each article reports one invented local event: ``facts_per_article`` sentences, the first always the
announcement, each stating one fact (``synthetic_muse_templates.FACTS``) about the article's own invented
entities (town, region, organisation, campaign group, pollster, three people, headquarters town). Every
entity name holds a word drawn once for the whole benchmark, so no entity is shared by two articles, let alone
by forget, retain1, retain2 and holdout. Article texts are one line with single spaces.

MUSE files (``<root>/<config>/<split>.json``, JSON Lines; columns exactly those of ``MUSE_CONFIGS``):

* ``raw/forget``, ``raw/retain1``, ``raw/retain2``, ``raw/holdout`` (text): one row per article. As in MUSE,
  retain1 is the retain set unlearning may use, retain2 the retain set evaluation uses, holdout never trained.
* ``knowmem/forget_qa`` / ``knowmem/retain_qa`` (question, answer): from forget / retain2 articles. The first
  ``num_icl_examples`` articles of each are ICL articles: each gives one QA pair to ``forget_qa_icl`` /
  ``retain_qa_icl`` and none to the QA split; every other article gives ``qa_per_article`` pairs about distinct
  facts, in sentence order. The evaluator puts every ICL pair before every question (as MUSE and open-unlearning
  do), so an example never comes from the article of the question it precedes. Answers are spans of the text.
* ``verbmem/forget`` (prompt, gt): one row per forget article: ``prompt`` its first ``verbmem_prefix_words``
  space-separated words, ``gt`` the rest, so ``prompt + " " + gt`` is the article (the evaluator's
  ``insert_space``).
* ``privleak/forget``, ``privleak/retain``, ``privleak/holdout`` (text): the forget, retain2 and holdout
  articles (MUSE's privleak retain comes from retain2).

Sidecars (``<root>/<name>.json``, JSON Lines, outside MUSE's config folders):

* ``forget_difficulty``: row i describes raw/forget row i: index, town, difficulty ("hard"/"easy"), repeat.
  Exactly ``round_half_up(num_forget_articles * hard_fraction)`` articles are hard (``difficulty_labels``).
* ``articles``: one row per article, forget then retain1, retain2, holdout: index, split, split_index,
  entities (its entity names), knowmem (the knowmem split its QA are in, or null), first_qa_row, num_qa,
  difficulty (forget only, else null), repeat (copies in finetune_mix; 0 for holdout).
* ``finetune_mix`` (text): the target model's training data: each forget article ``repeat`` times in a row
  (``hard_repeat`` if hard, else 1), then every retain1 and every retain2 article. Unshuffled.
* ``finetune_mix_retain`` (text): retain1 then retain2: the retain model's training data (finetune_mix
  without the forget articles).

``benchmark.json`` is the manifest (format ``baldro-ray/synthetic-muse``; hashes as in ``synthetic``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from baldro_ray.data import synthetic_muse_templates as mt
from baldro_ray.data import synthetic_templates as tpl
from baldro_ray.data.sources import MUSE_CONFIGS
from baldro_ray.data.synthetic import (
    MAX_HARD_REPEAT,
    Rows,
    benchmark_manifest,
    check_fraction,
    check_int,
    check_seed,
    difficulty_labels,
    draw_unique,
    install_benchmark,
    jsonl_bytes,
)

RAW_SPLITS = MUSE_CONFIGS["raw"][1]
MUSE_SUBSET_NAMES = tuple(
    f"{config}/{split}" for config, (_, splits) in MUSE_CONFIGS.items() for split in splits
)
SIDECARS = ("forget_difficulty", "articles", "finetune_mix", "finetune_mix_retain")
MANIFEST_FORMAT = "baldro-ray/synthetic-muse"
ENTITY_FIELDS = (
    "town",
    "region",
    "org",
    "campaign",
    "pollster",
    "leader",
    "spokesperson",
    "honoree",
    "hq_town",
)
KNOWMEM_OF_RAW = {"forget": "forget", "retain2": "retain"}  # raw split -> knowmem's {part}_qa(_icl)
MAX_ARTICLES = 2000
MAX_ICL_EXAMPLES = 20
# Every placeholder renders to at least one word, so no article is shorter than facts * this.
MIN_SENTENCE_WORDS = min(len(s.split(" ")) for fact in mt.FACTS for s in fact.sentences)


@dataclass(frozen=True)
class SyntheticMuseConfig:
    """Sizes, difficulty mix and seed of a synthetic MUSE benchmark; validated on construction (ValueError).

    Article counts are per raw split; forget and retain2 also hold the ``num_icl_examples`` ICL articles.
    ``verbmem_prefix_words`` counts space-separated words and must leave every article a non-empty ``gt``.
    ``hard_fraction`` of the forget articles are "hard": they appear ``hard_repeat`` times in finetune_mix.
    """

    num_forget_articles: int = 24
    num_retain1_articles: int = 24
    num_retain2_articles: int = 24
    num_holdout_articles: int = 24
    facts_per_article: int = 8
    qa_per_article: int = 3
    num_icl_examples: int = 3
    verbmem_prefix_words: int = 24
    hard_fraction: float = 0.5
    hard_repeat: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self, "num_icl_examples", 1, MAX_ICL_EXAMPLES)
        with_qa = "the ICL articles and at least one QA article"
        check_int(self, "num_forget_articles", self.num_icl_examples + 1, MAX_ARTICLES, with_qa)
        check_int(self, "num_retain1_articles", 1, MAX_ARTICLES)
        check_int(self, "num_retain2_articles", self.num_icl_examples + 1, MAX_ARTICLES, with_qa)
        check_int(self, "num_holdout_articles", 1, MAX_ARTICLES)
        check_int(self, "facts_per_article", 1, len(mt.FACTS), "one sentence per fact type")
        check_int(self, "qa_per_article", 1, self.facts_per_article, "one QA per fact of the article")
        shortest = self.facts_per_article * MIN_SENTENCE_WORDS
        check_int(self, "verbmem_prefix_words", 1, shortest - 1, f"an article has at least {shortest} words")
        check_fraction(self, "hard_fraction")
        check_int(self, "hard_repeat", 1, MAX_HARD_REPEAT)
        check_seed(self)

    def article_counts(self) -> dict[str, int]:
        """Articles per raw split, in ``RAW_SPLITS`` order."""
        counts = (
            self.num_forget_articles,
            self.num_retain1_articles,
            self.num_retain2_articles,
            self.num_holdout_articles,
        )
        return dict(zip(RAW_SPLITS, counts, strict=True))


@dataclass(frozen=True)
class _Article:
    values: dict[str, str]
    facts: tuple[int, ...]  # indices into mt.FACTS, in sentence order
    text: str


class _Newsroom:
    """Draws everything from one seeded Random; ``used`` keeps every invented word unique."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.used: set[str] = set()

    def word(self) -> str:
        rng = self.rng

        def make() -> str:
            parts = (mt.ONSETS, mt.VOWELS, mt.MIDDLES, mt.VOWELS, mt.ENDINGS)
            return "".join(rng.choice(part) for part in parts)

        return draw_unique(make, self.used)

    def person(self) -> str:
        first = self.rng.choice(tpl.MALE_FIRST_NAMES + tpl.FEMALE_FIRST_NAMES)
        return f"{first} {self.word()}"

    def values(self) -> dict[str, str]:
        """Every field a template may name, as strings."""
        rng = self.rng
        votes_for, votes_against = sorted(rng.sample(range(2, 40), 2), reverse=True)
        return {
            "town": self.word(),
            "region": f"{self.word()} {rng.choice(mt.REGION_KINDS)}",
            "org": f"{self.word()} {rng.choice(mt.ORG_KINDS)}",
            "campaign": f"{self.word()} {rng.choice(mt.CAMPAIGN_KINDS)}",
            "pollster": f"{self.word()} {rng.choice(mt.POLLSTER_KINDS)}",
            "leader": self.person(),
            "spokesperson": self.person(),
            "honoree": self.person(),
            "hq_town": self.word(),
            "facility": rng.choice(mt.FACILITIES),
            "role": rng.choice(mt.ROLES),
            "honoree_job": rng.choice(mt.HONOREE_JOBS),
            "quote": rng.choice(mt.QUOTES),
            "cause": rng.choice(mt.CAUSES),
            "month": rng.choice(tpl.MONTHS),
            "date": f"{rng.choice(tpl.MONTHS)} {rng.randint(1, 28)}",
            "amount": f"£{rng.randint(2, 480)}.{rng.randint(1, 9)} million",
            "year": str(rng.randint(2027, 2036)),
            "founded": str(rng.randint(1890, 2015)),
            "count": f"{rng.randint(1200, 48000):,}",
            "percent": f"{rng.randint(12, 88)}%",
            "votes": f"{votes_for} votes to {votes_against}",
            "jobs": str(rng.randint(40, 2500)),
        }

    def article(self, num_facts: int) -> _Article:
        """The announcement (fact 0) then ``num_facts - 1`` other facts in template order."""
        rng, values = self.rng, self.values()
        facts = (0, *sorted(rng.sample(range(1, len(mt.FACTS)), num_facts - 1)))
        text = " ".join(rng.choice(mt.FACTS[f].sentences).format(**values) for f in facts)
        return _Article(values, facts, text)

    def qa(self, article: _Article, count: int) -> Rows:
        """``count`` QA pairs about distinct facts of ``article``, in sentence order."""
        rows = []
        for f in sorted(self.rng.sample(article.facts, count)):
            fact = mt.FACTS[f]
            question = self.rng.choice(fact.questions).format(**article.values)
            rows.append({"question": question, "answer": article.values[fact.field]})
        return rows


def _texts(articles: list[_Article]) -> Rows:
    return [{"text": article.text} for article in articles]


def _article_rows(
    articles: dict[str, list[_Article]],
    difficulty: list[str | None],
    repeats: list[int],
    config: SyntheticMuseConfig,
) -> Rows:
    """The ``articles`` sidecar: where each article's QA pairs are, its difficulty and finetune_mix copies."""
    icl, per_article = config.num_icl_examples, config.qa_per_article
    rows: Rows = []
    for split, split_articles in articles.items():
        part = KNOWMEM_OF_RAW.get(split)
        for i, article in enumerate(split_articles):
            if part is None:
                knowmem, first_qa_row, num_qa = None, None, 0
            elif i < icl:
                knowmem, first_qa_row, num_qa = f"knowmem/{part}_qa_icl", i, 1
            else:
                knowmem, first_qa_row, num_qa = f"knowmem/{part}_qa", (i - icl) * per_article, per_article
            forget = split == "forget"
            rows.append(
                {
                    "index": len(rows),
                    "split": split,
                    "split_index": i,
                    "entities": [article.values[field] for field in ENTITY_FIELDS],
                    "knowmem": knowmem,
                    "first_qa_row": first_qa_row,
                    "num_qa": num_qa,
                    "difficulty": difficulty[i] if forget else None,
                    "repeat": repeats[i] if forget else int(split != "holdout"),
                }
            )
    return rows


def generate_muse_benchmark(config: SyntheticMuseConfig) -> dict[str, Rows]:
    """Every MUSE subset (``MUSE_SUBSET_NAMES``) then every sidecar (``SIDECARS``): file stem -> rows.

    Deterministic: the same config always gives the same rows. Invariants: see the module docstring.
    """
    room = _Newsroom(config.seed)
    articles = {
        split: [room.article(config.facts_per_article) for _ in range(count)]
        for split, count in config.article_counts().items()
    }
    icl, per_article = config.num_icl_examples, config.qa_per_article
    tables: dict[str, Rows] = {f"raw/{split}": _texts(rows) for split, rows in articles.items()}
    for split, part in KNOWMEM_OF_RAW.items():
        qa_articles = articles[split][icl:]
        tables[f"knowmem/{part}_qa"] = [row for a in qa_articles for row in room.qa(a, per_article)]
    for split, part in KNOWMEM_OF_RAW.items():
        tables[f"knowmem/{part}_qa_icl"] = [room.qa(a, 1)[0] for a in articles[split][:icl]]
    prefix = config.verbmem_prefix_words
    tables["verbmem/forget"] = [
        {"prompt": " ".join(words[:prefix]), "gt": " ".join(words[prefix:])}
        for words in (a.text.split(" ") for a in articles["forget"])
    ]
    for split, source in (("forget", "forget"), ("retain", "retain2"), ("holdout", "holdout")):
        tables[f"privleak/{split}"] = _texts(articles[source])

    forget = articles["forget"]
    difficulty = difficulty_labels(len(forget), len(forget), config.hard_fraction)
    repeats = [config.hard_repeat if label == "hard" else 1 for label in difficulty]
    tables["forget_difficulty"] = [
        {"index": i, "town": a.values["town"], "difficulty": difficulty[i], "repeat": repeats[i]}
        for i, a in enumerate(forget)
    ]
    tables["articles"] = _article_rows(articles, difficulty, repeats, config)
    retain = _texts(articles["retain1"] + articles["retain2"])
    tables["finetune_mix"] = [{"text": a.text} for a, r in zip(forget, repeats) for _ in range(r)] + retain
    tables["finetune_mix_retain"] = retain
    assert tuple(tables) == MUSE_SUBSET_NAMES + SIDECARS
    return tables


def write_muse_benchmark(config: SyntheticMuseConfig, out_dir: str | Path) -> Path:
    """Write every table of ``generate_muse_benchmark`` as ``<name>.json`` (MUSE subsets in their config
    folders) plus the ``benchmark.json`` manifest, atomically and only when ``out_dir`` does not already hold
    this content (``synthetic.install_benchmark``). Returns ``out_dir``."""
    payloads = {f"{name}.json": jsonl_bytes(rows) for name, rows in generate_muse_benchmark(config).items()}
    manifest = benchmark_manifest(MANIFEST_FORMAT, config, MUSE_SUBSET_NAMES, SIDECARS, payloads)
    return install_benchmark(out_dir, payloads, manifest)
