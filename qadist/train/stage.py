"""`qadist distill` and `qadist finetune`: the driver side of training on Ray Train.

The driver checks the inputs (soft labels, tokenizer, gold files) before any work starts, builds
the windows dataset (the manifest-listed soft-label shards through `qadist.labels.read`, plus gold
windows from a train file), prints a banner
with the step arithmetic and launches a `TorchTrainer` whose workers run
`qadist.train_loop.train_loop_per_worker`. Checkpoints go to `<out>/<stage>/` (local or
`s3://`); re-running the same command resumes from the last checkpoint. The final student is
copied to `<out>/final`, a `save_pretrained` folder for `AutoModelForQuestionAnswering` and
`qadist predict`.

Fine-tuning is the same loop with a_kd = 0 on gold windows only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from qadist import storage
from qadist.config import DistillConfig, FinetuneConfig, TrainSettings, to_dict
from qadist.errors import UserError
from qadist.label.stage import read, read_manifest
from qadist.models import load_tokenizer, tokenizer_fingerprint
from qadist.shards import read_footer
from qadist.squad.features import make_windows
from qadist.squad.io import read_pairs
from qadist.train.loop import QADIST_CONFIG_FILE, STATE_FILE, Plan, local_model, plan_steps, train_loop_per_worker

log = logging.getLogger(__name__)

WINDOW_KEYS = ("max_seq_len", "doc_stride", "max_query_len")
GOLD_CHUNK = 512  # pairs windowed at a time, and rows per block of the gold dataset
RUN_FINGERPRINT_KEYS = ("labels", "student", "train_file", "model", "batch_size", "grad_accum", "num_workers", "shuffle_buffer", "length_group", "precision", "seed",
                        "epochs", "learning_rate", "warmup_ratio", "temperature", "alpha_kd", "alpha_hard", *WINDOW_KEYS)


def train_schema(has_types: bool) -> pa.Schema:
    """The columns training reads, with the shard contract's types."""
    return pa.schema([
        ("input_ids", pa.list_(pa.int32())),
        *([("token_type_ids", pa.list_(pa.int8()))] if has_types else []),
        ("start_logits", pa.list_(pa.float16())),
        ("end_logits", pa.list_(pa.float16())),
        ("start_position", pa.int32()),
        ("end_position", pa.int32()),
    ])


