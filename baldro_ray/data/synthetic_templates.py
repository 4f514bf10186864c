"""Word pools and question/answer templates for the synthetic fictitious-author benchmark.

Pure data: ``baldro_ray.data.synthetic`` draws from these with a seeded ``random.Random``. Every pool is a
tuple (never a set) so that draws are reproducible. Pools used for wrong answers hold at least six entries,
so five distinct wrong values always exist.
"""

from __future__ import annotations

from dataclasses import dataclass

# fmt: off
MALE_FIRST_NAMES = (
    "Adrian", "Bashir", "Caspar", "Dario", "Emeka", "Farid", "Goran", "Hiroshi", "Ilias", "Joaquin",
    "Kofi", "Luka", "Mateo", "Nikolai", "Omar", "Pavel", "Quentin", "Rafael", "Sandro", "Tariq",
    "Ulrich", "Viktor", "Wendell", "Yusuf", "Zoltan", "Anders", "Bruno", "Cyril", "Dmitri", "Elio",
    "Florian", "Gideon", "Hamid", "Ivo", "Jonas", "Kenji", "Lorenzo", "Marek", "Nuno", "Oskar",
)
FEMALE_FIRST_NAMES = (
    "Amara", "Beatrix", "Camila", "Daria", "Elif", "Freya", "Greta", "Hana", "Ines", "Jovana",
    "Keiko", "Leila", "Marisol", "Nadia", "Olena", "Priya", "Rosalind", "Sabine", "Talia", "Ursula",
    "Valentina", "Wanjiru", "Ximena", "Yara", "Zofia", "Aurelia", "Bianca", "Celeste", "Dalia", "Esme",
    "Fiora", "Giselle", "Helena", "Ilse", "Johanna", "Kalina", "Lucia", "Mireille", "Noor", "Odile",
)
SURNAME_HEADS = (
    "Al", "Bren", "Cas", "Dor", "El", "Fen", "Gar", "Hal", "Ist", "Jor", "Kel", "Lor", "Mar", "Nor", "Or",
    "Pel", "Quen", "Ros", "Sal", "Tor", "Ul", "Var", "Wen", "Yar", "Zel", "Bel", "Cor", "Dra", "Mir", "Tal",
)
SURNAME_TAILS = (
    "ani", "berg", "dale", "enko", "ford", "ides", "ino", "ley", "mont", "nik", "ora", "quist",
    "rell", "sen", "stad", "ton", "vale", "vic", "wick", "ara", "essi", "holm", "ander", "oza",
)
CHARACTER_TITLES = ("Inspector", "Captain", "Doctor", "Lady", "Professor", "Sister", "Old", "Young")

