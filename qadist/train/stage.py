"""`qadist distill` and `qadist finetune`: the driver side of training on Ray Train.

The driver checks the inputs (soft labels, tokenizer, gold files) before any work starts, builds
the windows dataset (the manifest-listed soft-label shards through `qadist.shards.read`, plus gold
windows from a train file), prints a banner with the step arithmetic and launches a `TorchTrainer`
whose workers run the loop of `qadist.train.loop` with the QA task (`qadist.train.qa`). Checkpoints
go to `<out>/<stage>/` (local or `s3://`); re-running the same command resumes from the last
checkpoint. The final student is copied to `<out>/final`, a `save_pretrained` folder for
`AutoModelForQuestionAnswering` and `qadist predict`.

Fine-tuning is the same loop with a_kd = 0 on gold windows only.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from qadist import console, label_studio, storage
from qadist.config import DistillConfig, FinetuneConfig, TrainSettings
from qadist.errors import UserError, first_line
from qadist.models import load_tokenizer, local_model, tokenizer_fingerprint
from qadist.outputs import manifest_uri
from qadist.runtime import ensure_ray
from qadist.shards import check_header, read, read_footer, read_manifest
from qadist.squad.features import make_windows
from qadist.squad.io import read_pairs
from qadist.train.checkpoint import recorded_windows
from qadist.train.launch import WINDOW_KEYS, TrainJob, check_workers_fit, launch, quiet, windows_described
from qadist.train.qa import qa_spec

log = logging.getLogger(__name__)

GOLD_CHUNK = 512  # pairs windowed at a time, and rows per block of the gold dataset


def train_schema(has_types: bool) -> pa.Schema:
    """The columns training reads, with the shard contract's types."""
    return pa.schema(
        [
            ("input_ids", pa.list_(pa.int32())),
            *([("token_type_ids", pa.list_(pa.int8()))] if has_types else []),
            ("start_logits", pa.list_(pa.float16())),
            ("end_logits", pa.list_(pa.float16())),
            ("start_position", pa.int32()),
            ("end_position", pa.int32()),
        ]
    )


