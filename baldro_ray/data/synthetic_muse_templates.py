"""Word pools and fact templates for the synthetic MUSE-format news benchmark.

Pure data: ``baldro_ray.data.synthetic_muse`` draws from these with a seeded ``random.Random``. Every pool is
a tuple (never a set) so that draws are reproducible. Invented names are built from ``ONSETS``, ``VOWELS``,
``MIDDLES`` and ``ENDINGS`` (one per slot, ``VOWELS`` twice): over 100,000 distinct words.

A fact's sentences and question name only the article's own entities and values, and every sentence holds
its ``field``'s value verbatim, so the answer is a span of the article. Sentence templates contain single
spaces only and every placeholder stands for at least one word, so a rendered sentence has at least as many
space-separated words as its template.
"""

from __future__ import annotations

from dataclasses import dataclass

ONSETS = (
    "B",
    "Br",
    "C",
    "D",
    "Dr",
    "F",
    "G",
    "Gr",
    "H",
    "K",
    "Kr",
    "L",
    "M",
    "N",
    "P",
    "R",
    "S",
    "St",
    "T",
    "V",
)
VOWELS = ("a", "e", "i", "o", "u", "ae")
MIDDLES = ("lv", "rn", "nd", "st", "rk", "ll", "ss", "th", "m", "v", "r", "lt", "nt", "sk", "d")
ENDINGS = ("n", "r", "l", "s", "th", "mor", "wick", "dale", "by", "ton", "holm", "ra")

ORG_KINDS = (
    "Holdings",
    "Group",
    "Housing Trust",
    "Rail",
    "Energy",
    "Partners",
    "Construction",
    "Civic Trust",
    "Infrastructure",
    "Water",
)
REGION_KINDS = ("County", "Valley", "District", "Province")
CAMPAIGN_KINDS = ("Action Group", "Residents' Association", "Heritage Society", "Community Alliance")
POLLSTER_KINDS = ("Research", "Polling", "Insights", "Analytics")
FACILITIES = (
    "tram line",
    "hospital wing",
    "library",
    "wind farm",
    "reservoir",
    "football stadium",
    "research centre",
    "ferry terminal",
    "concert hall",
    "sports centre",
    "bus station",
    "flood barrier",
)
ROLES = ("chief executive", "chair", "managing director", "project director", "president")
QUOTES = (
    "a betrayal of local families",
    "a reckless waste of money",
    "a victory for common sense",
    "a sad day for the town",
    "deeply disappointing",
    "an insult to residents",
    "a decision made behind closed doors",
    "the end of an era",
)
CAUSES = (
    "a medieval well",
    "an unexploded shell",
    "a colony of rare bats",
    "a buried tram depot",
    "a Bronze Age burial site",
    "a leaking gas main",
    "a nest of protected owls",
    "a flooded mine shaft",
)
HONOREE_JOBS = (
    "a nurse",
    "a teacher",
    "a firefighter",
    "an engineer",
    "a footballer",
    "a poet",
    "a midwife",
    "a lifeboat captain",
)


@dataclass(frozen=True)
class NewsFact:
    """One fact an article may state: ``field`` is the answer; ``{field}`` occurs in every sentence."""

    field: str
    sentences: tuple[str, ...]
    questions: tuple[str, ...]


FACTS = (
    NewsFact(
        "org",
        (
            "{org} has announced plans to build a new {facility} in {town}.",
            "Plans for a new {facility} in {town} were unveiled by {org} on {date}.",
        ),
        (
            "Which organisation announced plans for a new {facility} in {town}?",
            "Who is behind the plans for a new {facility} in {town}?",
        ),
    ),
    NewsFact(
        "amount",
        (
            "The new {facility} in {town} is expected to cost {amount}.",
            "Officials put the cost of the {facility} in {town} at {amount}.",
        ),
        (
            "How much is the new {facility} in {town} expected to cost?",
            "What is the estimated cost of the {facility} in {town}?",
        ),
    ),
    NewsFact(
        "leader",
        (
            "{leader}, the {role} of {org}, said the scheme was long overdue.",
            "Speaking on {date}, {leader}, the {role} of {org}, defended the plans.",
        ),
        ("Who is the {role} of {org}?", "What is the name of the {role} of {org}?"),
    ),
    NewsFact(
        "year",
        (
            "Work on the {facility} in {town} is due to finish in {year}.",
            "The {facility} in {town} is expected to open to the public in {year}.",
        ),
        ("In which year is the {facility} in {town} due to be finished?",),
    ),
    NewsFact(
        "count",
        (
            "A petition against the {facility} in {town} was signed by {count} people.",
            "A total of {count} people signed a petition opposing the {facility} in {town}.",
        ),
        ("How many people signed the petition against the {facility} in {town}?",),
    ),
    NewsFact(
        "percent",
        (
            "A survey by {pollster} found that {percent} of residents in {region} backed the plans.",
            "According to {pollster}, {percent} of people living in {region} support the scheme.",
        ),
        ("What share of residents in {region} backed the plans, according to {pollster}?",),
    ),
    NewsFact(
        "votes",
        (
            "Councillors in {town} approved the {facility} by {votes}.",
            "The {facility} was approved by the council of {town} by {votes} after a long debate.",
        ),
        ("By what margin did councillors in {town} approve the {facility}?",),
    ),
    NewsFact(
        "quote",
        (
            "{spokesperson} of {campaign} called the decision {quote}.",
            "The decision was described as {quote} by {spokesperson} of {campaign}.",
        ),
        ("How did {spokesperson} of {campaign} describe the decision?",),
    ),
    NewsFact(
        "honoree",
        (
            "The {facility} in {town} will be named after {honoree}, {honoree_job} who grew up in {region}.",
            "{org} said the {facility} would carry the name of {honoree}, {honoree_job} from {region}.",
        ),
        ("Who will the new {facility} in {town} be named after?",),
    ),
    NewsFact(
        "jobs",
        (
            "{org} said the {facility} in {town} would create {jobs} jobs.",
            "About {jobs} jobs are expected to be created by the {facility} in {town}.",
        ),
        ("How many jobs is the {facility} in {town} expected to create?",),
    ),
    NewsFact(
        "hq_town",
        (
            "{org}, founded in {founded}, has its headquarters in {hq_town}.",
            "Founded in {founded}, {org} is based in {hq_town}.",
        ),
        ("Where does {org} have its headquarters?", "In which town is {org} based?"),
    ),
    NewsFact(
        "cause",
        (
            "Building work in {town} was paused in {month} after {cause} was found on the site.",
            "Work on the site in {town} stopped in {month} when builders discovered {cause}.",
        ),
        ("What was found on the building site in {town}?",),
    ),
)