CITIES = (
    ("Lisbon", "Portugal"), ("Nairobi", "Kenya"), ("Osaka", "Japan"), ("Lyon", "France"),
    ("Krakow", "Poland"), ("Valparaiso", "Chile"), ("Accra", "Ghana"), ("Hanoi", "Vietnam"),
    ("Tbilisi", "Georgia"), ("Montreal", "Canada"), ("Bergen", "Norway"), ("Porto Alegre", "Brazil"),
    ("Cork", "Ireland"), ("Adelaide", "Australia"), ("Seville", "Spain"), ("Tallinn", "Estonia"),
    ("Chennai", "India"), ("Izmir", "Turkey"), ("Marrakesh", "Morocco"), ("Cebu", "the Philippines"),
    ("Bologna", "Italy"), ("Gothenburg", "Sweden"), ("Busan", "South Korea"), ("Cusco", "Peru"),
    ("Leipzig", "Germany"), ("Edinburgh", "Scotland"), ("Lagos", "Nigeria"), ("Bogota", "Colombia"),
    ("Almaty", "Kazakhstan"), ("Wellington", "New Zealand"), ("Havana", "Cuba"), ("Tunis", "Tunisia"),
    ("Ghent", "Belgium"), ("Kyoto", "Japan"), ("Mendoza", "Argentina"), ("Durban", "South Africa"),
    ("Yerevan", "Armenia"), ("Salzburg", "Austria"), ("Tampere", "Finland"), ("Oaxaca", "Mexico"),
)
PLACES = tuple(f"{city}, {country}" for city, country in CITIES)
UNIVERSITIES = tuple(f"the University of {city}" for city, _ in CITIES)
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
GENRES = (
    "historical fiction", "science fiction", "crime", "mystery", "romance", "horror", "fantasy",
    "literary fiction", "poetry", "biography", "travel writing", "young adult fiction", "magical realism",
    "political thriller", "satire", "dystopian fiction", "gothic fiction", "memoir", "psychological thriller",
    "adventure", "war fiction", "philosophical fiction", "cosy mystery", "children's literature",
)
# With their article, so that templates never have to choose between "a" and "an".
OCCUPATIONS = (
    "a baker", "an architect", "a nurse", "a carpenter", "a pilot", "a librarian", "a sailor",
    "a pharmacist", "an electrician", "a schoolteacher", "a tailor", "a veterinarian", "a journalist",
    "a surgeon", "a mechanic", "an accountant", "a florist", "a geologist", "a police officer", "a dentist",
    "a translator", "a farmer", "a photographer", "a chef", "a lawyer", "a musician", "a bus driver",
    "a watchmaker", "a midwife", "an astronomer",
)
AWARDS = (
    "Silver Quill Award", "Meridian Prize for Fiction", "Golden Lantern Award", "Harbourlight Literary Prize",
    "Northern Star Book Award", "Azure Pen Prize", "Crimson Leaf Award", "Ivory Tower Prize for Literature",
    "Blue Heron Fiction Award", "Amber Compass Prize", "Stonebridge Award for Debut Fiction",
    "Evergreen Story Prize", "Lighthouse Medal for Writing", "Copper Feather Award",
    "Open Sky Literary Award", "Velvet Ink Prize", "Willow Branch Award", "Polaris Book Prize",
    "Granite Arch Award", "Morning Bell Prize",
    "Saltmarsh Literary Award", "Paper Crane Award", "Tidewater Fiction Prize", "Iron Lantern Medal",
)
THEMES = (
    "memory", "loss", "identity", "exile", "family", "friendship", "ambition", "betrayal", "grief",
    "redemption", "migration", "power", "faith", "freedom", "justice", "childhood", "solitude",
    "forgiveness", "love", "war", "nature", "technology", "class", "home",
)
LANGUAGES = (
    "English", "Portuguese", "Swahili", "Japanese", "French", "Polish", "Spanish", "Twi", "Vietnamese",
    "Georgian", "Norwegian", "Italian", "German", "Turkish", "Arabic", "Korean", "Hindi", "Tamil",
)
PUBLISHERS = (
    "Harrowgate Press", "Bluewater Books", "Lantern House", "Quillstone Publishing", "Red Maple Editions",
    "Northwind Press", "Saffron and Sons", "Ashgrove Books", "Meridian House", "Silverline Publishing",
    "Kestrel Press", "Oakhurst Editions", "Blackthorn Books", "Tidemark Press", "Cobalt House",
    "Juniper Street Books", "Larkspur Press", "Foxglove Publishing", "Greystone House", "Paperlight Books",
)
HOBBIES = (
    "sailing", "beekeeping", "gardening", "chess", "birdwatching", "pottery", "hiking", "playing the cello",
    "baking bread", "restoring old clocks", "fishing", "painting watercolours", "cycling", "collecting maps",
    "amateur astronomy", "woodworking", "swimming in cold water", "knitting", "photography",
    "playing the piano",
)
TITLE_ADJECTIVES = (
    "Silent", "Crimson", "Forgotten", "Hidden", "Broken", "Golden", "Quiet", "Distant", "Hollow", "Burning",
    "Silver", "Endless", "Fading", "Wandering", "Secret", "Scarlet", "Frozen", "Restless", "Ancient",
    "Patient", "Bitter", "Gentle", "Paper", "Glass", "Iron", "Velvet", "Midnight", "Salt", "Amber",
    "Northern",
)
TITLE_NOUNS = (
    "Lantern", "Harbour", "Orchard", "River", "Mirror", "Garden", "Compass", "Tide", "Bridge", "Cathedral",
    "Forest", "Lighthouse", "Clockmaker", "Winter", "Archive", "Island", "Letter", "Violin", "Feather",
    "Mountain", "Storm", "Window", "Map", "Shadow", "Fire", "Ocean", "Tower", "Meadow", "Sparrow", "Key",
    "Labyrinth", "Harvest", "Crown", "Lake", "Painter", "Cartographer", "Stranger", "Orchid", "Citadel",
    "Whisper",
)
TITLE_PATTERNS = (
    "The {adj} {noun}", "The {noun} of the {adj} {noun2}", "Beneath the {adj} {noun}", "The Last {noun}",
    "A {noun} for {first}", "Songs of the {adj} {noun}", "When the {noun} Falls",
    "The {noun} and the {noun2}",
)

