"""Synthetic fictitious-author benchmark in the exact schema and file layout of TOFU.

TOFU files (JSON Lines named ``.json``; keys in TOFU's order, never an extra key):

* ``full`` (question, answer): ``qa_per_author`` QA pairs per author, one author after another.
* ``forget01/05/10``: the last rows of ``full`` (whole authors); ``retain99/95/90``: the other, first rows.
  A p% split holds ``max(1, round_half_up(num_authors * p / 100))`` authors (TOFU's 200 give 2/10/20), so
  with few authors "1%" is one author. forget01 is a suffix of forget05, which is a suffix of forget10.
* ``holdout01/05/10``: QA of authors not in ``full``, as many as the matching forget split; holdout01 is a
  prefix of holdout05, which is a prefix of holdout10.
* ``forgetXX_perturbed`` (rows of forgetXX, same order) and ``retain_perturbed`` (the first
  ``retain_perturbed_author_count()`` authors, inside retain90): question, answer, paraphrased_answer,
  perturbed_answer (5 distinct strings: the paraphrased answer with the fact swapped for a wrong value of the
  same type), paraphrased_question.
* ``world_facts`` / ``real_authors`` (question, option1..option4, answer; one option is the answer) and
  their ``_perturbed`` twins (question, answer, perturbed_answer = the 3 wrong options in option order): an
  invented, seed-dependent world (countries, capitals, currencies, rivers; arithmetic) and invented "famous"
  writers, never naming an author of ``full`` or the holdout.

Sidecars (JSON Lines too):

* ``forgetXX_difficulty``: row i describes row i of forgetXX: index, full_index, author, difficulty
  ("hard"/"easy"), repeat. Counted from the last author, the last k authors always hold exactly
  ``round_half_up(k * hard_fraction)`` hard ones, so every forget split gets the requested fraction.
* ``authors``: one row per author: index, author, source ("full"/"holdout"), first_row (in full, resp.
  holdout_all), num_rows, forget_splits, difficulty ("hard"/"easy" for forget10's authors, else null), repeat
  (copies in finetune_mix; 0 for holdout authors).
* ``holdout_all``: QA of every holdout author (holdout10 unless ``num_holdout_authors`` asks for more).
* ``finetune_mix`` (question, answer): the target model's training data: each row of ``full`` ``repeat``
  times in a row (``hard_repeat`` for hard authors, else 1), then world_facts and real_authors QA. Unshuffled.
* ``finetune_mix_retainYY``: finetune_mix without forgetXX's rows (the rest keep their repeats): the retain
  model's training data for that forget split.

The config checks, ``draw_unique``, ``difficulty_labels``, ``benchmark_manifest`` and ``install_benchmark`` (the
atomic, reuse-aware folder write) also serve the MUSE-format generator, ``synthetic_muse``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from baldro_ray.atomic import staging_dir
from baldro_ray.data import synthetic_templates as tpl

FORGET_PERCENTS = {"forget01": 1, "forget05": 5, "forget10": 10}
RETAIN_OF_FORGET = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
HOLDOUT_OF_FORGET = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}
TOFU_SPLITS = (
    "full",
    "forget01",
    "forget05",
    "forget10",
    "retain99",
    "retain95",
    "retain90",
    "holdout01",
    "holdout05",
    "holdout10",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "world_facts",
    "world_facts_perturbed",
    "real_authors",
    "real_authors_perturbed",
)
SIDECARS = (
    "forget01_difficulty",
    "forget05_difficulty",
    "forget10_difficulty",
    "authors",
    "holdout_all",
    "finetune_mix",
    "finetune_mix_retain99",
    "finetune_mix_retain95",
    "finetune_mix_retain90",
)
MANIFEST_NAME = "benchmark.json"
MANIFEST_FORMAT = "baldro-ray/synthetic-tofu"
NUM_PERTURBED = 5
NUM_OPTIONS = 4
MAX_AUTHORS = 2000
MAX_FACTS = 1000
MAX_HARD_REPEAT = 100

Rows = list[dict[str, Any]]


def round_half_up(x: float) -> int:
    """Nearest integer, halves upwards (Python's round() sends 0.5 and 2.5 to the even neighbour)."""
    return math.floor(x + 0.5)


def invalid(config: object, field: str, allowed: str) -> ValueError:
    """The error for a bad config field: ``<ConfigClass>.<field>=<value> is invalid: allowed is <allowed>``."""
    value = getattr(config, field)
    return ValueError(f"{type(config).__name__}.{field}={value!r} is invalid: allowed is {allowed}")


def check_int(config: object, field: str, low: int, high: int, why: str = "") -> None:
    value = getattr(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(config, field, f"an integer in [{low}, {high}]" + (f" ({why})" if why else ""))


def check_fraction(config: object, field: str) -> None:
    value = getattr(config, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise invalid(config, field, "a number in [0, 1]")


def check_seed(config: Any) -> None:
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise invalid(config, "seed", "an integer")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes, difficulty mix and seed of a synthetic benchmark; validated on construction (ValueError).

    ``num_holdout_authors`` defaults to forget10's author count (more only grow ``holdout_all``);
    ``num_retain_perturbed_authors`` to 10% of the authors (TOFU: 20 of 200), at most retain90's authors.
    ``hard_fraction`` of the forget authors are "hard": their QA appear ``hard_repeat`` times in finetune_mix.
    """

    num_authors: int = 40
    qa_per_author: int = 20
    num_holdout_authors: int | None = None
    num_retain_perturbed_authors: int | None = None
    hard_fraction: float = 0.5
    hard_repeat: int = 4
    num_world_facts: int = 40
    num_real_authors: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self, "num_authors", 2, MAX_AUTHORS, "at least one author must stay in retain")
        check_int(self, "qa_per_author", 1, len(tpl.FACTS), "one QA per fact type")
        forget10 = self.forget_author_counts()["forget10"]
        if self.num_holdout_authors is not None:
            check_int(self, "num_holdout_authors", forget10, MAX_AUTHORS, "holdout10 mirrors forget10")
        if self.num_retain_perturbed_authors is not None:
            upper = self.num_authors - forget10
            check_int(self, "num_retain_perturbed_authors", 1, upper, "the authors of retain90")
        check_fraction(self, "hard_fraction")
        check_int(self, "hard_repeat", 1, MAX_HARD_REPEAT)
        check_int(self, "num_world_facts", 1, MAX_FACTS)
        check_int(self, "num_real_authors", 1, MAX_FACTS)
        check_seed(self)

    def forget_author_counts(self) -> dict[str, int]:
        """Authors per forget split: ``max(1, round_half_up(num_authors * percent / 100))``; nested."""
        return {s: max(1, round_half_up(self.num_authors * p / 100)) for s, p in FORGET_PERCENTS.items()}

    def holdout_author_count(self) -> int:
        return self.num_holdout_authors or self.forget_author_counts()["forget10"]

    def retain_perturbed_author_count(self) -> int:
        if self.num_retain_perturbed_authors is not None:
            return self.num_retain_perturbed_authors
        retain90 = self.num_authors - self.forget_author_counts()["forget10"]
        return min(retain90, max(1, round_half_up(self.num_authors / 10)))


@dataclass(frozen=True)
class _QA:
    question: str
    answer: str
    paraphrased_question: str
    paraphrased_answer: str
    perturbed_answer: tuple[str, ...]

    def plain(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer}

    def perturbed(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "paraphrased_answer": self.paraphrased_answer,
            "perturbed_answer": list(self.perturbed_answer),
            "paraphrased_question": self.paraphrased_question,
        }


def draw_unique(make: Callable[[], str], used: set[str]) -> str:
    """A value of ``make()`` not yet in ``used``, added to it; RuntimeError when the pool looks exhausted."""
    for _ in range(10_000):
        value = make()
        if value not in used:
            used.add(value)
            return value
    raise RuntimeError("synthetic word pool exhausted; lower the requested sizes")


class _Generator:
    """Draws everything from one seeded Random; ``used`` keeps names, titles and world words unique."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.used: set[str] = set()
        self.identities: set[tuple[str, str, int]] = set()

    def unique(self, make: Callable[[], str]) -> str:
        return draw_unique(make, self.used)

    @staticmethod
    def distinct(make: Callable[[], str], true: str, k: int) -> list[str]:
        values: list[str] = []
        while len(values) < k:
            value = make()
            if value != true and value not in values:
                values.append(value)
        return values

    def person(self, gender: str | None = None) -> str:
        rng = self.rng
        gender = gender or rng.choice(("male", "female"))
        first = rng.choice(tpl.MALE_FIRST_NAMES if gender == "male" else tpl.FEMALE_FIRST_NAMES)
        return f"{first} {rng.choice(tpl.SURNAME_HEADS)}{rng.choice(tpl.SURNAME_TAILS)}"

    def title(self) -> str:
        rng = self.rng
        noun, noun2 = rng.sample(tpl.TITLE_NOUNS, 2)
        adjective, first = rng.choice(tpl.TITLE_ADJECTIVES), rng.choice(tpl.FEMALE_FIRST_NAMES)
        return rng.choice(tpl.TITLE_PATTERNS).format(adj=adjective, noun=noun, noun2=noun2, first=first)

    def date(self, year: int | None = None) -> str:
        year = self.rng.randint(1930, 1985) if year is None else year
        return f"{self.rng.choice(tpl.MONTHS)} {self.rng.randint(1, 28)}, {year}"

    def themes(self) -> str:
        return " and ".join(self.rng.sample(tpl.THEMES, 2))

    def wrong_values(self, kind: str, true: str, k: int) -> list[str]:
        rng = self.rng
        if kind in tpl.VALUE_POOLS:
            return rng.sample([v for v in tpl.VALUE_POOLS[kind] if v != true], k)
        makers: dict[str, Callable[[], str]] = {
            "name": self.person,
            "title": self.title,
            "date": self.date,
            "themes": self.themes,
            "year": lambda: str(int(true) + rng.choice([d for d in range(-15, 16) if d])),
            "count": lambda: str(rng.randint(3, 40)),
        }
        return self.distinct(makers[kind], true, k)

    def author(self) -> dict[str, str]:
        """Every attribute a template may name, as strings."""
        rng = self.rng
        gender = rng.choice(("male", "female"))
        name = self.unique(lambda: self.person(gender))
        for _ in range(10_000):  # the identity question must point at exactly one author
            identity = (rng.choice(tpl.GENRES), rng.choice(tpl.PLACES), rng.randint(1930, 1985))
            if identity not in self.identities:
                break
        self.identities.add(identity)
        genre, birthplace, birth_year = identity
        debut_year = birth_year + rng.randint(20, 32)
        father_job, mother_job = rng.sample(tpl.OCCUPATIONS, 2)
        he = gender == "male"
        return {
            "name": name,
            "pronoun": "he" if he else "she",
            "Pronoun": "He" if he else "She",
            "possessive": "his" if he else "her",
            "Possessive": "His" if he else "Her",
            "genre": genre,
            "birthplace": birthplace,
            "birth_year": str(birth_year),
            "birth_date": self.date(birth_year),
            "father_job": father_job,
            "mother_job": mother_job,
            "award": rng.choice(tpl.AWARDS),
            "debut_year": str(debut_year),
            "award_year": str(debut_year + rng.randint(2, 8)),
            "book1": self.unique(self.title),
            "book2": self.unique(self.title),
            "book3": self.unique(self.title),
            "themes": self.themes(),
            "num_books": str(rng.randint(3, 30)),
            "residence": rng.choice([p for p in tpl.PLACES if p != birthplace]),
            "language": rng.choice(tpl.LANGUAGES),
            "university": rng.choice(tpl.UNIVERSITIES),
            "mentor": self.unique(self.person),
            "publisher": rng.choice(tpl.PUBLISHERS),
            "protagonist": self.unique(self.person),
            "hobby": rng.choice(tpl.HOBBIES),
        }

    def author_qa(self, author: dict[str, str], count: int) -> list[_QA]:
        """``count`` distinct fact types, in template order; paraphrases use another template than the QA."""
        rng = self.rng
        qas = []
        for fact_index in sorted(rng.sample(range(len(tpl.FACTS)), count)):
            fact = tpl.FACTS[fact_index]
            question, paraphrased_question = rng.sample(fact.questions, 2)
            answer, paraphrased_answer = rng.sample(fact.answers, 2)
            true = author[fact.field]
            wrong = self.wrong_values(fact.kind, true, NUM_PERTURBED)
            qas.append(
                _QA(
                    question.format(**author),
                    answer.format(**author, value=true),
                    paraphrased_question.format(**author),
                    paraphrased_answer.format(**author, value=true),
                    tuple(paraphrased_answer.format(**author, value=w) for w in wrong),
                )
            )
        return qas

    def options_row(
        self, question: str, answer: str, wrong: list[str]
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """TOFU's multiple-choice row (the answer at a random option) and its ``_perturbed`` twin."""
        options = list(wrong)
        options.insert(self.rng.randrange(NUM_OPTIONS), answer)
        row = {"question": question, **{f"option{i + 1}": o for i, o in enumerate(options)}, "answer": answer}
        perturbed = [o for o in options if o != answer]
        return row, {"question": question, "answer": answer, "perturbed_answer": perturbed}

    def world_facts(self, count: int) -> list[tuple[dict[str, str], dict[str, Any]]]:
        rng = self.rng

        def word(tails: tuple[str, ...]) -> str:
            return self.unique(lambda: rng.choice(tpl.WORLD_ROOTS) + rng.choice(tails))

        countries = [
            {
                "country": word(tpl.COUNTRY_TAILS),
                "capital": word(tpl.CAPITAL_TAILS),
                "currency": word(tpl.CURRENCY_TAILS).lower(),
                "language": word(tpl.LANGUAGE_TAILS),
                "river": f"the {word(tpl.RIVER_TAILS)} River",
            }
            for _ in range(max(NUM_OPTIONS, min(40, math.ceil(count / 4))))
        ]
        candidates: dict[str, tuple[str, list[str]]] = {}
        for country in countries:
            for attribute, phrasings in tpl.WORLD_QUESTIONS.items():
                others = [c[attribute] for c in countries if c is not country]
                question = rng.choice(phrasings).format(**country)
                candidates[question] = (country[attribute], rng.sample(others, NUM_OPTIONS - 1))
        while len(candidates) < 2 * count:
            phrasing, compute, (low, high) = rng.choice(tpl.ARITHMETIC_QUESTIONS)
            a, b = sorted((rng.randint(low, high), rng.randint(low, high)), reverse=True)
            value = compute(a, b)
            near = [str(value + d) for d in range(-10, 11) if d and value + d >= 0]
            candidates.setdefault(phrasing.format(a=a, b=b), (str(value), rng.sample(near, NUM_OPTIONS - 1)))
        return [self.options_row(q, *candidates[q]) for q in rng.sample(sorted(candidates), count)]

    def real_authors(self, count: int) -> list[tuple[dict[str, str], dict[str, Any]]]:
        rng = self.rng
        writers = [self.unique(self.person) for _ in range(max(NUM_OPTIONS, math.ceil(count / 3)))]
        candidates: list[tuple[str, str]] = []
        for writer in writers:
            for _ in range(2):
                work = self.unique(self.title)
                candidates.append((rng.choice(tpl.FAMOUS_WORK_QUESTIONS).format(work=work), writer))
            character = self.unique(lambda: f"{rng.choice(tpl.CHARACTER_TITLES)} {self.person()}")
            question = rng.choice(tpl.FAMOUS_CHARACTER_QUESTIONS).format(character=character)
            candidates.append((question, writer))
        rows = []
        for question, writer in rng.sample(candidates, count):
            wrong = rng.sample([w for w in writers if w != writer], NUM_OPTIONS - 1)
            rows.append(self.options_row(question, writer, wrong))
        return rows


def difficulty_labels(num_items: int, num_forget: int, fraction: float) -> list[str | None]:
    """Difficulty of each of ``num_items`` items whose last ``num_forget`` are forget items: None for the
    others, else "hard"/"easy".

    The j-th item from the end (1-based) is hard iff round_half_up(j * fraction) grows at j, so the last k
    items hold exactly round_half_up(k * fraction) hard ones, for every nested forget split at once.
    """
    difficulty: list[str | None] = [None] * num_items
    for j in range(1, num_forget + 1):
        hard = round_half_up(j * fraction) > round_half_up((j - 1) * fraction)
        difficulty[num_items - j] = "hard" if hard else "easy"
    return difficulty


def generate_benchmark(config: SyntheticConfig) -> dict[str, Rows]:
    """Every TOFU split (``TOFU_SPLITS``) then every sidecar (``SIDECARS``): file stem -> rows in file order.

    Deterministic: the same config always gives the same rows. Invariants: see the module docstring.
    """
    gen = _Generator(config.seed)
    per_author, counts, num_authors = config.qa_per_author, config.forget_author_counts(), config.num_authors
    authors = [gen.author() for _ in range(num_authors)]
    holdout_authors = [gen.author() for _ in range(config.holdout_author_count())]
    qas = [qa for author in authors for qa in gen.author_qa(author, per_author)]
    holdout = [qa.plain() for author in holdout_authors for qa in gen.author_qa(author, per_author)]
    world, famous = gen.world_facts(config.num_world_facts), gen.real_authors(config.num_real_authors)
    difficulty = difficulty_labels(num_authors, counts["forget10"], config.hard_fraction)
    repeats = [config.hard_repeat if g == "hard" else 1 for g in difficulty] + [0] * len(holdout_authors)
    difficulty += [None] * len(holdout_authors)

    full = [qa.plain() for qa in qas]
    first_forget_row = {split: (num_authors - k) * per_author for split, k in counts.items()}
    tables: dict[str, Rows] = {"full": full}
    tables.update({split: full[start:] for split, start in first_forget_row.items()})
    tables.update({RETAIN_OF_FORGET[split]: full[:start] for split, start in first_forget_row.items()})
    tables.update({HOLDOUT_OF_FORGET[split]: holdout[: k * per_author] for split, k in counts.items()})
    for split, start in first_forget_row.items():
        tables[f"{split}_perturbed"] = [qa.perturbed() for qa in qas[start:]]
    retain_perturbed_rows = config.retain_perturbed_author_count() * per_author
    tables["retain_perturbed"] = [qa.perturbed() for qa in qas[:retain_perturbed_rows]]
    for name, pairs in (("world_facts", world), ("real_authors", famous)):
        tables[name], tables[f"{name}_perturbed"] = [row for row, _ in pairs], [p for _, p in pairs]

    for split, start in first_forget_row.items():
        tables[f"{split}_difficulty"] = [
            {
                "index": i - start,
                "full_index": i,
                "author": authors[i // per_author]["name"],
                "difficulty": difficulty[i // per_author],
                "repeat": repeats[i // per_author],
            }
            for i in range(start, len(full))
        ]
    tables["authors"] = [
        {
            "index": a,
            "author": author["name"],
            "source": "full" if a < num_authors else "holdout",
            "first_row": (a if a < num_authors else a - num_authors) * per_author,
            "num_rows": per_author,
            "forget_splits": [s for s, k in counts.items() if num_authors - k <= a < num_authors],
            "difficulty": difficulty[a],
            "repeat": repeats[a],
        }
        for a, author in enumerate(authors + holdout_authors)
    ]
    tables["holdout_all"] = holdout

    extra = [
        {"question": r["question"], "answer": r["answer"]}
        for r in tables["world_facts"] + tables["real_authors"]
    ]

    def mix(stop_row: int) -> Rows:
        return [full[i] for i in range(stop_row) for _ in range(repeats[i // per_author])] + extra

    tables["finetune_mix"] = mix(len(full))
    for split, start in first_forget_row.items():
        tables[f"finetune_mix_{RETAIN_OF_FORGET[split]}"] = mix(start)
    assert tuple(tables) == TOFU_SPLITS + SIDECARS
    return tables


def jsonl_bytes(rows: Rows) -> bytes:
    """The exact bytes written for ``rows``: one compact JSON object per line, UTF-8, key order kept."""
    return "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def benchmark_manifest(
    format_name: str,
    config: Any,
    splits: tuple[str, ...],
    sidecars: tuple[str, ...],
    payloads: dict[str, bytes],
) -> dict[str, Any]:
    """The manifest of a generated benchmark whose files (relative path -> bytes) are ``payloads``;
    ``config`` is a dataclass. ``content_sha256`` hashes the sorted ``name NUL sha256 LF`` lines of every data
    file."""
    files = {name: {"rows": data.count(b"\n"), "sha256": _sha256(data)} for name, data in payloads.items()}
    content = "".join(f"{name}\0{files[name]['sha256']}\n" for name in sorted(files))
    return {
        "format": format_name,
        "format_version": 1,
        "config": asdict(config),
        "splits": list(splits),
        "sidecars": list(sidecars),
        "files": files,
        "content_sha256": _sha256(content.encode()),
    }


def holds_benchmark(out_dir: Path, manifest: dict[str, Any]) -> bool:
    """True if ``out_dir`` has a manifest with this content hash and every data file still matches it."""
    try:
        existing = json.loads((out_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        if (
            existing.get("content_sha256") != manifest["content_sha256"]
            or existing.get("files") != manifest["files"]
        ):
            return False
        files = manifest["files"].items()
        return all(_sha256((out_dir / name).read_bytes()) == entry["sha256"] for name, entry in files)
    except (OSError, ValueError, AttributeError):
        return False


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def install_benchmark(out_dir: str | Path, payloads: dict[str, bytes], manifest: dict[str, Any]) -> Path:
    """Write ``payloads`` (relative path -> bytes, sub-folders allowed) plus ``manifest`` as ``benchmark.json``.

    The folder appears whole or not at all (built in a temporary sibling, then renamed). If ``out_dir``
    already holds a benchmark with the same content hash and intact files, nothing is rewritten. A non-empty
    folder without a manifest is never replaced (FileExistsError). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    if holds_benchmark(out_dir, manifest):
        return out_dir
    if os.path.lexists(out_dir) and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file())
    ):
        raise FileExistsError(
            f"{out_dir} exists and is not a synthetic benchmark folder; refusing to replace it"
        )
    try:
        with staging_dir(out_dir) as staging:
            for name, data in payloads.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                _write_synced(staging / name, data)
            _write_synced(staging / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError:
        if not holds_benchmark(
            out_dir, manifest
        ):  # else a concurrent writer published the same benchmark first
            raise
    return out_dir


def write_benchmark(config: SyntheticConfig, out_dir: str | Path) -> Path:
    """Write every table of ``generate_benchmark`` as ``<name>.json`` plus the ``benchmark.json`` manifest,
    atomically and only when ``out_dir`` does not already hold it (``install_benchmark``). Returns ``out_dir``.
    """
    payloads = {f"{name}.json": jsonl_bytes(rows) for name, rows in generate_benchmark(config).items()}
    manifest = benchmark_manifest(MANIFEST_FORMAT, config, TOFU_SPLITS, SIDECARS, payloads)
    return install_benchmark(out_dir, payloads, manifest)
