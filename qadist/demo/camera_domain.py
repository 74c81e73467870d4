"""A generated camera-store domain for `qadist demo`: product pages and shoppers' questions.

Deterministic for a seed. Each product page is a few sentences of varied prose about some of a
camera's attributes (sensor, megapixels, ISO range, mount, stabilisation, video, battery life,
weight, weather sealing, price, release year) mixed with distracting numbers and units (screen,
burst rate, viewfinder, kit lens, ...) and filler. A question asks about one attribute; it is
unanswerable from its page when the page never states that attribute (about `unanswerable` of
them). Splits use disjoint products and ids:

- `teacher`: labelled pairs to fine-tune the teachers on;
- `logged`: questions without documents (`questions.jsonl`), to be matched against the product
  pages of `documents.jsonl` by `qadist pairs`; their gold answers stay in `logged-gold.jsonl`
  for diagnostics only;
- `student`: a small labelled pool for the student; its first n rows are the n-label subsets;
- `test`: labelled pairs for evaluation.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from qadist import storage
from qadist.demo.camera_text import ATTRIBUTES, BRANDS, DISTRACTORS, FILLERS, PREFIXES, QUESTIONS, STATEMENTS, SUFFIXES
from qadist.rows import jsonl_bytes


@dataclass(frozen=True)
class DomainSizes:
    """Questions per split (pages are made as needed: `per_page` questions each)."""

    teacher: int = 2000
    logged: int = 6000
    student: int = 500
    test: int = 500
    dev: int = 200  # disjoint from test: where the demo's training settings are chosen (benchmarks/demo_tuning.py)
    per_page: int = 4
    unanswerable: float = 0.3


def _thousands(n: int) -> str:
    return f"{n:,}"


def attribute_values(rng: random.Random, brand: str) -> dict[str, str]:
    """One camera's attribute values, each as the exact phrase its page will contain."""
    mp = rng.choice((12.1, 16.0, 20.1, 20.3, 24.2, 24.5, 26.1, 30.4, 33.0, 40.2, 45.7, 50.1, 61.0, 102.0))
    iso_lo = rng.choice((50, 64, 100, 125, 160, 200))
    iso_hi = rng.choice((12800, 25600, 32000, 51200, 102400, 204800))
    iso_form = rng.randrange(3)
    mount_letter = rng.choice(string.ascii_uppercase)
    stops = rng.choice(("5", "5.5", "6", "6.5", "7", "8"))
    return {
        "sensor": rng.choice(
            (
                "full-frame",
                "APS-C",
                "Micro Four Thirds",
                "1-inch",
                "medium format",
                "stacked full-frame",
                "back-illuminated APS-C",
            )
        ),
        "megapixels": rng.choice((f"{mp} megapixels", f"{mp}MP", f"{mp} MP")),
        "iso": (
            f"ISO {iso_lo}-{_thousands(iso_hi)}",
            f"ISO {iso_lo} to {_thousands(iso_hi)}",
            f"from ISO {iso_lo} up to ISO {iso_hi}",
        )[iso_form],
        "mount": rng.choice((f"{brand} {mount_letter}-mount", f"{mount_letter} mount", f"{mount_letter}-mount")),
        "stabilisation": rng.choice(
            (
                f"5-axis in-body stabilisation rated at {stops} stops",
                "sensor-shift stabilisation",
                "lens-based optical stabilisation only",
                "digital stabilisation for video only",
                f"in-body image stabilisation worth {stops} stops",
            )
        ),
        "video": rng.choice(
            ("4K at 60p", "4K at 30p", "6K at 30p", "8K at 24p", "Full HD at 120p", "4K at 120p", "5.7K at 30p")
        ),
        "battery": f"{rng.randrange(250, 1900, 10)} shots",
        "weight": rng.choice((f"{rng.randrange(280, 1400, 5)} g", f"{rng.randrange(280, 1400, 5)} grams")),
        "sealing": rng.choice(
            (
                "weather-sealed",
                "dust- and splash-resistant",
                "not weather sealed",
                "fully sealed against dust and moisture",
                "sealed at every button and dial",
            )
        ),
        "price": rng.choice((f"${rng.randrange(399, 6999, 100):,}", f"${rng.randrange(399, 6999, 100) - 0.01:,.2f}")),
        "year": str(rng.randrange(2012, 2026)),
    }


def render_page(
    rng: random.Random, title: str, model: str, values: dict[str, str], present: list[str]
) -> tuple[str, dict[str, tuple[str, int]]]:
    """Page text and, per present attribute, (answer text, exact character start)."""
    parts: list[tuple[str, str | None]] = []  # (sentence, attribute) in page order
    for attr in present:
        parts.append((attr, attr))
    for _ in range(1 + (rng.random() < 0.1)):
        parts.append(("distractor", None))
    if rng.random() < 0.15:
        parts.append(("filler", None))
    rng.shuffle(parts)
    intro = rng.choice(
        (
            f"The {title} is a {{kind}} camera.",
            f"Meet the {title}, a {{kind}} camera.",
            f"{title}: a {{kind}} camera for enthusiasts.",
        )
    )
    text = intro.format(
        kind=rng.choice(("mirrorless", "compact", "mirrorless hybrid", "travel", "vlogging", "professional"))
    )
    spans: dict[str, tuple[str, int]] = {}
    for kind, attr in parts:
        if attr is not None:
            ref = rng.choice((model, title, "camera"))
            template = rng.choice(STATEMENTS[attr])
            before, after = template.split("{v}")
            fill = {"ref": ref, "ref_cap": f"The {ref}" if ref != title else title}
            before, after = before.format(**fill), after.format(**fill)
            sentence_start = len(text) + 1
            text += " " + before
            spans[attr] = (values[attr], sentence_start + len(before))
            text += values[attr] + after
        elif kind == "distractor":
            digits = {f"d{i}": rng.randint(1, 9) for i in range(1, 5)}
            text += " " + rng.choice(DISTRACTORS).format(
                n2=rng.randint(10, 99), n3=rng.randint(100, 999), n4=rng.randint(1000, 9999), **digits
            )
        else:
            text += " " + rng.choice(FILLERS)
    return text, spans


