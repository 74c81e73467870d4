"""Output folders: the names every stage's output shares, and the one way a run claims a folder.

A run claims its `--out` by writing a small JSON file of the settings that shape the output (a
conditional put: two runs racing for an empty folder cannot both claim it). Running again with
the same settings continues (or finds the work done); other settings are refused with the keys
that changed, so one output never mixes two runs. `overwrite` deletes the named parts first.
Every claim file is named by `claim_file` (`_qadist_<stage>.json`); an output claimed under an
older name (`LEGACY_CLAIMS`) is still read there, so it is neither refused nor claimed again.
Outputs that grow (pairs, label) commit generations; a label output's readers see their `union`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow.fs as pafs

from qadist import storage
from qadist.errors import UserError

MANIFEST = "_manifest.json"  # written last: its presence means the output is complete
GENERATION_NAME = re.compile(r"_manifest(?:-(\d{6}))?\.json$")


def manifest_uri(out: str) -> str:
    return storage.join(out, MANIFEST)


# ---- generations: outputs that grow (pairs, label) --------------------------------------------------
# Generation 1 is `_manifest.json` (what a single run has always written); generation n > 1 is
# `_manifest-<n:06d>.json`. Each is written once with a conditional put, so a number is taken by
# exactly one run; a run adding to an output commits the next number.


def generation_uri(out: str, number: int) -> str:
    return manifest_uri(out) if number == 1 else storage.join(out, f"_manifest-{number:06d}.json")


def generation_number(name: str) -> int:
    match = GENERATION_NAME.fullmatch(name)
    assert match is not None, name
    return int(match.group(1) or 1)


def committed_generations(out: str) -> list[dict[str, Any]]:
    """Every committed generation's manifest, in order (1, 2, ...): numbers are taken one after another,
    so a gap (an --overwrite killed half way, a hand-deleted file) is an error, not a shorter table."""
    found = []
    while storage.exists(uri := generation_uri(out, len(found) + 1)):
        manifest = json.loads(storage.read_text(uri))
        manifest.setdefault("generation", len(found) + 1)
        found.append(manifest)
    stray = [u for u in generation_files(out) if generation_number(storage.basename(u)) > len(found)]
    if stray:
        raise UserError(
            f"{out}: generation files are not contiguous (1..{len(found)}, then {storage.basename(stray[0])}): an "
            "--overwrite stopped half way or a manifest was removed by hand; re-run with --overwrite"
        )
    return found


def delete_generations(out: str) -> None:
    """Remove every generation's manifest, the newest first and generation 1 last, so an interruption
    leaves a shorter contiguous table, never one with a gap."""
    for uri in sorted(generation_files(out), key=lambda u: -generation_number(storage.basename(u))):
        storage.delete(uri)


def committed_inputs(generations: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Input file URI -> (its size when labelled, the generation that labelled it)."""
    return {i["uri"]: (i["size"], g.get("generation", 1)) for g in generations for i in g.get("inputs") or []}


def generation_files(out: str) -> list[str]:
    """The generation manifests present under `out` (for --overwrite, which removes them all)."""
    fs, path = storage.resolve(out)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))  # this folder only
    names = [i.path.rsplit("/", 1)[-1] for i in infos if i.type == pafs.FileType.File]
    return [storage.join(out, n) for n in sorted(names) if GENERATION_NAME.fullmatch(n)]


# ---- a label output's generations, as readers see them ---------------------------------------------
# Every committed generation together (`union`), or one (`select_generation`): what `qadist.shards`
# reads and what `qadist label` answers with.

SUMMED = ("pairs_in", "pairs_labeled", "pairs_rejected", "windows")  # a label generation's counts


def union(generations: list[dict[str, Any]]) -> dict[str, Any]:
    """What readers see: generation 1's header, every generation's shards and rejects, summed counts,
    and one entry per generation (its number, inputs, counts, run summary)."""
    if len(generations) == 1:
        return {**generations[0], "generations": [summary_of(generations[0])]}
    first, last = generations[0], generations[-1]
    return {
        **first,
        "config": last["config"],
        "counts": {k: sum(g["counts"][k] for g in generations) for k in SUMMED},
        "shards": [s for g in generations for s in g["shards"]],
        "rejects": [r for g in generations for r in g.get("rejects") or []],
        "inputs": [i for g in generations for i in g.get("inputs") or []],
        "run": last["run"],
        "generation": last["generation"],
        "generations": [summary_of(g) for g in generations],
    }