def gold_windows(pairs: list[dict], tokenizer: Any, windows: dict[str, int], has_types: bool) -> pa.Table:
    """Labelled pairs -> windows with gold positions and empty soft labels (so a_kd skips them).

    Windows of pairs without an `answers` field carry no label and are left out.
    """
    schema = train_schema(has_types)
    tables = []
    for i in range(0, len(pairs), GOLD_CHUNK):
        chunk = [p for p in pairs[i:i + GOLD_CHUNK] if "answers" in p]
        if not chunk:
            continue
        batch = {k: [p[k] for p in chunk] for k in ("id", "question", "context", "answers")}
        w = make_windows(batch, tokenizer, windows["max_seq_len"], windows["doc_stride"], windows["max_query_len"])
        n = len(w["input_ids"])
        cols = {"input_ids": w["input_ids"], "start_logits": [[]] * n, "end_logits": [[]] * n,
                "start_position": w["start_position"], "end_position": w["end_position"]}
        if has_types:
            cols["token_type_ids"] = w.get("token_type_ids") or [[0] * len(x) for x in w["input_ids"]]
        tables.append(pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_gold(uri: str, tokenizer: Any, windows: dict[str, int], has_types: bool, flag: str) -> pa.Table:
    pairs, _ = read_pairs(uri, strict=True)
    labelled = sum(1 for p in pairs if "answers" in p)
    if not labelled:
        raise UserError(f"{uri}: no row has 'answers'; {flag} needs SQuAD JSON or pairs with answers")
    if labelled < len(pairs):
        log.warning("%s: %d of %d pairs have no 'answers' field and are not used for training", uri, len(pairs) - labelled, len(pairs))
    return gold_windows(pairs, tokenizer, windows, has_types)


def window_settings(cfg: TrainSettings, recorded: dict | None) -> dict[str, int]:
    """Window lengths: the ones given explicitly, else the recorded ones (shards, model), else defaults."""
    return {k: getattr(cfg, k) if k in cfg.model_fields_set or not recorded or k not in recorded else int(recorded[k])
            for k in WINDOW_KEYS}


def check_tokenizer(manifest: dict, tokenizer: Any, student: str, labels: str) -> None:
    recorded = manifest.get("tokenizer") or {}
    mine = tokenizer_fingerprint(tokenizer)
    if recorded.get("hash") != mine:
        raise UserError(
            f"{student}: its tokenizer (hash {mine}) is not the one the soft labels in {labels} were made with "
            f"({recorded.get('name')}, hash {recorded.get('hash')}); use a student that shares the teachers' tokenizer")


def check_shards(labels: str, listed: list[dict], tokenizer_hash: str) -> bool:
    """Every manifest-listed shard's footer: the schema version and tokenizer this student reads.

    The manifest speaks for the run, but a shard copied in from another run (or left by an older
    qadist) would otherwise only fail (or silently mistrain) inside the workers. Footers only, in
    parallel. Returns whether the shards carry token_type_ids.
    """
    from concurrent.futures import ThreadPoolExecutor

    from qadist.shards import check_header

    def footer(shard: dict) -> tuple[str, dict, list[str]]:
        uri = storage.join(labels, shard["path"])
        try:
            header, _, schema = read_footer(uri)
        except (FileNotFoundError, OSError) as e:
            raise UserError(f"{uri}: listed in {storage.join(labels, '_manifest.json')} but cannot be read ({str(e).splitlines()[0]}); "
                            "re-run `qadist label --overwrite` into this output") from e
        return uri, header, schema.names

    with ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(pool.map(footer, listed))
    for uri, header, _ in footers:
        check_header(header, uri, tokenizer_hash)
    typed = {"token_type_ids" in names for _, _, names in footers}
    if len(typed) > 1:
        raise UserError(f"{labels}: some shards have token_type_ids and some do not (mixed labelling runs); re-run `qadist label --overwrite`")
    return typed.pop()


def run_storage(out: str) -> tuple[str, pafs.FileSystem | None]:
    """RunConfig's storage_path and storage_filesystem for a local folder or an s3:// prefix."""
    if storage.is_s3(out):
        return out[len("s3://"):].rstrip("/"), storage.s3_filesystem()
    storage.makedirs(out)
    return storage.resolve(out)[1], None


def check_same_run(cfg: TrainSettings, stage: str) -> None:
    """Re-running a job continues it; a *different* job into the same --out would corrupt it."""
    marker = storage.join(cfg.out, f"_qadist_{stage}_run.json")
    mine = {k: v for k, v in to_dict(cfg).items() if k in RUN_FINGERPRINT_KEYS}
    # Only a run with a committed checkpoint is continued; before that, new settings just replace it.
    started = storage.exists(storage.join(cfg.out, stage, "checkpoint_manager_snapshot.json"))
    if started and storage.exists(marker):
        previous = json.loads(storage.read_text(marker))
        changed = sorted(k for k in set(previous) | set(mine) if previous.get(k) != mine.get(k))
        if changed:
            raise UserError(f"{cfg.out}: holds a {stage} run made with other settings ({', '.join(changed)}); "
                            f"give a new --out, or delete {storage.join(cfg.out, stage)} and {marker} to start over")
    elif not started or not storage.exists(marker):
        storage.write_bytes(marker, json.dumps(mine, indent=2).encode("utf-8"))


def ensure_ray(num_workers: int) -> None:
    """Reuse an initialised Ray (tests, notebooks); join RAY_ADDRESS (jobs); else start one embedded.

    Embedded, Ray gets at least one logical CPU more than the training workers take: with every
    CPU held by a worker, Ray Data's read tasks would never run and ingest would stall (ray#44687).
    """
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=env)
    else:
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_workers + 1), include_dashboard=False, runtime_env=env)


