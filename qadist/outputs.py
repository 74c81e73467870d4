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

import contextlib
import json
import re
from typing import Any

from qadist import storage
from qadist.errors import UserError

MANIFEST = "_manifest.json"  # written last: its presence means the output is complete
GENERATION_NAME = re.compile(r"_manifest(?:-(\d{6}))?\.json$")
SNAPSHOT_NAME = re.compile(r"_snapshot-(\d{6})\.json$")  # a label table's snapshots (`qadist.outputs.read_view`)
LATEST = "_snapshot_latest.json"  # a hint: the newest snapshot's number when it was written (`newest_snapshot`)
DETAILS = ("shards", "rejects", "generations", "kept")  # per-generation lists: a snapshot's details file


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


def generation_numbers(out: str, names: list[str] | None = None, first: int = 1) -> list[int]:
    """The committed generation numbers of `out` from `first` on, from one listing of its folder (`names`:
    that listing, when the caller has it): first..n, since numbers are taken one after another; a gap
    (an --overwrite killed half way, a hand-deleted file) is an error, not a shorter table."""
    if names is None:
        names = [n for n, _, _ in storage.list_folder(out)]
    numbers = sorted(g for n in names if GENERATION_NAME.fullmatch(n) and (g := generation_number(n)) >= first)
    if numbers != list(range(first, first + len(numbers))):
        held = next(i for i, n in enumerate(numbers) if n != first + i)
        raise UserError(
            f"{out}: generation files are not contiguous ({first}..{first + held - 1}, then "
            f"{storage.basename(generation_uri(out, numbers[held]))}): an --overwrite stopped half way or a manifest "
            "was removed by hand; re-run with --overwrite"
        )
    return numbers


def names_from(out: str, number: int) -> list[str]:
    """The names of generation `number`'s manifest and every later one (and generation 1's): on S3 a
    listing that starts there (the history before `number` is not listed); in a local folder, one
    look per number from `number` on until one is missing (a folder cannot be listed from a name on,
    and numbers are taken one after another)."""
    if storage.is_s3(out):
        return storage.list_names(out, "_manifest", f"_manifest-{number - 1:06d}.json" if number > 1 else "")
    return [storage.basename(generation_uri(out, n)) for n in probe(lambda n: generation_uri(out, n), max(number, 1))]


def probe(uri_of: Any, first: int) -> list[int]:
    """The numbers first, first + 1, ... whose file exists, up to the first that does not (local folders)."""
    found = []
    while storage.exists(uri_of(first + len(found))):
        found.append(first + len(found))
    return found


def read_generation(out: str, number: int) -> dict[str, Any]:
    manifest = json.loads(storage.read_text(generation_uri(out, number)))
    manifest.setdefault("generation", number)
    return manifest


