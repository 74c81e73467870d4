"""The model registry on object storage (local folders and moto's S3): immutable versions, a pointer
moved by compare-and-swap (two promotions at once: exactly one wins), rollback."""

from __future__ import annotations

import threading

import pytest

from qadist.errors import UserError
from qadist.registry import ObjectRegistry, RegistryConflict


def model_folder(root, name: str) -> str:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"name": "%s"}' % name)
    (folder / "weights.bin").write_bytes(name.encode() * 10)
    return str(folder)


@pytest.fixture(params=["local", "s3"])
def registry_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "registry")
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/registry"


def test_publish_move_and_rollback(registry_uri, tmp_path):
    reg = ObjectRegistry(registry_uri)
    assert reg.current() is None and reg.versions() == []
    v1 = reg.publish(model_folder(tmp_path, "a"), {"verdict": "first"})
    assert reg.move(None, v1, "first")["version"] == 1
    v2 = reg.publish(model_folder(tmp_path, "b"), {"verdict": "better"})
    pointer = reg.move(v1, v2, "better")
    assert (pointer["version"], pointer["previous"]) == (2, [1]) and reg.versions() == [1, 2]
    from qadist import storage

    assert storage.read_text(storage.join(reg.current()["model"], "config.json")) == '{"name": "b"}'
    with pytest.raises(RegistryConflict):
        reg.move(v1, v2, "stale")  # current is 2 now, not 1
    back = reg.rollback()
    assert (back["version"], back["previous"]) == (1, [])
    with pytest.raises(UserError, match="nothing to roll back"):
        reg.rollback()
    assert reg.record(2)["verdict"] == "better"  # the version stays, immutable


def test_two_promotions_at_once_exactly_one_wins(registry_uri, tmp_path):
    reg = ObjectRegistry(registry_uri)
    base = reg.publish(model_folder(tmp_path, "base"), {})
    reg.move(None, base, "first")
    candidates = [reg.publish(model_folder(tmp_path, f"c{i}"), {}) for i in range(4)]
    assert len(set(candidates)) == 4
    barrier, outcome = threading.Barrier(4), []

    def promote(version):
        barrier.wait()
        try:
            ObjectRegistry(registry_uri).move(base, version, "race")
            outcome.append(("won", version))
        except RegistryConflict:
            outcome.append(("lost", version))

    threads = [threading.Thread(target=promote, args=(v,)) for v in candidates]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [v for what, v in outcome if what == "won"]
    assert len(winners) == 1 and reg.current()["version"] == winners[0]


def test_version_numbers_are_claimed_once(tmp_path):
    reg = ObjectRegistry(str(tmp_path / "r"))
    folder = model_folder(tmp_path, "m")
    with __import__("concurrent.futures").futures.ThreadPoolExecutor(4) as pool:
        numbers = list(pool.map(lambda _: reg.publish(folder, {}), range(6)))
    assert sorted(numbers) == [1, 2, 3, 4, 5, 6]
