"""Storage on local folders and on S3 (moto's server): listing, atomic writes, conditional commits."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs
import pytest

from qadist import storage
from qadist.errors import UserError


def local_tree(root) -> str:
    for rel in [
        "a.jsonl",
        "b.parquet",
        "sub/c.jsonl",
        "sub/deep/d.json",
        "notes.txt",
        "_manifest.json",
        ".tmp-x-a.jsonl",
        "_staging/e.jsonl",
        ".hidden/f.jsonl",
    ]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    return str(root)


def s3_tree(bucket: str) -> str:
    for rel in [
        "a.jsonl",
        "b.parquet",
        "sub/c.jsonl",
        "sub/deep/d.json",
        "notes.txt",
        "_manifest.json",
        "_staging/e.jsonl",
    ]:
        storage.write_bytes(f"{bucket}/data/{rel}", rel.encode())
    storage.write_bytes(f"{bucket}/database.jsonl", b"outside the prefix")
    return f"{bucket}/data"


EXPECTED = ["a.jsonl", "b.parquet", "sub/c.jsonl", "sub/deep/d.json"]


def test_list_files_local_folder(tmp_path):
    root = local_tree(tmp_path)
    found = storage.list_files(root, (".json", ".jsonl", ".parquet"))
    assert found == [f"{root}/{rel}" for rel in EXPECTED]
    assert storage.list_files(root + "/", (".jsonl",)) == [f"{root}/a.jsonl", f"{root}/sub/c.jsonl"]
    assert f"{root}/notes.txt" in storage.list_files(root)
    assert storage.list_files(f"{root}/a.jsonl", (".parquet",)) == [f"{root}/a.jsonl"]  # a file is itself
    assert storage.list_files(f"file://{root}/sub", (".json",)) == [f"file://{root}/sub/deep/d.json"]


def test_list_files_s3_prefix(s3_bucket):
    prefix = s3_tree(s3_bucket)
    assert storage.list_files(prefix, (".json", ".jsonl", ".parquet")) == [f"{prefix}/{rel}" for rel in EXPECTED]
    assert storage.list_files(prefix + "/", (".jsonl",)) == [f"{prefix}/a.jsonl", f"{prefix}/sub/c.jsonl"]
    assert storage.list_files(f"{prefix}/sub/c.jsonl") == [f"{prefix}/sub/c.jsonl"]


@pytest.mark.parametrize("where", ["local", "s3-key", "s3-bucket"])
def test_list_files_missing_is_a_user_error(where, tmp_path, request):
    if where == "local":
        uri = str(tmp_path / "nope")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        uri = f"{bucket}/nope/" if where == "s3-key" else "s3://qadist-no-such-bucket/x"
    with pytest.raises(UserError, match="no such file or folder; check the path") as e:
        storage.list_files(uri)
    assert uri in str(e.value)


def test_resolve_and_uri_helpers(tmp_path):
    fs, path = storage.resolve(f"file://{tmp_path}/x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/x"
    assert storage.resolve("~/x")[1] == os.path.expanduser("~/x")
    assert storage.join("s3://b/p/", "/shards/", "a.parquet") == "s3://b/p/shards/a.parquet"
    assert storage.basename("s3://b/p/a.parquet") == "a.parquet" and storage.basename("/x/y/") == "y"
    assert storage.split_s3("s3://b/p/q") == ("b", "p/q") and storage.split_s3("s3://b") == ("b", "")


def test_s3_filesystem_honours_endpoint(s3_bucket, s3_server):
    fs, path = storage.resolve(f"{s3_bucket}/k")
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3_bucket[5:]}/k"
    storage.write_bytes(f"{s3_bucket}/k", b"v")
    with fs.open_input_stream(path) as f:  # pyarrow itself talks to the moto endpoint
        assert f.read() == b"v"
    assert storage.s3_client().meta.endpoint_url == s3_server


def test_write_read_delete_local(tmp_path):
    uri = str(tmp_path / "new" / "dir" / "f.json")
    storage.write_bytes(uri, b"one")
    assert storage.read_bytes(uri) == b"one" and storage.exists(uri)
    storage.write_bytes(uri, "twö".encode())
    assert storage.read_text(uri) == "twö"
    assert sorted(os.listdir(tmp_path / "new" / "dir")) == ["f.json"]  # no temporary files left
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.makedirs(str(tmp_path / "m" / "n"))
    storage.delete(str(tmp_path / "m"))
    assert not storage.exists(str(tmp_path / "m"))
    storage.delete(str(tmp_path / "never-there"))  # deleting nothing is not an error
    with pytest.raises(UserError, match="no such file"):
        storage.read_bytes(str(tmp_path / "nope"))


def test_write_read_delete_s3(s3_bucket):
    uri = f"{s3_bucket}/a/b.json"
    storage.write_bytes(uri, b"x" * 100_000)
    assert storage.read_bytes(uri) == b"x" * 100_000 and storage.exists(uri)
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(UserError, match="no such file"):
        storage.read_bytes(uri)


def test_write_bytes_is_atomic_for_readers(tmp_path):
    """A reader polling the file while it is rewritten sees one whole version or the other, never a mix."""
    uri = str(tmp_path / "f.bin")
    versions = [b"a" * 2_000_000, b"b" * 1_000_000]
    storage.write_bytes(uri, versions[0])
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            with open(uri, "rb") as f:
                data = f.read()
            seen.add(data if data in versions else b"torn")

    t = threading.Thread(target=reader)
    t.start()
    for i in range(40):
        storage.write_bytes(uri, versions[i % 2])
    stop.set()
    t.join()
    assert b"torn" not in seen and seen
    assert os.listdir(tmp_path) == ["f.bin"]


def test_failed_write_leaves_old_content_and_no_temp_files(tmp_path, monkeypatch):
    uri = str(tmp_path / "f.json")
    storage.write_bytes(uri, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(uri, b"new")
    with pytest.raises(TypeError):
        storage.write_if_absent(str(tmp_path / "g.json"), "not bytes")  # type: ignore[arg-type]
    monkeypatch.undo()
    assert storage.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path) == ["f.json"]


def test_write_if_absent_local(tmp_path):
    uri = str(tmp_path / "out" / "_manifest.json")
    assert storage.write_if_absent(uri, b"first") is True
    assert storage.write_if_absent(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"
    assert os.listdir(tmp_path / "out") == ["_manifest.json"]


def test_write_if_absent_s3(s3_bucket):
    """moto 5.2.5 supports the conditional PUT (If-None-Match: *) and answers 412 when the key exists."""
    uri = f"{s3_bucket}/out/_manifest.json"
    assert storage.write_if_absent(uri, b"first") is True
    assert storage.write_if_absent(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_write_if_absent_race_has_one_winner(where, tmp_path, request):
    base = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    uri = f"{base}/commit/_manifest.json"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: storage.write_if_absent(uri, f"writer {i}".encode()), range(8)))
    assert results.count(True) == 1
    assert storage.read_bytes(uri) == f"writer {results.index(True)}".encode()
    if where == "local":
        assert os.listdir(tmp_path / "commit") == ["_manifest.json"]
