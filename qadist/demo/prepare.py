"""What every student row of the demo starts from: the domain, Ray, the starting points, both teachers,
the pairs and the ensemble's soft labels (`prepare`), and the training runs that reuse a finished
model (`train_model`, `distill_model`). The benchmarks that build on the demo call `prepare` too."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

from qadist import storage
from qadist.config import DemoConfig, DistillConfig, FinetuneConfig, LabelConfig, PairsConfig, PretrainConfig, to_dict
from qadist.demo.domain import generate_domain, write_domain
from qadist.demo.model_cache import cache_key, file_digest, folder_digest, train_or_reuse
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


def save_init_models(
    folder: str, layers: int | None, seeds: dict[str, int], source: str | None = None
) -> dict[str, str]:
    """Starting points, as save_pretrained folders: the encoder (`source`, MiniLM by default) with a
    seeded fresh QA head per name, and `layers` of its first layers for the student (none if None)."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    from qadist.models import load_tokenizer, minilm_path

    source = source or minilm_path()
    tokenizer = load_tokenizer(source)
    paths = {}
    student = {"student-init": (layers, 0)} if layers else {}
    for name, (n_layers, seed) in {**{k: (None, s) for k, s in seeds.items()}, **student}.items():
        path = os.path.join(folder, name)
        if not os.path.exists(os.path.join(path, "config.json")):
            torch.manual_seed(seed)
            kwargs = {"num_hidden_layers": n_layers} if n_layers else {}
            AutoModelForQuestionAnswering.from_pretrained(source, **kwargs).save_pretrained(path)
            tokenizer.save_pretrained(path)
        paths[name] = path
    return paths


def made_by(cfg) -> dict:
    """A training config's every setting (defaults included) but where it reads and writes: what a
    cached model is keyed by, so a changed default is another key."""
    return {
        k: v
        for k, v in to_dict(cfg).items()
        if k not in ("out", "train_file", "model", "documents", "labels", "student")
    }


def finished_model(out: str) -> str | None:
    final = storage.join(out, "final")
    return final if storage.exists(storage.join(final, "config.json")) else None


@dataclass
class Prepared:
    """What every student row starts from: the domain's files, the starting points, the teachers,
    the soft labels, and the settings every stage shares."""

    out: str
    data: dict[str, str]
    subsets: dict[int, str]  # n -> the first n of the store's gold labels
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
    cache: str = "",
) -> str:
    """`run_finetune` into <out>/models/<name> (reused when it finished, or taken from `cache` when a
    model was trained there from the same start, data and settings); the final model's local path."""
    run_out = prep.path("models", name)
    with clock.stage(stage):
        if finished_model(run_out) is None:
            settings = {
                "epochs": epochs_for(train, examples),
                "learning_rate": train.learning_rate,
                "batch_size": train.batch_size,
                "seed": seed,
                **prep.shared,
            }
            cfg = FinetuneConfig(train_file=train_file, model=init, out=run_out, **settings)
            key = cache and cache_key("finetune", init, train_file, made_by(cfg))
            from qadist.train.stage import run_finetune

            found = f"{name}: the model trained earlier from the same start, data and settings"
            train_or_reuse(cache, key, run_out, lambda: run_finetune(cfg), found)
        return local_model(finished_model(run_out))