def gold_windows(pairs: list[dict], tokenizer: Any, windows: dict[str, int], has_types: bool) -> pa.Table:
    """Labelled pairs -> windows with gold positions and empty soft labels (so a_kd skips them).

    Windows of pairs without an `answers` field carry no label and are left out.
    """
    schema = train_schema(has_types)
    tables = []
    for i in range(0, len(pairs), GOLD_CHUNK):
        chunk = [p for p in pairs[i : i + GOLD_CHUNK] if "answers" in p]
        if not chunk:
            continue
        batch = {k: [p[k] for p in chunk] for k in ("id", "question", "context", "answers")}
        w = make_windows(batch, tokenizer, windows["max_seq_len"], windows["doc_stride"], windows["max_query_len"])
        n = len(w["input_ids"])
        cols = {
            "input_ids": w["input_ids"],
            "start_logits": [[]] * n,
            "end_logits": [[]] * n,
            "start_position": w["start_position"],
            "end_position": w["end_position"],
        }
        if has_types:
            cols["token_type_ids"] = w.get("token_type_ids") or [[0] * len(x) for x in w["input_ids"]]
        tables.append(pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_gold(uri: str, tokenizer: Any, windows: dict[str, int], has_types: bool, flag: str) -> pa.Table:
    pairs, rejects = read_gold_pairs(uri)
    if rejects:  # only Label Studio tasks get here: a partial export is normal
        log.warning(
            "%s: %d Label Studio tasks not used (first: row %d, %s)",
            uri,
            len(rejects),
            rejects[0]["row"],
            rejects[0]["reason"],
        )
    labelled = sum(1 for p in pairs if "answers" in p)
    if not labelled:
        raise UserError(f"{uri}: no row has 'answers'; {flag} needs SQuAD JSON or pairs with answers")
    if labelled < len(pairs):
        log.warning(
            "%s: %d of %d pairs have no 'answers' field and are not used for training",
            uri,
            len(pairs) - labelled,
            len(pairs),
        )
    return gold_windows(pairs, tokenizer, windows, has_types)


def read_gold_pairs(uri: str) -> tuple[list[dict], list[dict]]:
    """Gold pairs; a bad row is an error naming it, except a Label Studio task that is not annotated
    (or annotated inconsistently): a partial export trains on what is labelled, the rest is skipped."""
    pairs, rejects = read_pairs(uri, strict=False)
    for r in rejects:
        if not r["reason"].startswith(label_studio.REASON_PREFIX):
            raise UserError(f"{r['source']}: row {r['row']}: {r['reason']}; fix or remove the row")
    if not pairs:
        first = f" (first: row {rejects[0]['row']}, {rejects[0]['reason']})" if rejects else ""
        raise UserError(f"{uri}: no usable labelled pairs{first}")
    return pairs, rejects


def window_settings(cfg: TrainSettings, recorded: dict | None) -> dict[str, int]:
    """Window lengths: the ones given explicitly, else the recorded ones (shards, model), else defaults."""
    return {
        k: getattr(cfg, k) if k in cfg.model_fields_set or not recorded or k not in recorded else int(recorded[k])
        for k in WINDOW_KEYS
    }


def check_shards(labels: str, listed: list[dict], tokenizer_hash: str, need_text: bool = False) -> bool:
    """Every manifest-listed shard's footer: the schema version, the manifest's tokenizer, and (for a
    student with another tokenizer, `need_text`) the pair text its windows are re-cut from.

    The manifest speaks for the run, but a shard copied in from another run (or left by an older
    qadist) would otherwise only fail (or silently mistrain) inside the workers. Footers only, in
    parallel. Returns whether the shards carry token_type_ids.
    """
    from concurrent.futures import ThreadPoolExecutor

    def footer(shard: dict) -> tuple[str, dict, list[str]]:
        uri = storage.join(labels, shard["path"])
        try:
            header, _, schema = read_footer(uri)
        except (FileNotFoundError, OSError) as e:
            raise UserError(
                f"{uri}: listed in {manifest_uri(labels)} but cannot be read ({first_line(str(e))}); "
                "re-run `qadist label --overwrite` into this output"
            ) from e
        return uri, header, schema.names

    with ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(pool.map(footer, listed))
    for uri, header, names in footers:
        check_header(header, uri, tokenizer_hash)
        if need_text and not {"question", "context"} <= set(names):
            raise UserError(
                f"{uri}: has no question/context columns, so a student with another tokenizer cannot re-cut its "
                "windows; re-run `qadist label --overwrite`, or distil a student with the labels' tokenizer"
            )
    typed = {"token_type_ids" in names for _, _, names in footers}
    if len(typed) > 1:
        raise UserError(
            f"{labels}: some shards have token_type_ids and some do not (mixed labelling runs); "
            "re-run `qadist label --overwrite`"
        )
    return typed.pop()


def check_eval_file(cfg: TrainSettings) -> None:
    """The evaluation file is read by rank 0 after the first epoch: a bad one fails now, on the driver."""
    if cfg.eval_file:
        read_pairs(cfg.eval_file, strict=True)


def projected_dataset(cfg: DistillConfig, windows: dict[str, int]) -> tuple[Any, int]:
    """The soft labels re-cut and projected for a student with another tokenizer, computed once
    (materialised: the projection is CPU work in Ray Data tasks, not repeated at every epoch),
    and the number of student windows. Pairs the student cannot window are counted and logged."""
    from functools import partial

    from qadist.train import cross_tokenizer

    transform = partial(
        cross_tokenizer.project_shard,
        tokenizer_name=cfg.student,  # each worker fetches an s3:// student itself (the driver's copy is local)
        lengths=windows,
        temperature=cfg.temperature,
        trust_remote_code=cfg.trust_remote_code,
    )
    dataset = quiet(
        read(cfg.labels, columns=cross_tokenizer.SHARD_COLUMNS, transform=transform, generation=cfg.generation)
    ).materialize()
    count = dataset.count()
    skipped = int(dataset.sum("skipped") or 0) if count else 0
    if skipped:
        console.banner(f"qadist distill: {skipped:,} pairs skipped: {cfg.student}'s tokenizer cannot window them", log)
    if not count:
        raise UserError(f"{cfg.labels}: no pair could be re-windowed with {cfg.student}'s tokenizer")
    return dataset.drop_columns(["skipped"]), count


def run_distill(cfg: DistillConfig) -> dict:
    if cfg.alpha_kd == 0 and cfg.alpha_hard == 0:
        raise UserError("alpha_kd and alpha_hard are both 0: nothing to learn; set --alpha-kd (and/or --alpha-hard)")
    manifest = read_manifest(cfg.labels, cfg.generation)
    tokenizer = load_tokenizer(local_model(cfg.student), cfg.trust_remote_code)
    recorded = manifest.get("tokenizer") or {}
    mine = tokenizer_fingerprint(tokenizer)
    projected = recorded.get("hash") != mine  # another tokenizer: targets carried through characters
    windows = window_settings(
        cfg, {**(manifest.get("config") or {}), **{k: manifest[k] for k in WINDOW_KEYS if k in manifest}}
    )
    listed = [s for s in manifest["shards"] if s["rows"] > 0]
    if not listed:
        raise UserError(f"{cfg.labels}: the manifest lists no windows; label some pairs first")
    has_types = check_shards(cfg.labels, listed, recorded.get("hash"), need_text=projected)
    check_eval_file(cfg)
    soft = sum(int(s["rows"]) for s in listed)
    check_workers_fit(ensure_ray(min_cpus=cfg.num_workers + 1), "distill", cfg)
    if projected:
        has_types = "token_type_ids" in tokenizer.model_input_names
        dataset, soft = projected_dataset(cfg, windows)
        console.banner(
            f"qadist distill: projection on: soft labels of tokenizer {recorded.get('name')} (hash "
            f"{recorded.get('hash')}) carried through characters to {cfg.student}'s tokenizer (hash {mine}), "
            f"at temperature {cfg.temperature:g}: {soft:,} student windows",
            log,
        )
    else:
        dataset = read(
            cfg.labels, tokenizer_hash=mine, columns=train_schema(has_types).names, generation=cfg.generation
        )
    gold = 0
    if cfg.train_file:
        import ray.data

        table = read_gold(cfg.train_file, tokenizer, windows, has_types, "--train-file")
        gold = table.num_rows
        blocks = [table.slice(i, GOLD_CHUNK) for i in range(0, gold, GOLD_CHUNK)]
        dataset = dataset.union(ray.data.from_arrow(blocks)).randomize_block_order(seed=cfg.seed)
    provenance = {
        "labels": {
            "uri": cfg.labels,
            "teachers": manifest.get("teachers"),
            "tokenizer": manifest.get("tokenizer"),
            "projected": projected,
        }
    }
    loss = {"temperature": cfg.temperature, "alpha_kd": cfg.alpha_kd, "alpha_hard": cfg.alpha_hard}
    return launch(
        TrainJob(
            "distill",
            cfg,
            cfg.student,
            dataset,
            {"soft": soft, "gold": gold},
            qa_spec(loss, windows, cfg.eval_file),
            windows_described(soft, gold),
            provenance,
            windows,
        )
    )


def run_finetune(cfg: FinetuneConfig) -> dict:
    model = local_model(cfg.model)
    tokenizer = load_tokenizer(model, cfg.trust_remote_code)
    windows = window_settings(cfg, recorded_windows(model))
    has_types = "token_type_ids" in tokenizer.model_input_names
    table = read_gold(cfg.train_file, tokenizer, windows, has_types, "finetune")
    check_eval_file(cfg)
    check_workers_fit(ensure_ray(min_cpus=cfg.num_workers + 1), "finetune", cfg)
    import ray.data

    blocks = [table.slice(i, GOLD_CHUNK) for i in range(0, table.num_rows, GOLD_CHUNK)]
    # A few labels, many epochs: shuffle once and keep the result, rather than re-running the
    # all-to-all shuffle at every epoch's start (the same seeded order either way).
    dataset = quiet(ray.data.from_arrow(blocks)).random_shuffle(seed=cfg.seed).materialize()
    loss = {"temperature": 1.0, "alpha_kd": 0.0, "alpha_hard": 1.0}
    gold = table.num_rows
    return launch(
        TrainJob(
            "finetune",
            cfg,
            cfg.model,
            dataset,
            {"soft": 0, "gold": gold},
            qa_spec(loss, windows, cfg.eval_file),
            windows_described(0, gold),
            {"train_file": cfg.train_file},
            windows,
        )
    )