def committed_generations(out: str, after: int = 0, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Every committed generation's manifest after number `after`, in order: one listing finds them
    (no probe per number), then one read each. Readers of a label table read its snapshot instead of
    the whole history (`qadist.outputs.read_view`)."""
    return [read_generation(out, n) for n in generation_numbers(out, names, after + 1)]


def delete_generations(out: str) -> None:
    """Remove every generation's manifest, the newest first and generation 1 last, so an interruption
    leaves a shorter contiguous table, never one with a gap. A label table's snapshots go first: one
    must never outlive a generation it covers (a new generation of that number would be hidden)."""
    storage.delete(storage.join(out, LATEST))
    for name, _, _ in storage.list_folder(out):
        if SNAPSHOT_NAME.fullmatch(name):
            storage.delete(storage.join(out, name))
    for uri in sorted(generation_files(out), key=lambda u: -generation_number(storage.basename(u))):
        storage.delete(uri)


def committed_inputs(generations: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Input file URI -> (its size when labelled, the generation that labelled it)."""
    return {i["uri"]: (i["size"], g.get("generation", 1)) for g in generations for i in g.get("inputs") or []}


def generation_files(out: str) -> list[str]:
    """The generation manifests present under `out` (for --overwrite, which removes them all)."""
    return [storage.join(out, n) for n, _, _ in storage.list_folder(out) if GENERATION_NAME.fullmatch(n)]


# ---- a label output's generations, as readers see them ---------------------------------------------
# Every committed generation together (`union`, built one generation at a time by `extend`, so a
# snapshot of generations 1..b extended by b+1..n is the same view), or one (`select_generation`):
# what `qadist.shards` reads and what `qadist label` answers with. Snapshots: `read_view`, `qadist.label.generations`.

SUMMED = ("pairs_in", "pairs_labeled", "pairs_rejected", "windows")  # a label generation's counts


def id_source(generation: dict[str, Any]) -> dict[str, Any]:
    """Where the id hashes of a generation's pairs are: its summary file (`ids`), or, for a generation
    committed before summaries existed, its shards' `id` column."""
    if generation.get("ids"):
        return {"path": generation["ids"]["path"]}
    return {"shards": [s["path"] for s in generation["shards"] if s.get("pairs", s["rows"]) > 0]}


def tagged(generation: dict[str, Any]) -> list[dict[str, Any]]:
    """A generation's shard entries, each naming its generation (compaction and retention go by it)."""
    return [{**s, "generation": generation.get("generation", 1)} for s in generation["shards"]]


def inputs_of(generation: dict[str, Any]) -> list[dict[str, Any]]:
    """A generation's input files, each naming its generation (planning reads them without the
    per-generation summaries)."""
    return [{**i, "generation": generation.get("generation", 1)} for i in generation.get("inputs") or []]


def start(generation: dict[str, Any]) -> dict[str, Any]:
    """The view of a table that holds this one generation (generation 1)."""
    return {
        **generation,
        "inputs": inputs_of(generation),
        "shards": tagged(generation),
        "generations": [summary_of(generation)],
        "id_sources": [id_source(generation)],
        "pairs_through": generation.get("pairs_generation"),
    }


def extend(view: dict[str, Any], generation: dict[str, Any]) -> dict[str, Any]:
    """`view` (generations 1..n-1, or a snapshot of them) with generation n added."""
    through = [t for t in (view.get("pairs_through"), generation.get("pairs_generation")) if t is not None]
    return {
        **view,
        "config": generation["config"],
        "counts": {k: view["counts"][k] + generation["counts"][k] for k in SUMMED},
        "shards": [*view["shards"], *tagged(generation)],
        "rejects": [*(view.get("rejects") or []), *(generation.get("rejects") or [])],
        "inputs": [*(view.get("inputs") or []), *inputs_of(generation)],
        "run": generation["run"],
        "generation": generation["generation"],
        "generations": [*view["generations"], summary_of(generation)],
        "id_sources": [*view["id_sources"], id_source(generation)],
        "pairs_through": max(through) if through else None,
    }


def union(generations: list[dict[str, Any]]) -> dict[str, Any]:
    """What readers see: generation 1's header, every generation's shards and rejects, summed counts,
    and one entry per generation (its number, inputs, counts, run summary)."""
    view = start(generations[0])
    for g in generations[1:]:
        view = extend(view, g)
    return view


def summary_of(generation: dict[str, Any]) -> dict[str, Any]:
    return {
        "generation": generation.get("generation", 1),
        "inputs": generation.get("inputs"),
        "counts": generation["counts"],
        "teacher_seconds": (generation.get("run") or {}).get("teacher_seconds"),
        "committed_at": generation.get("committed_at"),
    }


def snapshot_uri(out: str, number: int) -> str:
    return storage.join(out, f"_snapshot-{number:06d}.json")


def newest_snapshot(out: str) -> int:
    """The newest snapshot's number (0: none): the hint's (`LATEST`, written after each snapshot commits)
    or a newer one found after it (a hint whose write was lost or overtaken): on S3 a listing that
    starts at the hint, locally a look at each number after it until one is missing."""
    hint = storage.read_if_exists(storage.join(out, LATEST))
    hinted = json.loads(hint)["snapshot"] if hint else 0
    if not storage.is_s3(out):  # a local folder: a look at the numbers after it (`probe`)
        return max([hinted, *probe(lambda n: snapshot_uri(out, n), hinted + 1)])
    after = storage.basename(snapshot_uri(out, hinted)) if hinted else ""
    return max([hinted, *(int(m.group(1)) for n in storage.list_names(out, "_snapshot-", after)
                          if (m := SNAPSHOT_NAME.fullmatch(n)))])  # fmt: skip


class StaleView(UserError):
    """A view's snapshot details file is gone: two newer snapshots were committed since the view was
    read (each keeps its predecessor's details, so one newer snapshot is no harm), and a sweep removed it."""


READ_ATTEMPTS = 3  # reads of the newest snapshot when its details file vanished meanwhile (`read_view`)


def read_view(out: str, details: bool = True) -> dict[str, Any] | None:
    """What readers of a label table see (`view_once`); read again from the newest snapshot when the
    snapshot read first was superseded and its details file swept before they were read (`StaleView`)."""
    for _ in range(READ_ATTEMPTS - 1):
        with contextlib.suppress(StaleView):
            return view_once(out, details)
    return view_once(out, details)


def view_once(out: str, details: bool = True) -> dict[str, Any] | None:
    """What readers of a label table see (every committed generation), without reading its history:
    its newest snapshot (generations 1..b as one document, written by `qadist label` every few
    generations and by `qadist compact`; `newest_snapshot`), then the manifests of generations b+1..n
    (one listing that starts at b). None when no generation is committed.

    A snapshot keeps its per-generation lists (`DETAILS`: shards, rejects, per-generation summaries,
    kept files) in a separate file (`details`); with `details=False` it is not read and those lists
    hold only generations b+1..n (`complete` False): what a label run plans with (counts, inputs, ids).
    `with_details` completes such a view."""
    view, after = None, 0
    if number := newest_snapshot(out):
        view = head(read_json(snapshot_uri(out, number)))
        after = view["covers"]
    names = names_from(out, after) if after else [n for n, _, _ in storage.list_folder(out)]
    if not any(GENERATION_NAME.fullmatch(n) for n in names):
        return None
    if after and after not in generation_numbers(out, names, after):
        raise UserError(
            f"{out}: snapshot {number} covers generations 1..{after} but generation {after} is not committed "
            "(a manifest was removed by hand); re-run with --overwrite"
        )
    for g in committed_generations(out, after, names):
        view = start(g) if view is None else extend(view, g)
    assert view is not None
    view = {"snapshot": 0, "covers": 0, "kept": [], "retired": [], "details": None, "complete": True, **view}
    return with_details(out, view) if details else view


def head(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot as the start of a view: its lists empty (`complete` False) when they are in its details file."""
    if not snapshot.get("details"):
        return {**snapshot, "complete": True}
    return {**snapshot, **{k: [] for k in DETAILS}, "complete": False}


def with_details(out: str, view: dict[str, Any]) -> dict[str, Any]:
    """`view` with its snapshot's per-generation lists in front of its own (one read); as it is when complete."""
    if view.get("complete", True):
        return view
    try:
        details = read_json(storage.join(out, view["details"]))
    except UserError as e:  # (read_bytes: no such file)
        raise StaleView(
            f"{out}: snapshot {view['snapshot']}'s details file {view['details']} is gone: newer snapshots were "
            "committed since this view was read; read the table again"
        ) from e
    return {**view, **{k: [*details[k], *view[k]] for k in DETAILS}, "complete": True}


def select_generation(out: str, view: dict[str, Any] | None, number: int | None) -> dict[str, Any]:
    """The view (number None) or generation `number` alone, as a reader's manifest."""
    if view is None:
        raise UserError(f"{out}: no {MANIFEST}; the label run has not finished (re-run `qadist label` to resume it)")
    if number is None:
        return view
    if not 1 <= number <= view["generation"]:
        raise UserError(
            f"{out}: has generations 1..{view['generation']}, not {number}; pass --generation between them, or omit it"
        )
    if number in view["retired"]:
        raise UserError(
            f"{out}: generation {number} was compacted and its own shards were removed by the retention rule "
            "(docs/operations.md, `qadist compact`); its rows are in the table: read it without --generation"
        )
    generation = read_generation(out, number)
    return {**generation, "generations": [summary_of(generation)]}


# ---- a `qadist pairs` output as another stage's input: only what its generations committed ----------


def pairs_output_of(uri: str) -> str | None:
    """The `qadist pairs` output that `uri` is, or whose `pairs/` folder it is (it holds that stage's
    claim); None for plain pairs files and folders."""
    roots = [uri.rstrip("/")]
    if storage.basename(uri) == "pairs":
        roots.append(uri.rstrip("/").rsplit("/", 1)[0])
    claims = (claim_file("pairs"), *LEGACY_CLAIMS[claim_file("pairs")])
    for root in roots:
        if any(storage.exists(storage.join(root, n)) for n in claims):
            return root
    return None


def committed_pair_files(root: str, uri: str, after: int = 0) -> tuple[list[str], int]:
    """The pairs files under `uri` that generations of the pairs output `root` after number `after`
    committed (their manifests list them; files of a run still writing are in none), and the newest
    generation number. One listing of `root` that starts at generation `after` (the history before it
    is not listed), one read per generation after it."""
    names = names_from(root, after) if after else [n for n, _, _ in storage.list_folder(root)]
    numbers = generation_numbers(root, names, max(after, 1))
    prefix = uri.rstrip("/") + "/"
    files = [
        storage.join(root, f["path"])
        for g in committed_generations(root, after, names)
        for f in (g.get("files") or {}).get("pairs") or []
    ]
    return sorted(f for f in files if f.startswith(prefix) or f == uri.rstrip("/")), (numbers[-1] if numbers else 0)


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