def prepare_data(
    cfg: DemoConfig, plan: Plan, clock: Stopwatch, models_dir: str | None = None, subset_sizes: tuple[int, ...] = ()
) -> Prepared:
    """The domains (and the first n store labels for each n of the plan's curve and of `subset_sizes`),
    Ray, the starting points and the pairs: what every row starts from but the teachers."""
    out = cfg.out
    threads = max(1, os.cpu_count() or 1)
    # Settings every stage shares: the window sizes, and bf16 where this CPU computes it natively
    # (inference ~2x, training ~1.2-1.3x faster than fp32; the same models and code, rounded differently).
    shared = {**plan.windows, "precision": "bf16" if cpu_has_bf16() else "fp32"}
    p = lambda *parts: storage.join(out, *parts)  # noqa: E731
    with clock.stage("generate the other shops and the camera store"):
        data = write_domain(generate_domain(cfg.seed, plan.sizes), p("data"))
        student_pool = read_pairs(data["student"])[0]
        subsets = {}
        for n in sorted(set(plan.curve) | set(subset_sizes)):
            subsets[n] = p("data", f"student-{n}.jsonl")
            storage.write_bytes(subsets[n], jsonl_bytes(student_pool[:n]))
        pages = storage.read_text(data["documents"]).count("\n")
        print(
            f"teachers' data: {plan.sizes.teacher:,} labelled questions from other shops (headphones, laptops, "
            f"e-bikes), {plan.sizes.teacher_test} held out; camera store: {plan.sizes.logged:,} logged questions "
            f"over {pages} product pages, {plan.sizes.student:,} gold labels (subsets {sorted(subsets)}), "
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
    with clock.stage("pairs: match logged questions to product pages"):
        pairs_manifest = run_stage_pairs(data, p("pairs"))
        prep.pairs_accuracy = pairing_accuracy(p("pairs", "pairs"), data["logged-gold"])
        prep.pairs_counts = pairs_manifest.get("counts")
        print(
            f"pairs: {prep.pairs_accuracy:.1%} of the logged questions were matched to the page they were asked about",
            flush=True,
        )
    return prep


def prepare(
    cfg: DemoConfig, plan: Plan, clock: Stopwatch, models_dir: str | None = None, subset_sizes: tuple[int, ...] = ()
) -> Prepared:
    """The domains, Ray, the starting points, the pairs, both teachers and the ensemble's soft labels."""
    prep = prepare_data(cfg, plan, clock, models_dir, subset_sizes)
    prep.teacher_a, prep.teacher_b = (
        train_model(
            clock,
            prep,
            f"teacher {name}: MiniLM-L6 + QA head on the other shops' labels",
            f"teacher-{name.lower()}",
            prep.inits[f"teacher-{name.lower()}-init"],
            prep.data["teacher"],
            plan.teacher,
            plan.sizes.teacher,
            cfg.seed + i,
            cache=cfg.teacher_cache,
        )
        for i, name in enumerate("AB")
    )
    with clock.stage("label: soft labels from the two-teacher ensemble"):
        prep.label_counts = label_pairs(prep, [prep.teacher_a, prep.teacher_b]).get("counts")
    return prep


def label_pairs(prep: Prepared, teachers: list[str], out: str | None = None) -> dict:
    """The teachers' ensemble soft labels on the pairs (`run_label`) into `out` (the run's labels
    folder by default); its manifest."""
    from qadist.label.stage import run_label

    return run_label(
        LabelConfig(
            pairs=prep.path("pairs", "pairs"),
            out=out or prep.labels,
            teachers=teachers,
            num_cpus_per_actor=prep.threads,
            batch_size=64,
            **prep.shared,
        )
    )


def pretrained_teachers(cfg: DemoConfig, plan: Plan, clock: Stopwatch, prep: Prepared) -> tuple[str, str]:
    """The seed's pipeline order: MiniLM pre-trained on the store's product pages (`qadist pretrain`),
    then QA-trained on the other shops' labels as the teachers are, seeds and settings alike."""

    from qadist.models import minilm_path

    run_out = prep.path("models", "pretrained-encoder")
    with clock.stage("pretrain: MiniLM-L6 on the camera store's product pages"):
        if finished_model(run_out) is None:
            pcfg = PretrainConfig(
                documents=prep.data["documents"], model=minilm_path(), out=run_out, seed=cfg.seed, **plan.pretrain
            )
            key = cfg.teacher_cache and cache_key("pretrain", minilm_path(), prep.data["documents"], made_by(pcfg))
            from qadist.train.pretrain import run_pretrain

            found = "pretrain: the encoder pre-trained earlier with the same settings"
            train_or_reuse(cfg.teacher_cache, key, run_out, lambda: run_pretrain(pcfg), found)
        encoder = local_model(finished_model(run_out))
    inits = save_init_models(
        os.path.join(os.path.dirname(prep.inits["teacher-a-init"]), "pretrained-inits"),
        None,
        {name: cfg.seed * 2 + 1 + i for i, name in enumerate("ab")},  # the plain teachers' head seeds
        source=encoder,
    )
    teachers = []
    for i, name in enumerate("AB"):
        init = inits[name.lower()]
        teachers.append(
            train_model(
                clock,
                prep,
                f"teacher {name}, pre-trained on the pages first: QA head on the other shops' labels",
                f"pretrained-teacher-{name.lower()}",
                init,
                prep.data["teacher"],
                plan.pretrained_teacher_training,
                plan.sizes.teacher,
                cfg.seed + i,
                cache=cfg.teacher_cache,
            )
        )
    return teachers[0], teachers[1]


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
    cache: str = "",
    prep: Prepared | None = None,
) -> str:
    """`run_distill` into `run_out` (reused when it finished). With `cache` and `prep`, a teacher-side
    model (self-distillation) is kept and reused as the teachers are: keyed by its start, the logged
    questions, the pages and both teachers the soft labels come from, and its settings."""
    with clock.stage(stage):
        if finished_model(run_out) is None:
            cfg = DistillConfig(
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
            key = cache and prep and distill_key(prep, cfg)
            from qadist.train.stage import run_distill

            found = f"{stage}: the model distilled earlier from the same teachers, data and settings"
            train_or_reuse(cache, key, run_out, lambda: run_distill(cfg), found)
        return local_model(finished_model(run_out))


def distill_key(prep: Prepared, cfg: DistillConfig) -> str:
    """The cache key of a model distilled from the run's soft labels. The labels are not an input file:
    the key holds what made them instead (the logged questions, the pages, both teachers' files, the
    window settings in `cfg`), and none of the run's own paths."""
    made_of = {
        **made_by(cfg),
        "documents": file_digest(prep.data["documents"]),
        "teachers": [folder_digest(prep.teacher_a), folder_digest(prep.teacher_b)],
    }
    return cache_key("distill", cfg.student, prep.data["questions"], made_of)
