"""What every student row of the demo starts from: the domain, Ray, the starting points, both teachers,
the pairs and the ensemble's soft labels (`prepare`), and the training runs that reuse a finished
model (`train_model`, `distill_model`). The benchmarks that build on the demo call `prepare` too."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

from qadist import storage
from qadist.config import DemoConfig, DistillConfig, FinetuneConfig, LabelConfig, PairsConfig
from qadist.demo.camera_domain import generate_domain, write_domain
from qadist.demo.plan import Plan, Train, epochs_for
from qadist.inference import cpu_has_bf16
from qadist.models import local_model
from qadist.outputs import manifest_uri, read_json
from qadist.rows import jsonl_bytes
from qadist.runtime import ensure_ray
from qadist.squad.io import read_pairs


class Stopwatch:
    """Times each stage, prints it as it ends, and keeps the totals for the report."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        print(f"=== demo: {name} ===", flush=True)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        print(
            f"=== demo: {name} done in {time.perf_counter() - t0:.1f} s (total so far {self.total():.1f} s) ===",
            flush=True,
        )

    def total(self) -> float:
        return time.perf_counter() - self.started


def save_init_models(folder: str, layers: int, seeds: dict[str, int], source: str | None = None) -> dict[str, str]:
    """Starting points, as save_pretrained folders: the encoder (`source`, MiniLM by default) with a
    seeded fresh QA head per name, `layers` of its first layers for the student."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    from qadist.models import load_tokenizer, minilm_path

    source = source or minilm_path()
    tokenizer = load_tokenizer(source)
    paths = {}
    for name, (n_layers, seed) in {**{k: (None, s) for k, s in seeds.items()}, "student-init": (layers, 0)}.items():
        path = os.path.join(folder, name)
        if not os.path.exists(os.path.join(path, "config.json")):
            torch.manual_seed(seed)
            kwargs = {"num_hidden_layers": n_layers} if n_layers else {}
            AutoModelForQuestionAnswering.from_pretrained(source, **kwargs).save_pretrained(path)
            tokenizer.save_pretrained(path)
        paths[name] = path
    return paths


def finished_model(out: str) -> str | None:
    final = storage.join(out, "final")
    return final if storage.exists(storage.join(final, "config.json")) else None


@dataclass
class Prepared:
    """What every student row starts from: the domain's files, the starting points, the teachers,
    the soft labels, and the settings every stage shares."""

    out: str
    data: dict[str, str]
    subsets: dict[int, str]  # n -> the first n student labels (and "all": the teachers' and the few)
    inits: dict[str, str]
    teacher_a: str
    teacher_b: str
    labels: str
    shared: dict
    threads: int
    pairs_accuracy: float
    pairs_counts: dict | None
    label_counts: dict | None

    def path(self, *parts: str) -> str:
        return storage.join(self.out, *parts)


def train_model(
    clock: Stopwatch,
    prep: Prepared,
    stage: str,
    name: str,
    init: str,
    train_file: str,
    train: Train,
    examples: int,
    seed: int,
) -> str:
    """`run_finetune` into <out>/models/<name> (reused when it finished); the final model's local path."""
    run_out = prep.path("models", name)
    with clock.stage(stage):
        if finished_model(run_out) is None:
            from qadist.train.stage import run_finetune

            run_finetune(
                FinetuneConfig(
                    train_file=train_file,
                    model=init,
                    out=run_out,
                    epochs=epochs_for(train, examples),
                    learning_rate=train.learning_rate,
                    batch_size=train.batch_size,
                    seed=seed,
                    **prep.shared,
                )
            )
        return local_model(finished_model(run_out))


def all_labels_file(data: dict[str, str], few: str, out: str) -> str:
    """The teachers' labelled set and the few student labels in one file: every label the team has."""
    text = storage.read_text(data["teacher"]).rstrip("\n") + "\n" + storage.read_text(few)
    storage.write_bytes(out, text.encode("utf-8"))
    return out


