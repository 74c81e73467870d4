"""`qadist.outputs.claim`: one claim file name per stage (`claim_file`), and outputs claimed under
an older name are still theirs."""

from __future__ import annotations

import json

import pytest

from qadist.errors import UserError
from qadist.outputs import LEGACY_CLAIMS, claim, claim_file


def test_one_scheme():
    assert claim_file("label") == "_qadist_label.json"
    assert claim_file("distill", "run") == "_qadist_distill_run.json"
    assert all(new.startswith("_qadist_") and new.endswith(".json") for new in LEGACY_CLAIMS)


def claims(out, settings, **kw):
    kw = {"what": "soft labels", "fix": "use another --out", "foreign": ("shards",), **kw}
    return claim(str(out), claim_file("label"), settings, **kw)


def test_a_new_output_is_claimed_under_the_new_name(tmp_path):
    assert claims(tmp_path / "out", {"a": 1}) is False
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_qadist_label.json"]
    assert claims(tmp_path / "out", {"a": 1}) is True


@pytest.mark.parametrize(("new", "old"), [(new, old) for new, olds in LEGACY_CLAIMS.items() for old in olds])
def test_an_output_claimed_under_an_old_name_is_still_its_own(tmp_path, new, old):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.parquet").write_bytes(b"x")
    (tmp_path / old).write_text(json.dumps({"a": 1}))
    kw = {"what": "it", "fix": "use another --out", "foreign": ("shards",)}
    assert claim(str(tmp_path), new, {"a": 1}, **kw) is True  # the same run: continues, not foreign
    assert not (tmp_path / new).exists() and (tmp_path / old).exists()  # left where an older qadist reads it
    with pytest.raises(UserError, match=r"other settings \(changed: a\)"):
        claim(str(tmp_path), new, {"a": 2}, **kw)
    assert claim(str(tmp_path), new, {"a": 2}, overwrite=True, parts=("shards",), **kw) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [new]  # overwrite removes the old name too
