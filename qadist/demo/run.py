"""`qadist demo`: the whole pipeline, embedded and offline on a CPU, on a generated camera-store domain.

    qadist demo                      # full size (about 14 minutes on 2 CPU cores) into ./qadist-demo
    qadist demo --quick --out /tmp/d # every stage at a reduced size (about 5 minutes), as CI runs it
    qadist demo --out s3://bucket/demo   # artifacts in S3 (AWS_ENDPOINT_URL etc. from the environment)

Every stage runs through the same functions a cluster job calls (`run_finetune`, `run_pairs`,
`run_label`, `run_distill`, `predict_pairs` and the SQuAD 2.0 metric), on an embedded local Ray:

1. generate the domain (`qadist.demo.camera_domain`): product pages, labelled sets, logged questions;
2. teachers: the pretrained all-MiniLM-L6-v2 encoder with a QA head, fine-tuned on the teacher
   set twice with different seeds (the ensemble; ALBERT-xxlarge cannot be had offline);
3. `pairs`: the logged questions matched to the product pages with the packaged bi-encoder;
4. `label`: the two-teacher ensemble's soft labels on those pairs;
5. `distill`: a student made of the teacher encoder's first layers (as DistilBERT was
   initialised), no labels; then `finetune` on the few labels;
6. baselines: the same student trained on the few labels alone, and on every label (the teachers'
   set and the few); self-distillation (the teacher's architecture, started from teacher A,
   distilled from the ensemble) where the plan has it;
7. every model answers the test set; the table, the checks and a plot of F1 against the number of
   labelled examples are printed and written to DIR (results.md, results.json, f1_vs_labels.png).

Each stage's artifacts stay in DIR. Re-running into the same DIR with the same settings reuses
the stages that finished (their manifests and final models) and redoes the rest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from qadist import storage
from qadist.config import AnswerSettings, DemoConfig, DistillConfig, FinetuneConfig, LabelConfig, PairsConfig, to_dict
from qadist.demo.camera_domain import DomainSizes, generate_domain, write_domain
from qadist.demo.report import Row, add_speed, report, score
from qadist.inference import cpu_has_bf16
from qadist.models import local_model
from qadist.outputs import claim, claim_file, manifest_uri, read_json
from qadist.runtime import ensure_ray
from qadist.squad.io import read_pairs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Train:
    epochs: float
    learning_rate: float
    batch_size: int = 16
    min_steps: int = 0  # few-label runs: at least this many optimizer steps, however few the labels


@dataclass(frozen=True)
class Plan:
    """Sizes and training settings of one demo size. The student rows' settings of the full size are
    those `benchmarks/demo_tuning.py` chose on the dev split (docs/demo.md, "Tuning")."""

    sizes: DomainSizes
    student_layers: int
    teacher: Train
    distill: Train
    temperature: float
    labels_only: dict[int, Train]  # number of labels -> the student trained on them alone
    finetune: dict[int, Train]  # number of labels -> the distilled student fine-tuned on them
    all_labels: Train | None  # the student on every label there is (the teachers' and the few)
    self_distill: Train | None
    few: int = 200
    windows: dict = field(default_factory=lambda: {"max_seq_len": 160, "doc_stride": 64, "max_query_len": 32})
    speed_rounds: int = 3  # interleaved rounds of the speed measurement (demo/speed.py)
    latency_questions: int = 24  # questions timed one at a time per architecture and round

    @property
    def curve(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels_only))


FULL = Plan(  # student settings: benchmarks/demo_tuning.py's choices on dev (docs/demo.md, "Tuning")
    sizes=DomainSizes(teacher=1200, logged=2500, student=500, test=400, dev=200),
    student_layers=2,
    teacher=Train(1.0, 2e-4, batch_size=16),  # the team's teachers: given, not tuned
    distill=Train(2.0, 8e-4, batch_size=16),
    temperature=2.0,
    # The 50-label point is in the tuning table only: its two runs would take the demo past 15 minutes.
    labels_only={200: Train(32.0, 1e-3)},
    finetune={200: Train(32.0, 3e-4)},
    all_labels=Train(4.0, 3e-4),
    # Self-distillation (65.2 F1 against teacher A's 68.5 untuned, docs/demo.md) is left out of the
    # full run for the same budget; `distill --student <teacher>` runs it.
    self_distill=None,
)
QUICK = Plan(  # every stage, small: the teachers learn when a page has no answer, not yet where answers are
    sizes=DomainSizes(teacher=320, logged=320, student=200, test=80, dev=40),
    student_layers=2,
    teacher=Train(1.0, 2e-4, batch_size=8),
    distill=Train(3.0, 4e-4, batch_size=16),
    temperature=2.0,
    labels_only={200: Train(2.0, 1e-4, min_steps=30)},
    finetune={200: Train(2.0, 3e-5, min_steps=20)},
    all_labels=None,  # one more training run (~25 s) would not fit the default test run's budget
    self_distill=None,
    speed_rounds=2,
    latency_questions=8,
)


def describe(train: Train, examples: int) -> str:
    """The settings printed beside a row: learning rate and epochs over its training examples."""
    return f"lr {train.learning_rate:g}, {epochs_for(train, examples):.3g} ep"


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


def epochs_for(train: Train, examples: int) -> float:
    return max(train.epochs, train.min_steps * train.batch_size / max(examples, 1))


def demo_plan(cfg: DemoConfig) -> Plan:
    return QUICK if cfg.quick else FULL


def check_out(cfg: DemoConfig, plan: Plan) -> None:
    """DIR may hold an earlier run of the same demo (resumed); another demo's output is refused."""
    settings = {"config": to_dict(cfg), "plan": json.loads(json.dumps(asdict(plan)))}
    if claim(cfg.out, claim_file("demo"), settings, what="a demo run", fix="give another --out, or delete it"):
        print(f"demo: {cfg.out} holds an earlier run with these settings; finished stages are reused", flush=True)


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
            storage.write_bytes(subsets[n], "".join(json.dumps(r) + "\n" for r in student_pool[:n]).encode("utf-8"))
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