def make_question(rng: random.Random, attr: str, title: str, model: str, logged: bool) -> str:
    name = rng.choice((title, title, model))
    question = rng.choice(QUESTIONS[attr]).format(name=name)
    if logged and rng.random() < 0.3:  # shoppers type lower-case and skip the question mark
        question = question.lower().rstrip("?")
    return question


def _new_product(rng: random.Random, used: set[str]) -> tuple[str, str]:
    while True:
        brand = rng.choice(BRANDS)
        model = f"{rng.choice(PREFIXES)}-{rng.randint(1, 9)}{rng.randint(0, 99):02d}{rng.choice(SUFFIXES)}"
        title = f"{brand} {model}"
        if title not in used:
            used.add(title)
            return title, model


def make_split(
    rng: random.Random, split: str, n_questions: int, sizes: DomainSizes, used: set[str], logged: bool = False
) -> tuple[list[dict], list[dict]]:
    """(pairs with answers, the split's product pages) for one split."""
    pairs: list[dict] = []
    pages: list[dict] = []
    while len(pairs) < n_questions:
        title, model = _new_product(rng, used)
        values = attribute_values(rng, title.split()[0])
        present = rng.sample(ATTRIBUTES, rng.randint(3, 5))
        text, spans = render_page(rng, title, model, values, present)
        page_id = f"{split}-p{len(pages):05d}"
        pages.append({"id": page_id, "title": title, "text": text})
        absent = [a for a in ATTRIBUTES if a not in present]
        asked: set[str] = set()
        for _ in range(min(sizes.per_page, n_questions - len(pairs))):
            unanswerable = rng.random() < sizes.unanswerable
            first, second = (absent, present) if unanswerable else (present, absent)
            pool = [a for a in first if a not in asked] or [a for a in second if a not in asked]
            attr = rng.choice(pool)
            asked.add(attr)
            answers = (
                {"text": [spans[attr][0]], "answer_start": [spans[attr][1]]}
                if attr in spans
                else {"text": [], "answer_start": []}
            )
            pairs.append(
                {
                    "id": f"{split}-q{len(pairs):06d}",
                    "question": make_question(rng, attr, title, model, logged),
                    "context": text,
                    "title": title,
                    "doc_id": page_id,
                    "answers": answers,
                }
            )
    return pairs, pages


def generate_domain(seed: int = 0, sizes: DomainSizes = DomainSizes()) -> dict[str, list[dict]]:
    """Splits `teacher`, `logged`, `student`, `test`, `dev` (pairs) and `documents` (the logged split's pages)."""
    rng = random.Random(seed)
    used: set[str] = set()
    teacher, _ = make_split(rng, "teacher", sizes.teacher, sizes, used)
    logged, documents = make_split(rng, "logged", sizes.logged, sizes, used, logged=True)
    student, _ = make_split(rng, "student", sizes.student, sizes, used)
    test, _ = make_split(rng, "test", sizes.test, sizes, used)
    # The student pool is shuffled so that its first n rows (the n-label subsets) span many pages.
    rng.shuffle(student)
    # Dev last, so that adding it left every other split as it was; its pages are its own, as test's are.
    dev, _ = make_split(rng, "dev", sizes.dev, sizes, used)
    return {
        "teacher": teacher,
        "logged": logged,
        "documents": documents,
        "student": student,
        "test": test,
        "dev": dev,
    }


def _jsonl(rows: list[dict]) -> bytes:
    return jsonl_bytes(rows)


def write_domain(domain: dict[str, list[dict]], out: str) -> dict[str, str]:
    """Write every split under `out` (a folder or s3:// prefix); returns name -> URI.

    teacher.jsonl, student.jsonl, test.jsonl, dev.jsonl: pairs with answers; questions.jsonl: the logged
    questions (`id`, `question`) only; documents.jsonl: product pages (`id`, `title`, `text`);
    logged-gold.jsonl: the logged questions' true pages and answers (never used for training).
    """
    files = {
        "teacher": domain["teacher"],
        "student": domain["student"],
        "test": domain["test"],
        "dev": domain["dev"],
        "questions": [{"id": p["id"], "question": p["question"]} for p in domain["logged"]],
        "documents": domain["documents"],
        "logged-gold": domain["logged"],
    }
    uris = {}
    for name, rows in files.items():
        uris[name] = storage.join(out, f"{name}.jsonl")
        storage.write_bytes(uris[name], _jsonl(rows))
    return uris
