"""MiniLMv2 (multi-head self-attention relation distillation): bert-base-uncased -> 6 x 384.

On a TPU pod slice (every host runs the same command; see launch/tpu_pod.sh):
    python main.py --config=configs/mha_l6_h384.py --workdir=gs://<bucket>/runs/mha_l6_h384
Before paying for the slice, compile its step for it here (no TPU, no weights, no data: HBM per
chip, fits or not; see docs/plan.md):
    python -m distill_jax.plan --config=configs/mha_l6_h384.py --topology=v5e-16
The same code path on one CPU (a 20-step smoke run; point the teacher at a local copy when the hub
is unreachable):
    python main.py --config=configs/mha_l6_h384.py:runlocal --workdir=/tmp/mha_l6_h384 \
        --config.teacher.name=/path/to/bert-base-uncased

Recipe: Wang et al., "MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing
Pretrained Transformers", arXiv:2012.15828 (Findings of ACL 2021), Section 4 / experimental setup,
and the released MiniLMv2 models (https://aka.ms/minilm). Values marked (paper) follow the paper as
we read it; values marked (ours) are our choice where the paper is silent or the setting differs.
"""

from configs import common


def get_config(arg=None):
    args = common.parse_arg(arg, runlocal=False, steps=0)
    c = common.base_config()
    c.teacher.name = "bert-base-uncased"  # (paper) 12x768, 12 heads, uncased WordPiece
    c.teacher.dtype = "bfloat16"          # (ours) frozen forward in bf16 on TPU/GPU

    c.student.num_layers = 6              # (paper) the 6x384 student
    c.student.hidden_size = 384
    c.student.num_heads = 12              # relation heads decouple the student's head count
    c.student.intermediate_size = 1536    # 4 x width, as BERT
    c.student.init = "random"             # (paper) students are trained from scratch
    c.student.dtype = "bfloat16"          # (ours) bf16 compute, float32 master weights

    # (paper) Q-Q, K-K and V-V self-attention relations, equal weights, between the teacher's last
    # layer (base-size teachers) and the student's last layer; 48 relation heads for base-size
    # teachers (64 for large ones): 768/48 = 16 and 384/48 = 8 dims per relation head.
    c.objective = common.minilmv2(relation_heads=48, teacher_layer=-1, qq=1.0, kk=1.0, vv=1.0)

    # (paper) English Wikipedia + BookCorpus, as BERT. One source here: the Wikimedia dump on the
    # HF hub (a data-file dataset, which datasets 5 loads; the old script-based `wikipedia` and
    # `bookcorpus` loaders are gone). Add BookCorpus through a combined text or tfds source.
    c.data.source = "hf"
    c.data.hf_name = "wikimedia/wikipedia"
    c.data.hf_config = "20231101.en"
    c.data.hf_streaming = True            # 20 GB of text: stream it instead of downloading first
    c.data.seq_len = 512                  # (paper) maximum sequence length 512

    c.batch_size = 1024                   # (paper) batch size 1024
    c.total_steps = 400_000               # (paper) 400K steps
    c.optim.learning_rate = 6e-4          # (paper, as we read it) peak LR for the small students
    c.optim.warmup_steps = 4000           # (paper) linear warmup 4K steps, then linear decay
    c.optim.b1, c.optim.b2 = 0.9, 0.999   # (paper) Adam betas
    c.optim.weight_decay = 0.01           # (paper) weight decay 0.01
    c.student.hidden_dropout = 0.1        # (paper) dropout 0.1
    c.student.attention_dropout = 0.1

    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1  # a 22M student: pure data parallelism
    c.log_every = 200
    c.checkpoint_every = 5000
    if args.runlocal:
        common.runlocal(c)
    if args.steps:
        c.total_steps = args.steps
    return c