def run_demo(cfg: DemoConfig) -> dict:
    plan = demo_plan(cfg)
    check_out(cfg, plan)
    clock = Stopwatch()
    cache = tempfile.mkdtemp(prefix="qadist-demo-models-") if storage.is_s3(cfg.out) else None
    print(f"qadist demo ({'quick' if cfg.quick else 'full'}, seed {cfg.seed}) -> {cfg.out}", flush=True)
    try:
        prep = prepare(cfg, plan, clock, models_dir=cache)
        init = prep.inits["student-init"]
        distilled = distill_model(
            clock,
            "distill: student from the soft labels, no labels",
            prep.labels,
            init,
            prep.path("models", "student-distilled"),
            plan.distill,
            plan.temperature,
            cfg.seed,
            prep.shared,
        )
        curve_paths: dict[str, dict[int, str]] = {"labels only": {}, "distilled, then fine-tuned": {}}
        for n in plan.curve:
            curve_paths["labels only"][n] = train_model(
                clock,
                prep,
                f"baseline: student on {n} labels only",
                f"student-labels-{n}",
                init,
                prep.subsets[n],
                plan.labels_only[n],
                n,
                cfg.seed,
            )
            curve_paths["distilled, then fine-tuned"][n] = train_model(
                clock,
                prep,
                f"finetune: distilled student on {n} labels",
                f"student-distilled-ft-{n}",
                distilled,
                prep.subsets[n],
                plan.finetune[n],
                n,
                cfg.seed,
            )
        n_all = plan.sizes.teacher + plan.few
        if plan.all_labels is not None:
            curve_paths["labels only"][n_all] = train_model(
                clock,
                prep,
                f"baseline: student on all {n_all:,} labels",
                "student-all-labels",
                init,
                prep.subsets["all"],
                plan.all_labels,
                n_all,
                cfg.seed,
            )
        self_distilled = None
        if plan.self_distill is not None:
            self_distilled = distill_model(
                clock,
                "baseline: self-distillation (teacher architecture, from the ensemble)",
                prep.labels,
                prep.teacher_a,
                prep.path("models", "self-distilled"),
                plan.self_distill,
                plan.temperature,
                cfg.seed,
                prep.shared,
            )

        test_pairs = read_pairs(prep.data["test"])[0]
        pcfg = AnswerSettings(batch_size=64, **prep.shared)  # scoring and speed answer alike
        with clock.stage("evaluate every model on the test set"):
            rows = score_all(plan, prep, self_distilled, distilled, curve_paths, test_pairs, pcfg)
            scored = score_curve(curve_paths, rows, prep.data, test_pairs, pcfg, prep.path("eval"))
            curve = {
                name: {n: scored[path].metrics["f1"] for n, path in paths.items()}
                for name, paths in curve_paths.items()
            }
        with clock.stage("speed: each architecture, batch 1 and batch 64, interleaved"):
            speeds = add_speed(rows, test_pairs, pcfg, plan.speed_rounds, plan.latency_questions)
        extra = {
            "config": to_dict(cfg),
            "plan": json.loads(json.dumps(asdict(plan))),
            "pairs_accuracy": round(prep.pairs_accuracy, 4),
            "pairs_counts": prep.pairs_counts,
            "label_counts": prep.label_counts,
            "cpu_threads": prep.threads,
            "precision": prep.shared["precision"],
            "speed_by_architecture": speeds,
        }
        return report(rows, curve, clock.seconds, clock.total(), extra, cfg.out)
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)


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


