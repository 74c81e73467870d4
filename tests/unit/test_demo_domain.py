import json

import pytest

from qadist.demo.camera_text import CAMERA
from qadist.demo.domain import DomainSizes, generate_domain, write_domain
from qadist.demo.shops_text import OTHER_SHOPS
from qadist.squad.io import read_pairs, validate_pair

SIZES = DomainSizes(teacher=300, logged=600, student=120, test=200, dev=200, teacher_dev=60, teacher_test=90)
PAIR_SPLITS = ("teacher", "teacher-dev", "teacher-test", "logged", "student", "test", "dev")
STORE_SPLITS = ("logged", "student", "test", "dev")
SHOP_SPLITS = ("teacher", "teacher-dev", "teacher-test")


@pytest.fixture(scope="module")
def domain():
    return generate_domain(seed=7, sizes=SIZES)


def test_same_seed_same_domain_other_seed_differs(domain):
    assert generate_domain(seed=7, sizes=SIZES) == domain
    assert generate_domain(seed=8, sizes=SIZES)["test"] != domain["test"]


def test_split_sizes(domain):
    assert [len(domain[s]) for s in PAIR_SPLITS] == [300, 60, 90, 600, 120, 200, 200]
    assert len(domain["documents"]) == len({p["doc_id"] for p in domain["logged"]})


def test_answer_start_is_exact_and_pairs_validate(domain):
    answered = 0
    for split in PAIR_SPLITS:
        for pair in domain[split]:
            clean, reason = validate_pair(pair)
            assert reason is None, (pair["id"], reason)
            for text, start in zip(pair["answers"]["text"], pair["answers"]["answer_start"]):
                assert pair["context"][start : start + len(text)] == text
                answered += 1
    assert answered > 0.6 * sum(len(domain[s]) for s in PAIR_SPLITS)


def test_unanswerable_share_is_about_thirty_percent(domain):
    for split in PAIR_SPLITS:
        n = len(domain[split])
        share = sum(not p["answers"]["text"] for p in domain[split]) / n
        assert abs(share - 0.3) <= 3 * (0.3 * 0.7 / n) ** 0.5, (split, share)  # within 3 binomial sds


def _shop_and_model(title: str):
    """The catalogue a product comes from (brands are not shared between shops) and its model name."""
    for shop in (CAMERA, *OTHER_SHOPS):
        for brand in shop.brands:
            if title.startswith(brand + " "):
                return shop, title[len(brand) + 1 :]
    raise AssertionError(f"no shop sells {title!r}")


def _asked_attribute(question: str, title: str) -> str:
    shop, model = _shop_and_model(title)
    for attr, templates in shop.questions.items():
        for t in templates:
            if question in {t.format(name=n) for n in (title, model)} | {
                t.format(name=n).lower().rstrip("?") for n in (title, model)
            }:
                return attr
    raise AssertionError(f"no template makes {question!r}")


def _states(page: str, attr: str, title: str) -> bool:
    shop, model = _shop_and_model(title)
    for t in shop.statements[attr]:
        before = t.split("{v}")[0]
        for ref in (model, title, shop.name):
            if before.format(ref=ref, ref_cap=f"The {ref}" if ref != title else title) in page:
                return True
    return False


def test_unanswerable_means_the_asked_attribute_is_absent_from_the_page(domain):
    for pair in domain["teacher"] + domain["logged"]:
        attr = _asked_attribute(pair["question"], pair["title"])
        assert _states(pair["context"], attr, pair["title"]) == bool(pair["answers"]["text"]), pair


def test_splits_are_disjoint_in_ids_and_products(domain):
    ids = [p["id"] for s in PAIR_SPLITS for p in domain[s]]
    assert len(ids) == len(set(ids))
    products = [{p["title"] for p in domain[s]} for s in PAIR_SPLITS]
    for i in range(len(products)):
        for j in range(i + 1, len(products)):
            assert not products[i] & products[j], (PAIR_SPLITS[i], PAIR_SPLITS[j])


def test_questions_name_their_product_so_pairs_can_match(domain):
    for pair in domain["logged"]:
        model = pair["title"].split(" ", 1)[1]
        assert model.lower() in pair["question"].lower()


def test_write_domain_files(domain, tmp_path):
    uris = write_domain(domain, str(tmp_path))
    assert set(uris) == {*SHOP_SPLITS, "student", "test", "dev", "questions", "documents", "logged-gold"}
    questions = [json.loads(line) for line in open(uris["questions"])]
    assert len(questions) == 600 and all(set(q) == {"id", "question"} for q in questions)
    documents = [json.loads(line) for line in open(uris["documents"])]
    assert all(set(d) == {"id", "title", "text"} for d in documents)
    test_pairs, rejects = read_pairs(uris["test"])
    assert len(test_pairs) == 200 and not rejects


def test_the_dev_split_leaves_every_other_split_as_it_was(domain):
    """Dev is generated last: a domain without it (dev=0) has the same teacher, logged, student and test."""
    from dataclasses import replace

    without = generate_domain(seed=7, sizes=replace(SIZES, dev=0))
    assert without["dev"] == []
    assert all(without[s] == domain[s] for s in (*SHOP_SPLITS, "logged", "student", "test", "documents"))


def test_the_teachers_learn_from_other_shops_and_the_store_is_all_cameras(domain):
    """The shift the demo is about: no teacher-split page is a camera's, every store page is one."""
    for split in SHOP_SPLITS:
        assert {_shop_and_model(p["title"])[0].name for p in domain[split]} == {s.name for s in OTHER_SHOPS}
    for split in STORE_SPLITS:
        assert {_shop_and_model(p["title"])[0].name for p in domain[split]} == {"camera"}
