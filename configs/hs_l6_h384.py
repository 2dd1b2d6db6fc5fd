"""Hidden-state distillation (HS): bert-base-uncased -> 6 x 384, with a choice of layer map.

    python main.py --config=configs/hs_l6_h384.py:map=uniform_cons --workdir=gs://<bucket>/runs/hs_uc
    python -m distill_jax.plan --config=configs/hs_l6_h384.py:map=uniform_cons --topology=v5e-16   # fits?
    python main.py --config=configs/hs_l6_h384.py:map=last,runlocal --workdir=/tmp/hs_last \
        --config.teacher.name=/path/to/bert-base-uncased

map= one of: last | uniform | uniform_cons | uniform_last | identity (equal depths only; refused
for 6 vs 12 layers, kept so the error can be seen) | explicit pairs written "1:2+2:4+3:6+4:8+5:10+6:12"
(student:teacher, 1-based, 0 = embeddings).

Recipe: MSE between mapped hidden states through a learned per-layer linear projection (384 ->
768), as TinyBERT's hidden-state loss (Jiao et al., arXiv:1909.10351) generalised to the layer maps
compared in "How to Distill your BERT" (arXiv:2305.15032); the optimisation recipe matches
mha_l6_h384.py so that objectives are compared at equal cost.
"""

from configs import common
from configs import mha_l6_h384

from distill_jax.losses.layer_maps import STRATEGIES


def parse_map(spec: str):
    """A strategy name, or explicit "s:t+s:t" pairs -> [[s, t], ...]."""
    if spec in STRATEGIES:
        return spec
    try:
        return [[int(a) for a in pair.split(":")] for pair in spec.split("+")]
    except ValueError:
        raise ValueError(f"config arg map={spec!r}: use one of {', '.join(STRATEGIES)} or pairs like "
                         f"'1:2+2:4' (student:teacher)") from None


def get_config(arg=None):
    args = common.parse_arg(arg, map="uniform_cons", runlocal=False, steps=0)
    c = mha_l6_h384.get_config()
    c.objective = common.hidden_states(
        parse_map(args.map), loss="mse",
        embeddings=False,        # the embedding output is not matched (its width differs too)
        projection="per_layer",  # one learned 384->768 projection per student layer
        one_to_many="mean_target",  # uniform_cons/uniform_last: the student matches the mean of its teacher layers
    )
    c.optim.learning_rate = 5e-4  # (ours) a little below MiniLMv2's: MSE targets are unbounded
    if args.runlocal:
        common.runlocal(c)
    if args.steps:
        c.total_steps = args.steps
    return c