def score_all(
    plan: Plan,
    prep: Prepared,
    self_distilled: str | None,
    distilled: str,
    curve_paths: dict[str, dict[int, str]],
    test_pairs: list[dict],
    pcfg: AnswerSettings,
) -> list[Row]:
    n_teacher, few = plan.sizes.teacher, plan.few
    via = f"+{n_teacher:,} via teachers"
    teacher_set, a, b = describe(plan.teacher, n_teacher), prep.teacher_a, prep.teacher_b
    rows = [
        Row("teacher A: MiniLM-L6 + QA head", "teacher_a", 6, n_teacher, "", [a], "MiniLM-L6", teacher_set),
        Row("teacher B: same, another seed", "teacher_b", 6, n_teacher, "", [b], "MiniLM-L6", teacher_set),
        Row(
            "teacher ensemble (A+B, mean logits)",
            "ensemble",
            6,
            n_teacher,
            "",
            [prep.teacher_a, prep.teacher_b],
            "2xMiniLM-L6",
            teacher_set,
        ),
    ]
    if self_distilled:
        rows.append(
            Row(
                "self-distilled: teacher architecture from the ensemble",
                "self_distilled",
                6,
                0,
                f"+{n_teacher:,} via teacher A and the ensemble",
                [self_distilled],
                "MiniLM-L6",
                describe(plan.self_distill, plan.sizes.logged) + ", untuned",
            )
        )
    layers = plan.student_layers
    student = f"MiniLM-L{layers}"
    n_all = n_teacher + few
    rows.append(
        Row(
            f"student ({layers} layers) trained on {few} labels only",
            "labels_only",
            layers,
            few,
            "",
            [curve_paths["labels only"][few]],
            student,
            describe(plan.labels_only[few], few),
        )
    )
    if plan.all_labels is not None:
        rows.append(
            Row(
                f"student ({layers} layers) trained on all {n_all:,} labels",
                "all_labels",
                layers,
                n_all,
                "",
                [curve_paths["labels only"][n_all]],
                student,
                describe(plan.all_labels, n_all),
            )
        )
    rows += [
        Row(
            f"student ({layers} layers) distilled, no labels",
            "distilled",
            layers,
            0,
            via,
            [distilled],
            student,
            describe(plan.distill, plan.sizes.logged),
        ),
        Row(
            f"student ({layers} layers) distilled, then fine-tuned on {few} labels",
            "distilled_ft",
            layers,
            few,
            via,
            [curve_paths["distilled, then fine-tuned"][few]],
            student,
            describe(plan.finetune[few], few),
        ),
    ]
    for row in rows:
        score(row, test_pairs, prep.data["test"], pcfg, prep.path("eval"))
    return rows


def score_curve(
    curve_paths: dict[str, dict[int, str]],
    rows: list[Row],
    data: dict[str, str],
    test_pairs: list[dict],
    pcfg: AnswerSettings,
    out: str,
) -> dict[str, Row]:
    """Model path -> its scored row, for every model of the curve; those in the table are not scored twice."""
    scored = {r.paths[0]: r for r in rows if len(r.paths) == 1}
    for name, paths in curve_paths.items():
        for n, path in paths.items():
            if path not in scored:
                key = "curve-" + ("labels-only" if name == "labels only" else "distilled-ft") + f"-{n}"
                scored[path] = score(
                    Row(f"{name}, {n} labels", key, 0, n, "", [path]), test_pairs, data["test"], pcfg, out
                )
    return scored