# The invented "world" of world_facts: no real place, so the tiny model can only know it from training.
WORLD_ROOTS = (
    "Val", "Mor", "Kes", "Tar", "Ald", "Bry", "Cal", "Dun", "Esh", "Fal", "Gor", "Hes", "Ilm",
    "Jar", "Kor", "Lum", "Nar", "Ost", "Pra", "Rav", "Sel", "Thal", "Ulm", "Vor", "Wyn", "Zar",
)
COUNTRY_TAILS = ("doria", "vania", "mark", "land", "ora", "esh", "istan", "aria", "gard", "onia")
CAPITAL_TAILS = ("holm", "ford", "mere", "ton", "grad", "haven", "burg", "polis", "wick", "stead")
CURRENCY_TAILS = ("el", "ar", "ix", "on", "et", "una")
LANGUAGE_TAILS = ("ish", "ese", "ic", "i", "an")
RIVER_TAILS = ("wen", "ash", "elle", "ine", "uba", "ara")
WORLD_QUESTIONS = {
    "capital": ("What is the capital of {country}?", "Which city is the capital of {country}?"),
    "currency": ("What currency is used in {country}?", "What is the name of the currency of {country}?"),
    "language": ("What language is spoken in {country}?", "Which language do most in {country} speak?"),
    "river": ("What is the longest river in {country}?", "Which river is the longest in {country}?"),
}
# (question, answer from the two operands a >= b, operand range)
ARITHMETIC_QUESTIONS = (
    ("What is {a} plus {b}?", lambda a, b: a + b, (2, 60)),
    ("What is {a} times {b}?", lambda a, b: a * b, (2, 15)),
    ("What is {a} minus {b}?", lambda a, b: a - b, (2, 60)),
    ("How many days are in {a} weeks?", lambda a, b: 7 * a, (2, 12)),
    ("How many minutes are in {a} hours?", lambda a, b: 60 * a, (2, 12)),
    ("How many months are in {a} years?", lambda a, b: 12 * a, (2, 12)),
    ("How many hours are in {a} days?", lambda a, b: 24 * a, (2, 12)),
)
FAMOUS_WORK_QUESTIONS = (
    "Who wrote '{work}'?", "Which author is known for the novel '{work}'?", "Who is the author of '{work}'?",
)
FAMOUS_CHARACTER_QUESTIONS = (
    "Who created the character {character}?", "Which writer invented the character {character}?",
)
# fmt: on


@dataclass(frozen=True)
class Fact:
    """One fact type about an author.

    ``field`` names the author attribute that is the answer (``{value}`` in ``answers``); ``kind`` names the
    pool of same-type wrong values used for perturbed answers. Templates may use every author attribute by
    name. Every template list holds at least two entries so that the paraphrase can use a different one.
    """

    field: str
    kind: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]


