"""What a `qadist label` run reads: the input files no committed generation holds, cut into blocks.

`--pairs` is either a `qadist pairs` output (its folder, or its `pairs/` folder: it holds that stage's
claim) or plain pairs files. From a pairs output, a run reads only the files that committed pairs
generations list in their manifests, never the folder's current files: the part files of a pairs
run still at work are in no manifest, so they are invisible until that run commits. A label
generation records the newest pairs generation it planned against (`pairs_generation`), so the next
run reads only the pairs manifests after it. Plain files and folders are listed as they are (one
listing, sizes included).
"""

from __future__ import annotations

from typing import Any

from qadist.config import LabelConfig
from qadist.errors import UserError
from qadist.label.blocks import Block, block_name, plan_blocks
from qadist.outputs import committed_pair_files, pairs_output_of
from qadist.rows import input_files


def held_inputs(view: dict[str, Any] | None) -> dict[str, tuple[int, int]]:
    """Input file URI -> (its size when labelled, the generation that labelled it)."""
    if view is None:
        return {}
    # (inputs name their generation; a snapshot written before they did has it in its summaries)
    numbers = {i["uri"]: g["generation"] for g in view["generations"] for i in g.get("inputs") or []}
    return {i["uri"]: (i["size"], i.get("generation", numbers.get(i["uri"], 0))) for i in view.get("inputs") or []}


def fresh_files(cfg: LabelConfig, view: dict[str, Any] | None) -> tuple[list[str] | None, list[dict], int | None]:
    """(the new files to plan, or None for "plan every listed file that is new"; the plain listing
    (uri, size) when `--pairs` is plain files; the newest pairs generation, for a pairs output).

    A plain file a generation labelled must not change afterwards (logs gain new files, not edits):
    a changed size is an error naming the file, since its rows would be neither new nor labelled."""
    held = held_inputs(view)
    root = pairs_output_of(cfg.pairs)
    if root is not None:
        after = (view or {}).get("pairs_through") or 0
        files, newest = committed_pair_files(root, cfg.pairs, after)
        if not newest:
            raise UserError(
                f"{cfg.pairs}: the `qadist pairs` output {root} has no committed generation yet (a pairs run is still "
                "writing it, or it failed); run label when `qadist pairs` has finished"
            )
        return [f for f in files if f not in held], [], newest
    listed = input_files(cfg.pairs, "--pairs")
    for i in listed:
        if i["uri"] in held and held[i["uri"]][0] != i["size"]:
            size, number = held[i["uri"]]
            raise UserError(
                f"{i['uri']}: changed since generation {number} labelled it ({size:,} -> {i['size']:,} bytes); "
                "add new rows as new files, or re-label everything with --overwrite"
            )
    return [i["uri"] for i in listed if i["uri"] not in held], listed, None


def new_blocks(cfg: LabelConfig, view: dict[str, Any] | None) -> tuple[list[Block], list[dict], int | None]:
    """The blocks of the input files no committed generation holds, those files' (uri, size), and the
    newest pairs generation they come from (None: plain files)."""
    fresh, _, through = fresh_files(cfg, view)
    if not fresh:
        return [], [], through
    blocks, inputs = plan_blocks(cfg.pairs, cfg.rows_per_shard, files=fresh)  # held files unread
    check_names(cfg, view, blocks)
    return blocks, inputs, through


def stem(pairs: str, uri: str) -> str:
    return block_name(pairs, uri, 0, 0).rsplit(".r", 1)[0]


def check_names(cfg: LabelConfig, view: dict[str, Any] | None, blocks: list[Block]) -> None:
    """A new file whose shard names a committed generation's file already gives (two file names that
    differ only in punctuation) is refused, rather than mistaken for finished work. Compared through
    the files' names, so it holds after a compaction replaced the shards."""
    held = held_inputs(view)
    stems = {stem(cfg.pairs, uri): (uri, number) for uri, (_, number) in held.items()}
    for b in blocks:
        uri, number = stems.get(stem(cfg.pairs, b.source), (b.source, 0))
        if uri != b.source:
            raise UserError(
                f"{b.source}: its shard name {b.name} is taken by generation {number}'s shard of another file "
                "(names differ only in punctuation); rename the new file"
            )
