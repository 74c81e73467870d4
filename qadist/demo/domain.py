"""The demo's generated domains: the camera store, and the other shops whose labels train the teachers.

Deterministic for a seed. A product page is a few sentences of varied prose about some of a
product's attributes, mixed with distracting numbers and filler, in its shop's wording
(`qadist.demo.catalogue.Catalogue`: `camera_text.CAMERA`, `shops_text.OTHER_SHOPS`). A question asks
about one attribute; it is unanswerable from its page when the page never states that attribute
(about `unanswerable` of them). Splits use disjoint products and ids:

- `teacher`: labelled questions from the other shops (headphones, laptops, e-bikes), never the
  camera store's: what the teachers learn extractive QA from (the team's teacher was trained on
  general data elsewhere); `teacher-dev`, `teacher-test`: held-out questions of those shops (where
  the teachers' settings are chosen, and their in-domain F1);
- `logged`: the camera store's questions without documents (`questions.jsonl`), to be matched
  against its product pages (`documents.jsonl`) by `qadist pairs`; their gold answers stay in
  `logged-gold.jsonl` for diagnostics only;
- `student`: the store's few gold labels; its first n rows are the n-label subsets;
- `test`, `dev`: the store's labelled questions for evaluation and for choosing settings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from qadist import storage
from qadist.demo.camera_text import CAMERA
from qadist.demo.catalogue import Catalogue
from qadist.demo.shops_text import OTHER_SHOPS
from qadist.rows import jsonl_bytes


@dataclass(frozen=True)
class DomainSizes:
    """Questions per split (pages are made as needed: `per_page` questions each)."""

    teacher: int = 2000  # the other shops' labelled questions (the teachers' training set)
    logged: int = 6000
    student: int = 500
    test: int = 500
    dev: int = 200  # disjoint from test: where the demo's training settings are chosen (benchmarks/demo_tuning.py)
    teacher_dev: int = 200  # the other shops' held-out questions: the teachers' settings are chosen here
    teacher_test: int = 400  # ... and their in-domain F1 measured here
    per_page: int = 4
    unanswerable: float = 0.3


def render_page(
    rng: random.Random, shop: Catalogue, title: str, model: str, values: dict[str, str], present: list[str]
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
    text = rng.choice(shop.intros).format(title=title, kind=rng.choice(shop.kinds))
    spans: dict[str, tuple[str, int]] = {}
    for kind, attr in parts:
        if attr is not None:
            ref = rng.choice((model, title, shop.name))
            template = rng.choice(shop.statements[attr])
            before, after = template.split("{v}")
            fill = {"ref": ref, "ref_cap": f"The {ref}" if ref != title else title}
            before, after = before.format(**fill), after.format(**fill)
            sentence_start = len(text) + 1
            text += " " + before
            spans[attr] = (values[attr], sentence_start + len(before))
            text += values[attr] + after
        elif kind == "distractor":
            digits = {f"d{i}": rng.randint(1, 9) for i in range(1, 5)}
            text += " " + rng.choice(shop.distractors).format(
                n2=rng.randint(10, 99), n3=rng.randint(100, 999), n4=rng.randint(1000, 9999), **digits
            )
        else:
            text += " " + rng.choice(shop.fillers)
    return text, spans


def make_question(rng: random.Random, shop: Catalogue, attr: str, title: str, model: str, logged: bool) -> str:
    name = rng.choice((title, title, model))
    question = rng.choice(shop.questions[attr]).format(name=name)
    if logged and rng.random() < 0.3:  # shoppers type lower-case and skip the question mark
        question = question.lower().rstrip("?")
    return question


def _new_product(rng: random.Random, shop: Catalogue, used: set[str]) -> tuple[str, str]:
    while True:
        brand = rng.choice(shop.brands)
        model = f"{rng.choice(shop.prefixes)}-{rng.randint(1, 9)}{rng.randint(0, 99):02d}{rng.choice(shop.suffixes)}"
        title = f"{brand} {model}"
        if title not in used:
            used.add(title)
            return title, model


def make_split(
    rng: random.Random,
    split: str,
    n_questions: int,
    sizes: DomainSizes,
    used: set[str],
    shops: tuple[Catalogue, ...] = (CAMERA,),
    logged: bool = False,
) -> tuple[list[dict], list[dict]]:
    """(pairs with answers, the split's product pages) for one split; each page from one of `shops`."""
    pairs: list[dict] = []
    pages: list[dict] = []
    while len(pairs) < n_questions:
        shop = shops[len(pages) % len(shops)]
        title, model = _new_product(rng, shop, used)
        values = shop.values(rng, title.split()[0])
        present = rng.sample(shop.attributes, rng.randint(3, min(5, len(shop.attributes) - 1)))
        text, spans = render_page(rng, shop, title, model, values, present)
        page_id = f"{split}-p{len(pages):05d}"
        pages.append({"id": page_id, "title": title, "text": text})
        absent = [a for a in shop.attributes if a not in present]
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
                    "question": make_question(rng, shop, attr, title, model, logged),
                    "context": text,
                    "title": title,
                    "doc_id": page_id,
                    "answers": answers,
                }
            )
    return pairs, pages


def generate_domain(seed: int = 0, sizes: DomainSizes = DomainSizes()) -> dict[str, list[dict]]:
    """The other shops' splits `teacher`, `teacher-dev`, `teacher-test`; the camera store's `logged`,
    `student`, `test`, `dev` (pairs) and `documents` (the logged split's pages)."""
    rng = random.Random(seed)
    used: set[str] = set()
    teacher, _ = make_split(rng, "teacher", sizes.teacher, sizes, used, OTHER_SHOPS)
    teacher_dev, _ = make_split(rng, "teacher-dev", sizes.teacher_dev, sizes, used, OTHER_SHOPS)
    teacher_test, _ = make_split(rng, "teacher-test", sizes.teacher_test, sizes, used, OTHER_SHOPS)
    logged, documents = make_split(rng, "logged", sizes.logged, sizes, used, logged=True)
    student, _ = make_split(rng, "student", sizes.student, sizes, used)
    test, _ = make_split(rng, "test", sizes.test, sizes, used)
    # The student pool is shuffled so that its first n rows (the n-label subsets) span many pages.
    rng.shuffle(student)
    dev, _ = make_split(rng, "dev", sizes.dev, sizes, used)
    return {
        "teacher": teacher,
        "teacher-dev": teacher_dev,
        "teacher-test": teacher_test,
        "logged": logged,
        "documents": documents,
        "student": student,
        "test": test,
        "dev": dev,
    }


def write_domain(domain: dict[str, list[dict]], out: str) -> dict[str, str]:
    """Write every split under `out` (a folder or s3:// prefix); returns name -> URI.

    teacher.jsonl, teacher-dev.jsonl, teacher-test.jsonl (the other shops), student.jsonl, test.jsonl,
    dev.jsonl: pairs with answers; questions.jsonl: the logged questions (`id`, `question`) only;
    documents.jsonl: the camera store's product pages (`id`, `title`, `text`); logged-gold.jsonl: the
    logged questions' true pages and answers (never used for training).
    """
    files = {
        **{k: domain[k] for k in ("teacher", "teacher-dev", "teacher-test", "student", "test", "dev")},
        "questions": [{"id": p["id"], "question": p["question"]} for p in domain["logged"]],
        "documents": domain["documents"],
        "logged-gold": domain["logged"],
    }
    uris = {}
    for name, rows in files.items():
        uris[name] = storage.join(out, f"{name}.jsonl")
        storage.write_bytes(uris[name], jsonl_bytes(rows))
    return uris