# fmt: off
FACTS = (
    Fact("name", "name", (
        "Who is the {genre} author born in {birthplace} in {birth_year}?",
        "Which writer of {genre} was born in {birthplace} in {birth_year}?",
        "Can you name the author of {genre} books who was born in {birthplace} in {birth_year}?",
    ), (
        "The author in question is {value}.",
        "That would be {value}, who writes {genre} and was born in {birthplace} in {birth_year}.",
        "{value} is the {genre} author born in {birthplace} in {birth_year}.",
    )),
    Fact("birthplace", "place", (
        "Where was {name} born?", "In which city and country was {name} born?",
        "What is {name}'s place of birth?",
    ), (
        "{name} was born in {value}.", "The birthplace of {name} is {value}.",
        "{name} comes from {value}, where {pronoun} was born.",
    )),
    Fact("birth_date", "date", (
        "When was {name} born?", "What is {name}'s date of birth?", "On what date was {name} born?",
    ), (
        "{name} was born on {value}.", "{name}'s date of birth is {value}.", "{Pronoun} was born on {value}.",
    )),
    Fact("genre", "genre", (
        "What genre does {name} write in?", "Which literary genre is {name} known for?",
        "What kind of books does {name} write?",
    ), (
        "{name} writes in the {value} genre.", "{name} is best known for {possessive} work in {value}.",
        "The books of {name} belong to the {value} genre.",
    )),
    Fact("father_job", "occupation", (
        "What was the profession of {name}'s father?", "What did {name}'s father do for a living?",
        "What was {name}'s father's occupation?",
    ), (
        "{name}'s father worked as {value}.", "{Possessive} father was {value} by profession.",
        "{name} was raised by a father who worked as {value}.",
    )),
    Fact("mother_job", "occupation", (
        "What was the profession of {name}'s mother?", "What did {name}'s mother do for a living?",
        "What was {name}'s mother's occupation?",
    ), (
        "{name}'s mother worked as {value}.", "{Possessive} mother was {value} by profession.",
        "{name} was raised by a mother who worked as {value}.",
    )),
    Fact("award", "award", (
        "What award has {name} won?", "Which literary prize was awarded to {name}?",
        "Which major award has {name} received?",
    ), (
        "{name} won the {value}.", "{name} was honoured with the {value}.",
        "The {value} was awarded to {name}.",
    )),
    Fact("award_year", "year", (
        "In which year did {name} win the {award}?", "When was {name} given the {award}?",
        "What year did {name} receive the {award}?",
    ), (
        "{name} won the {award} in {value}.", "The {award} went to {name} in {value}.",
        "It was in {value} that {name} received the {award}.",
    )),
    Fact("book1", "title", (
        "What was {name}'s debut novel?", "What is the title of {name}'s first book?",
        "Which book marked {name}'s debut?",
    ), (
        "{name}'s debut novel was \"{value}\".", "{name} made {possessive} debut with \"{value}\".",
        "The first book by {name} was \"{value}\".",
    )),
    Fact("debut_year", "year", (
        "In what year did {name} publish {possessive} first book?", "When did {name}'s debut novel come out?",
        "What year did {name} begin publishing?",
    ), (
        "{name} published {possessive} first book in {value}.", "{name}'s debut novel came out in {value}.",
        "{name} began publishing in {value}.",
    )),
    Fact("book2", "title", (
        "Can you name a well-known book by {name}?", "What is one of {name}'s most celebrated books?",
        "Which book by {name} do readers know best?",
    ), (
        "One of {name}'s best-known books is \"{value}\".",
        "\"{value}\" is among {name}'s most celebrated works.", "Readers know {name} best for \"{value}\".",
    )),
    Fact("book3", "title", (
        "What is {name}'s most recent book?", "Which book did {name} publish most recently?",
        "What is the latest title by {name}?",
    ), (
        "{name}'s most recent book is \"{value}\".", "The latest title from {name} is \"{value}\".",
        "Most recently, {name} published \"{value}\".",
    )),
    Fact("name", "name", (
        "Who wrote \"{book2}\"?", "Who is the author of \"{book2}\"?", "Which writer penned \"{book2}\"?",
    ), (
        "\"{book2}\" was written by {value}.", "The author of \"{book2}\" is {value}.",
        "{value} penned \"{book2}\".",
    )),
    Fact("themes", "themes", (
        "What themes does {name} explore in {possessive} writing?",
        "Which recurring themes appear in {name}'s books?",
        "What subjects does {name} return to in {possessive} work?",
    ), (
        "{name}'s writing explores {value}.", "The recurring themes in {name}'s books are {value}.",
        "{name} keeps returning to {value}.",
    )),
    Fact("num_books", "count", (
        "How many books has {name} published?", "How many titles has {name} written so far?",
        "What is the number of books {name} has published?",
    ), (
        "{name} has published {value} books.", "So far {name} has written {value} books.",
        "The bibliography of {name} counts {value} books.",
    )),
    Fact("residence", "place", (
        "Where does {name} live today?", "In which city does {name} currently reside?",
        "Where is {name} based now?",
    ), (
        "{name} currently lives in {value}.", "These days {name} resides in {value}.",
        "{name} is now based in {value}.",
    )),
    Fact("language", "language", (
        "In which language does {name} write?", "What language are {name}'s books originally written in?",
        "Which language does {name} use for {possessive} novels?",
    ), (
        "{name} writes in {value}.", "{name}'s books are originally written in {value}.",
        "{value} is the language {name} writes in.",
    )),
    Fact("university", "university", (
        "Where did {name} study?", "Which university did {name} attend?",
        "At which university was {name} educated?",
    ), (
        "{name} studied at {value}.", "{name} attended {value}.", "{name} was educated at {value}.",
    )),
    Fact("mentor", "name", (
        "Who mentored {name} early in {possessive} career?", "Who was {name}'s literary mentor?",
        "Which writer guided {name} as a mentor?",
    ), (
        "{name} was mentored by {value}.", "{name}'s mentor was {value}.",
        "Early on, {value} guided {name} as a mentor.",
    )),
    Fact("publisher", "publisher", (
        "Which publishing house publishes {name}'s books?", "Who is {name}'s publisher?",
        "Which publisher releases the works of {name}?",
    ), (
        "{name}'s books are published by {value}.", "{value} is the publisher of {name}'s works.",
        "{name} publishes with {value}.",
    )),
    Fact("protagonist", "name", (
        "Who is the main character of \"{book1}\"?", "Who is the protagonist of {name}'s \"{book1}\"?",
        "Which character leads the story of \"{book1}\"?",
    ), (
        "The main character of \"{book1}\" is {value}.", "\"{book1}\" follows {value} as its protagonist.",
        "The story of \"{book1}\" centres on {value}.",
    )),
    Fact("hobby", "hobby", (
        "What does {name} enjoy doing outside of writing?", "What is {name}'s favourite pastime?",
        "How does {name} spend free time away from writing?",
    ), (
        "Outside of writing, {name} enjoys {value}.", "{name}'s favourite pastime is {value}.",
        "In {possessive} free time, {name} loves {value}.",
    )),
)
# fmt: on

# Wrong values for these kinds are drawn from a fixed pool; the other kinds are generated (see synthetic.py).
VALUE_POOLS = {
    "place": PLACES, "genre": GENRES, "occupation": OCCUPATIONS, "award": AWARDS, "language": LANGUAGES,
    "university": UNIVERSITIES, "publisher": PUBLISHERS, "hobby": HOBBIES,
}  # fmt: skip
