"""Length-grouped micro-batches: every window exactly once, as many micro-batches as before, less padding."""

from __future__ import annotations

import numpy as np
import pytest

from qadist.train.batches import length_grouped


def chunk_of(lengths: list[int]) -> dict:
    ids = np.empty(len(lengths), dtype=object)
    for i, n in enumerate(lengths):
        ids[i] = np.full(n, i, dtype=np.int32)
    return {
        "input_ids": ids,
        "start_position": np.arange(len(lengths)),
        "labels_list": [f"row{i}" for i in range(len(lengths))],
    }


def padded_tokens(batches: list) -> int:
    return sum(len(b) * max(len(x) for x in b) for b in batches)


@pytest.mark.parametrize("rows,batch", [(1, 4), (7, 8), (64, 8), (37, 8), (100, 16)])
def test_every_row_once_and_the_same_number_of_micro_batches(rows, batch):
    rng = np.random.default_rng(rows)
    chunk = chunk_of(rng.integers(5, 200, rows).tolist())
    mbs = length_grouped(chunk, batch, np.random.default_rng(0))
    assert len(mbs) == -(-rows // batch)
    assert sorted(int(x) for m in mbs for x in m["start_position"]) == list(range(rows))
    assert sum(len(m["start_position"]) == batch for m in mbs) >= len(mbs) - 1  # only one may be short
    for m in mbs:  # the columns of a row stay together
        for ids, pos, tag in zip(m["input_ids"], m["start_position"], m["labels_list"]):
            assert int(ids[0]) == int(pos) and tag == f"row{pos}"


def test_same_seed_same_order_other_seed_other_order():
    chunk = chunk_of(list(range(10, 138)))

    def order(seed):
        return [m["start_position"].tolist() for m in length_grouped(chunk, 8, np.random.default_rng([seed, 0]))]

    assert order(1) == order(1)
    assert order(1) != order(2)
    lengths_in_order = [
        min(len(x) for x in m["input_ids"]) for m in length_grouped(chunk, 8, np.random.default_rng([1, 0]))
    ]
    assert lengths_in_order != sorted(lengths_in_order)  # the micro-batches are not served shortest first


def test_less_padding_on_real_squad_lengths(squad_pairs):
    """Question + context lengths (characters / 4, a token estimate) of the real SQuAD sample, in stream order."""
    lengths = [min(384, (len(p["question"]) + len(p["context"])) // 4) for p in squad_pairs]
    rng = np.random.default_rng(0)
    lengths = rng.permutation(lengths)[:1024].tolist()
    chunk = chunk_of(lengths)
    plain = [chunk["input_ids"][i : i + 16] for i in range(0, len(lengths), 16)]
    grouped = [
        m["input_ids"]
        for start in range(0, len(lengths), 128)
        for m in length_grouped({k: v[start : start + 128] for k, v in chunk.items()}, 16, rng)
    ]
    real = sum(lengths)
    print(
        f"\npadded tokens per real token: stream order {padded_tokens(plain) / real:.3f}, "
        f"length groups of 8 micro-batches {padded_tokens(grouped) / real:.3f}"
    )
    assert padded_tokens(grouped) < padded_tokens(plain)
    assert padded_tokens(grouped) < 1.1 * real