def banner(stage: str, plan: Plan, cfg: TrainSettings, soft: int, gold: int, run_dir: str) -> str:
    parts = [f"{soft:,} soft-labelled" if soft else "", f"{gold:,} gold" if gold else ""]
    return (f"qadist {stage}: {plan.windows:,} windows ({', '.join(p for p in parts if p)}) | "
            f"global batch {plan.global_batch} = {plan.batch_size} per worker x {plan.num_workers} workers x {plan.grad_accum} accumulation | "
            f"{plan.steps_per_epoch} steps/epoch x {cfg.epochs:g} epochs = {plan.total_steps} steps (warm-up {plan.warmup_steps}) | "
            f"checkpoints every {cfg.checkpoint_every} steps -> {run_dir}")


def export_final(checkpoint: Any, out: str) -> str:
    """Copy the last checkpoint's save_pretrained folder (not the training state) to <out>/final."""
    final = storage.join(out, "final")
    dst_fs, dst_root = storage.resolve(final)
    src_fs, src_root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    files = [f for f in src_fs.get_file_info(pafs.FileSelector(src_root, recursive=True)) if f.type == pafs.FileType.File]
    # config.json last: a folder with a config.json is a finished export (the pipeline's skip rule).
    for info in sorted(files, key=lambda f: (f.path.endswith("/config.json"), f.path)):
        rel = info.path[len(src_root):].lstrip("/")
        if rel == STATE_FILE:
            continue
        dst = f"{dst_root}/{rel}"
        if not storage.is_s3(final):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
        with src_fs.open_input_stream(info.path) as src, dst_fs.open_output_stream(dst) as sink:
            while chunk := src.read(16 << 20):
                sink.write(chunk)
    return final


def launch(stage: str, cfg: TrainSettings, model: str, dataset: Any, soft: int, gold: int, loss: dict, windows: dict[str, int], provenance: dict) -> dict:
    """Run the TorchTrainer and export the final student; returns final path, metrics and plan."""
    import ray.train
    from ray.train.torch import TorchTrainer

    plan = plan_steps(soft + gold, cfg.num_workers, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.warmup_ratio)
    if plan.windows_per_worker == 0:
        raise UserError(f"{plan.windows} training windows cannot be split across --num-workers {cfg.num_workers}; use fewer workers")
    check_same_run(cfg, stage)
    storage_path, filesystem = run_storage(cfg.out)
    text = banner(stage, plan, cfg, soft, gold, storage.join(cfg.out, stage))
    print(text, flush=True)
    log.info(text)
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the same order on every run, so a resume skips exactly what was consumed
    qadist_config = {"schema_version": 1, "stage": stage, "config": to_dict(cfg), "windows": windows, **provenance}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model": model,
            "plan": asdict(plan),
            "loss": loss,
            "train": {k: getattr(cfg, k) for k in ("learning_rate", "weight_decay", "max_grad_norm", "checkpoint_every", "seed",
                                                   "shuffle_buffer", "length_group", "precision", "trust_remote_code")},
            "eval": {"file": cfg.eval_file, "batch_size": 64, **windows} if cfg.eval_file else None,
            "qadist_config": qadist_config,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                                placement_strategy=cfg.placement_strategy),
        run_config=ray.train.RunConfig(
            name=stage,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        ),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(execution_options=ingest),
    )
    started = time.perf_counter()
    result = trainer.fit()
    fitted = time.perf_counter()
    if result.checkpoint is None:
        raise RuntimeError(f"{stage} finished without a checkpoint in {storage.join(cfg.out, stage)}")
    final = export_final(result.checkpoint, cfg.out)
    log.info("%s: Ray Train fit %.1fs, final export %.1fs", stage, fitted - started, time.perf_counter() - fitted)
    metrics = {k: v for k, v in (result.metrics or {}).items() if "/" in k}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in ("train/step", "train/loss", "eval/exact", "eval/f1"))
    print(f"qadist {stage}: done ({shown}); final student -> {final}", flush=True)
    checkpoint = ("s3://" if storage.is_s3(cfg.out) else "") + result.checkpoint.path
    return {"final": final, "metrics": metrics, "plan": asdict(plan), "checkpoint": checkpoint}