def summary_of(generation: dict[str, Any]) -> dict[str, Any]:
    return {
        "generation": generation.get("generation", 1),
        "inputs": generation.get("inputs"),
        "counts": generation["counts"],
        "teacher_seconds": (generation.get("run") or {}).get("teacher_seconds"),
        "committed_at": generation.get("committed_at"),
    }


def select_generation(generations: list[dict[str, Any]], number: int | None, out: str) -> dict[str, Any]:
    """The union (number None) or generation `number` alone, as a reader's manifest."""
    if not generations:
        raise UserError(f"{out}: no {MANIFEST}; the label run has not finished (re-run `qadist label` to resume it)")
    if number is None:
        return union(generations)
    if not 1 <= number <= len(generations):
        raise UserError(
            f"{out}: has generations 1..{len(generations)}, not {number}; pass --generation between them, or omit it"
        )
    return {**generations[number - 1], "generations": [summary_of(generations[number - 1])]}


def read_json(uri: str) -> dict[str, Any]:
    return json.loads(storage.read_text(uri))


def claim_file(stage: str, what: str | None = None) -> str:
    """The name of the file that claims a stage's output: `_qadist_<stage>.json`, or
    `_qadist_<stage>_<what>.json` for a stage that claims more than one thing."""
    return f"_qadist_{stage}{f'_{what}' if what else ''}.json"


# Claim files written before `claim_file` named them all, by the name they have now. An output
# claimed under one of these keeps it (older qadist versions read it there too).
LEGACY_CLAIMS: dict[str, tuple[str, ...]] = {
    claim_file("label"): ("_fingerprint.json",),
    claim_file("pairs"): ("_qadist_pairs_run.json",),
    claim_file("pretrain"): ("_qadist_pretrain_run.json",),
    claim_file("distill"): ("_qadist_distill_run.json",),
    claim_file("finetune"): ("_qadist_finetune_run.json",),
    claim_file("export"): ("_export.json",),
    claim_file("demo"): ("_demo.json",),
}


def claim_uri(out: str, marker: str) -> str:
    """Where `out`'s claim `marker` is: under its name, or under an older name (`LEGACY_CLAIMS`)
    when only that one exists."""
    uri = storage.join(out, marker)
    if storage.exists(uri):
        return uri
    older = (storage.join(out, name) for name in LEGACY_CLAIMS.get(marker, ()))
    return next((u for u in older if storage.exists(u)), uri)


def claim(
    out: str,
    marker: str,
    settings: dict[str, Any],
    *,
    what: str,
    fix: str,
    overwrite: bool = False,
    parts: tuple[str, ...] = (),
    foreign: tuple[str, ...] | None = None,
) -> bool:
    """Claim `out` for a run with `settings`; True when an earlier run with the same settings holds it.

    `marker` is the claim's file name inside `out` (`claim_file`; an older name of it is read too).
    `overwrite` first deletes `parts` and the marker (under every name).
    `foreign` names parts that, present without a claim, mean another tool (or an older qadist)
    wrote the folder: refused; None means any file at all counts.
    """
    if overwrite:
        for part in (*parts, marker, *LEGACY_CLAIMS.get(marker, ())):
            storage.delete(storage.join(out, part))
    uri = claim_uri(out, marker)
    mine = json.loads(json.dumps(settings, sort_keys=True))
    if storage.exists(uri):
        held = read_json(uri)
        changed = sorted(k for k in set(held) | set(mine) if held.get(k) != mine.get(k))
        # The settings' own hash changes with any of them: name it only when nothing else explains it.
        changed = [k for k in changed if k != "fingerprint"] or changed
        if changed:
            raise UserError(f"{out}: holds {what} made with other settings (changed: {', '.join(changed)}); {fix}")
        return True
    taken = (
        [p for p in foreign if storage.exists(storage.join(out, p))]
        if foreign is not None
        else storage.list_files(out)
        if storage.exists(out)
        else []
    )
    if taken:
        raise UserError(f"{out}: holds files that no qadist run claimed (no {marker}); {fix}")
    text = json.dumps(mine, indent=2, sort_keys=True).encode("utf-8")
    if not storage.write_if_absent(storage.join(out, marker), text):
        return claim(out, marker, settings, what=what, fix=fix, foreign=())  # a concurrent run claimed it first
    return False
