"""Output-distribution distillation (OD): bert-base-uncased -> 6 x 384 on masked-LM logits.

    python main.py --config=configs/od_l6_h384.py --workdir=gs://<bucket>/runs/od_l6_h384
    python -m distill_jax.plan --config=configs/od_l6_h384.py --topology=v5e-16   # fits?
    python main.py --config=configs/od_l6_h384.py:runlocal --workdir=/tmp/od \
        --config.teacher.name=/path/to/bert-base-uncased

Recipe: DistilBERT's loss (Sanh et al., arXiv:1910.01108): temperature-scaled KL between teacher
and student MLM distributions (T = 2, weight 5) plus the hard-label masked-LM cross-entropy
(weight 2), at the 15% masked positions (80/10/10). DistilBERT also adds a cosine loss on the last
hidden states; here the widths differ (384 vs 768), so it is left out (add `hs` with loss="cosine"
and map="last" to bring it back through a learned projection). bert-base-uncased ships its MLM head,
so the teacher has one; the student gets a freshly initialised head tied to its embeddings.
"""

from configs import common
from configs import mha_l6_h384


def get_config(arg=None):
    args = common.parse_arg(arg, runlocal=False, steps=0, temperature=2.0)
    c = mha_l6_h384.get_config()
    c.objective = common.distilbert_od(temperature=args.temperature)
    c.data.mlm.max_predictions = 80  # BERT: 76-80 predictions per 512-token row (15%)
    c.optim.learning_rate = 5e-4     # DistilBERT: 5e-4 with 4K-token batches; ours: 1024 x 512
    if args.runlocal:
        common.runlocal(c)
    if args.steps:
        c.total_steps = args.steps
    return c