def prepare(
    cfg: DemoConfig, plan: Plan, clock: Stopwatch, models_dir: str | None = None, subset_sizes: tuple[int, ...] = ()
) -> Prepared:
    """The domain, Ray, the starting points, both teachers, the pairs and the ensemble's soft labels
    (and the first n student labels for each n of the plan's curve and of `subset_sizes`)."""
    out = cfg.out
    threads = max(1, os.cpu_count() or 1)
    # Settings every stage shares: the window sizes, and bf16 where this CPU computes it natively
    # (inference ~2x, training ~1.2-1.3x faster than fp32; the same models and code, rounded differently).
    shared = {**plan.windows, "precision": "bf16" if cpu_has_bf16() else "fp32"}
    p = lambda *parts: storage.join(out, *parts)  # noqa: E731
    with clock.stage("generate the camera-store domain"):
        data = write_domain(generate_domain(cfg.seed, plan.sizes), p("data"))
        student_pool = read_pairs(data["student"])[0]
        subsets = {}
        for n in sorted(set(plan.curve) | {plan.few} | set(subset_sizes)):
            subsets[n] = p("data", f"student-{n}.jsonl")
            storage.write_bytes(subsets[n], jsonl_bytes(student_pool[:n]))
        subsets["all"] = all_labels_file(data, subsets[plan.few], p("data", f"all-labels-{plan.few}.jsonl"))
        pages = storage.read_text(data["documents"]).count("\n")
        few_sets = sorted(k for k in subsets if k != "all")
        print(
            f"{plan.sizes.teacher} teacher-labelled, {plan.sizes.logged} logged questions over {pages} "
            f"product pages, {plan.sizes.student} student-labelled (subsets {few_sets}), "
            f"{plan.sizes.test} test, {plan.sizes.dev} dev",
            flush=True,
        )
    with clock.stage("start Ray (embedded)"):
        # Teacher actors and training workers get `threads` torch threads (Ray would give a 1-CPU
        # worker one), and enough logical CPUs for the label pipeline's tasks beside its actor.
        ensure_ray(min_cpus=max(4, 2 * threads), threads=threads, dedicated=True)
        inits = save_init_models(
            models_dir or p("models"),
            plan.student_layers,
            {"teacher-a-init": cfg.seed * 2 + 1, "teacher-b-init": cfg.seed * 2 + 2},
        )
    prep = Prepared(out, data, subsets, inits, "", "", p("labels"), shared, threads, 0.0, None, None)
    prep.teacher_a = train_model(
        clock,
        prep,
        "teacher A: fine-tune MiniLM-L6 + QA head",
        "teacher-a",
        inits["teacher-a-init"],
        data["teacher"],
        plan.teacher,
        plan.sizes.teacher,
        cfg.seed,
    )
    prep.teacher_b = train_model(
        clock,
        prep,
        "teacher B: same, another seed",
        "teacher-b",
        inits["teacher-b-init"],
        data["teacher"],
        plan.teacher,
        plan.sizes.teacher,
        cfg.seed + 1,
    )
    with clock.stage("pairs: match logged questions to product pages"):
        pairs_manifest = run_stage_pairs(data, p("pairs"))
        prep.pairs_accuracy = pairing_accuracy(p("pairs", "pairs"), data["logged-gold"])
        prep.pairs_counts = pairs_manifest.get("counts")
        print(
            f"pairs: {prep.pairs_accuracy:.1%} of the logged questions were matched to the page they were asked about",
            flush=True,
        )
    with clock.stage("label: soft labels from the two-teacher ensemble"):
        from qadist.label.stage import run_label

        label_manifest = run_label(
            LabelConfig(
                pairs=p("pairs", "pairs"),
                out=prep.labels,
                teachers=[prep.teacher_a, prep.teacher_b],
                num_cpus_per_actor=threads,
                batch_size=64,
                **shared,
            )
        )
        prep.label_counts = label_manifest.get("counts")
    return prep


def run_stage_pairs(data: dict[str, str], out: str) -> dict:
    if storage.exists(manifest_uri(out)):
        return read_json(manifest_uri(out))
    from qadist.pairs.stage import run_pairs

    return run_pairs(PairsConfig(questions=data["questions"], documents=data["documents"], out=out, top_k=1))


def pairing_accuracy(pairs_uri: str, gold_uri: str) -> float:
    """Share of logged questions paired with the page they were generated from (a diagnostic)."""
    gold = {p["id"]: p["doc_id"] for p in read_pairs(gold_uri)[0]}
    pairs = read_pairs(pairs_uri, strict=False)[0]
    return sum(1 for p in pairs if gold.get(p.get("question_id", p["id"])) == p.get("doc_id")) / max(len(gold), 1)


def distill_model(
    clock: Stopwatch,
    stage: str,
    labels: str,
    student: str,
    run_out: str,
    train: Train,
    temperature: float,
    seed: int,
    shared: dict,
) -> str:
    with clock.stage(stage):
        if finished_model(run_out) is None:
            from qadist.train.stage import run_distill

            run_distill(
                DistillConfig(
                    labels=labels,
                    student=student,
                    out=run_out,
                    epochs=train.epochs,
                    learning_rate=train.learning_rate,
                    temperature=temperature,
                    alpha_kd=1.0,
                    alpha_hard=0.0,
                    batch_size=train.batch_size,
                    seed=seed,
                    **shared,
                )
            )
        return local_model(finished_model(run_out))
