"""The demo's two sizes: the domain's sizes and every training run's settings (`FULL`, `QUICK`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from qadist.config import DemoConfig
from qadist.demo.domain import DomainSizes


@dataclass(frozen=True)
class Train:
    epochs: float
    learning_rate: float
    batch_size: int = 16
    min_steps: int = 0  # few-label runs: at least this many optimizer steps, however few the labels


@dataclass(frozen=True)
class Plan:
    """Sizes and training settings of one demo size. Every row's settings of the full size are those
    `benchmarks/demo_tuning.py` chose on a dev split (docs/demo.md, "Tuning"): the teachers' on the
    other shops' dev questions, every student's on the camera store's."""

    sizes: DomainSizes
    student_layers: int
    teacher: Train  # the teachers: MiniLM-L6 + QA head on the other shops' labels
    distill: Train  # the student from the ensemble's soft labels on the store's logged questions
    temperature: float
    ood_student: Train  # the student on the teachers' own labels (the other shops'): the seed's baseline
    labels_only: dict[int, Train]  # number of store labels -> the student trained on them alone
    finetune: dict[int, Train]  # number of store labels -> the distilled student fine-tuned on them
    ood_finetune: dict[int, Train]  # number of store labels -> the ood student fine-tuned on them
    self_distill: Train | None  # the teacher's architecture (from teacher A) distilled from the ensemble
    pretrain: dict | None = None  # `qadist pretrain` settings: the teachers pre-trained on the store's pages first
    pretrained_teacher: Train | None = None  # their QA training (tuned on its own; None: the teachers' settings)
    windows: dict = field(default_factory=lambda: {"max_seq_len": 160, "doc_stride": 64, "max_query_len": 32})
    speed_rounds: int = 3  # interleaved rounds of the speed measurement (demo/speed.py)
    latency_questions: int = 24  # questions timed one at a time per architecture and round

    @property
    def pretrained_teacher_training(self) -> Train:
        return self.pretrained_teacher or self.teacher

    @property
    def curve(self) -> tuple[int, ...]:
        """The numbers of store labels the curves are drawn at (besides 0)."""
        return tuple(sorted(self.labels_only))

    @property
    def few(self) -> tuple[int, ...]:
        """The numbers of store labels whose rows are in the table (the curve's other points are plotted only)."""
        return tuple(n for n in self.curve if n >= 200)


# benchmarks/demo_tuning.py's choices on dev for every row (docs/demo.md, "Tuning"): the teachers
# and the pre-trained teachers on the other shops' dev, every student on the store's.
FULL = Plan(
    sizes=DomainSizes(teacher=2000, logged=2500, student=1000, test=400, dev=200, teacher_dev=200, teacher_test=400),
    student_layers=2,
    teacher=Train(2.0, 2e-4, batch_size=16),
    distill=Train(2.0, 4e-4, batch_size=16),
    temperature=2.0,
    ood_student=Train(2.0, 1e-3),
    labels_only={50: Train(32.0, 1e-3), 200: Train(16.0, 1e-3), 1000: Train(3.2, 1e-3)},
    finetune={50: Train(64.0, 3e-5), 200: Train(16.0, 3e-4), 1000: Train(3.2, 3e-4)},
    ood_finetune={50: Train(16.0, 1e-4), 200: Train(16.0, 3e-4), 1000: Train(3.2, 3e-4)},
    self_distill=Train(2.0, 3e-4),
    pretrain={},  # `qadist pretrain`'s defaults (head warm-up, then lr 5e-6 for 1 epoch)
    pretrained_teacher=Train(2.0, 4e-4, batch_size=16),
)
QUICK = Plan(  # every stage, small: the teachers learn when a page has no answer, not yet where answers are
    sizes=DomainSizes(teacher=320, logged=320, student=200, test=80, dev=40, teacher_dev=40, teacher_test=40),
    student_layers=2,
    teacher=Train(1.0, 2e-4, batch_size=8),
    distill=Train(3.0, 4e-4, batch_size=16),
    temperature=2.0,
    ood_student=Train(1.0, 1e-4),
    labels_only={200: Train(2.0, 1e-4, min_steps=30)},
    finetune={200: Train(2.0, 3e-5, min_steps=20)},
    ood_finetune={},
    self_distill=None,
    speed_rounds=2,
    latency_questions=8,
)


def describe(train: Train, examples: int) -> str:
    """The settings printed beside a row: learning rate and epochs over its training examples."""
    return f"lr {train.learning_rate:g}, {epochs_for(train, examples):.3g} ep"


def epochs_for(train: Train, examples: int) -> float:
    return max(train.epochs, train.min_steps * train.batch_size / max(examples, 1))


def demo_plan(cfg: DemoConfig) -> Plan:
    return QUICK if cfg.quick else FULL