def run_distill(cfg: DistillConfig) -> dict:
    if cfg.alpha_kd == 0 and cfg.alpha_hard == 0:
        raise UserError("alpha_kd and alpha_hard are both 0: nothing to learn; set --alpha-kd (and/or --alpha-hard)")
    manifest = read_manifest(cfg.labels)
    tokenizer = load_tokenizer(local_model(cfg.student), cfg.trust_remote_code)
    check_tokenizer(manifest, tokenizer, cfg.student, cfg.labels)
    windows = window_settings(cfg, {**(manifest.get("config") or {}), **{k: manifest[k] for k in WINDOW_KEYS if k in manifest}})
    listed = [s for s in manifest["shards"] if s["rows"] > 0]
    if not listed:
        raise UserError(f"{cfg.labels}: the manifest lists no windows; label some pairs first")
    has_types = check_shards(cfg.labels, listed, tokenizer_fingerprint(tokenizer))
    soft = sum(int(s["rows"]) for s in listed)
    ensure_ray(cfg.num_workers)
    dataset = read(cfg.labels, tokenizer_hash=tokenizer_fingerprint(tokenizer), columns=train_schema(has_types).names)
    gold = 0
    if cfg.train_file:
        import ray.data

        table = read_gold(cfg.train_file, tokenizer, windows, has_types, "--train-file")
        gold = table.num_rows
        blocks = [table.slice(i, GOLD_CHUNK) for i in range(0, gold, GOLD_CHUNK)]
        dataset = dataset.union(ray.data.from_arrow(blocks)).randomize_block_order(seed=cfg.seed)
    provenance = {"labels": {"uri": cfg.labels, "teachers": manifest.get("teachers"), "tokenizer": manifest.get("tokenizer")}}
    loss = {"temperature": cfg.temperature, "alpha_kd": cfg.alpha_kd, "alpha_hard": cfg.alpha_hard}
    return launch("distill", cfg, cfg.student, dataset, soft, gold, loss, windows, provenance)


def recorded_windows(model: str) -> dict | None:
    """Window lengths a qadist-trained model folder was trained with (its qadist_config.json)."""
    path = os.path.join(model, QADIST_CONFIG_FILE)
    return json.loads(storage.read_text(path)).get("windows") if os.path.isfile(path) else None


def run_finetune(cfg: FinetuneConfig) -> dict:
    model = local_model(cfg.model)
    tokenizer = load_tokenizer(model, cfg.trust_remote_code)
    windows = window_settings(cfg, recorded_windows(model))
    has_types = "token_type_ids" in tokenizer.model_input_names
    table = read_gold(cfg.train_file, tokenizer, windows, has_types, "finetune")
    ensure_ray(cfg.num_workers)
    import ray.data

    blocks = [table.slice(i, GOLD_CHUNK) for i in range(0, table.num_rows, GOLD_CHUNK)]
    # A few labels, many epochs: shuffle once and keep the result, rather than re-running the
    # all-to-all shuffle at every epoch's start (the same seeded order either way).
    dataset = ray.data.from_arrow(blocks).random_shuffle(seed=cfg.seed).materialize()
    loss = {"temperature": 1.0, "alpha_kd": 0.0, "alpha_hard": 1.0}
    return launch("finetune", cfg, cfg.model, dataset, 0, table.num_rows, loss, windows, {"train_file": cfg.train_file})
