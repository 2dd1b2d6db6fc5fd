"""MiniLM v1 (deep self-attention distillation): bert-base-uncased -> 6 x 384 with 12 heads.

    python main.py --config=configs/minilm_l6_h384.py --workdir=gs://<bucket>/runs/minilm_v1
    python -m distill_jax.plan --config=configs/minilm_l6_h384.py --topology=v5e-16   # fits?
    python main.py --config=configs/minilm_l6_h384.py:runlocal --workdir=/tmp/minilm_v1 \
        --config.teacher.name=/path/to/bert-base-uncased

Recipe: Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
Pre-Trained Transformers", arXiv:2002.10957 (NeurIPS 2020): KL between the last layers' attention
distributions plus KL between their value relations (V V^T), summed with equal weight. v1 compares
attention head by head, so the student keeps the teacher's 12 heads (384 / 12 = 32 dims per head).
Optimisation as in mha_l6_h384.py (both papers: batch 1024, 400K steps, Adam, 4K warmup, seq 512);
v1 reports a 5e-4 peak learning rate for its small students.
"""

from configs import common
from configs import mha_l6_h384


def get_config(arg=None):
    args = common.parse_arg(arg, runlocal=False, steps=0)
    c = mha_l6_h384.get_config()
    c.student.num_heads = 12  # must equal the teacher's for the attention-distribution KL
    c.objective = common.minilm_v1(attention=1.0, value=1.0)
    c.optim.learning_rate = 5e-4
    if args.runlocal:
        common.runlocal(c)
    if args.steps:
        c.total_steps = args.steps
    return c
