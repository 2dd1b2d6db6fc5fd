"""The distillation objectives the recipes share, each stated once.

Each helper returns an objective config ({term: options}, the schema of
distill_jax/losses/objective.py) for `config.objective`; a recipe passes only what it changes.
Options left out take the library's defaults (distill_jax/losses/terms.py); options passed are
written into the config (and so into a run's identity: configs/study.py's records and a workdir's
config.json), which is why some recipes pass a default explicitly.
"""


def minilmv2(relation_heads: int = 48, teacher_layer: int = -1, student_layer: int = -1, **options) -> dict:
    """MiniLMv2 (Wang et al., arXiv:2012.15828): KL between the Q-Q, K-K and V-V self-attention
    relations of one teacher layer and one student layer, split into `relation_heads` heads (the
    paper: 48 for base-size teachers, 64 for large ones; it must divide both widths). The paper
    uses the teacher's last layer for base-size teachers and an upper-middle one for large ones.
    options: more minilmv2 options (qq / kk / vv relation weights, heads_per_chunk, block_size)."""
    return {"minilmv2": dict(weight=1.0, relation_heads=relation_heads, teacher_layer=teacher_layer,
                             student_layer=student_layer, **options)}


def minilm_v1(**options) -> dict:
    """MiniLM v1 (Wang et al., arXiv:2002.10957): KL between the last layers' attention
    distributions plus KL between their value relations (V V^T), equal weights; head by head, so
    the student needs the teacher's head count. options: attention / value weights."""
    return {"minilm": dict(weight=1.0, teacher_layer=-1, student_layer=-1, **options)}


def hidden_states(layer_map, loss: str = "mse", **options) -> dict:
    """Hidden-state distillation: `loss` between mapped hidden states through learned per-layer
    projections when the widths differ, as TinyBERT's hidden-state loss (arXiv:1909.10351) over
    the layer maps of "How to Distill your BERT" (arXiv:2305.15032). layer_map: a strategy of
    distill_jax.losses.STRATEGIES or explicit [[student, teacher], ...] pairs. options: embeddings,
    projection, one_to_many."""
    return {"hs": dict(weight=1.0, map=layer_map, loss=loss, **options)}


def distilbert_od(temperature: float = 2.0) -> dict:
    """DistilBERT's loss (Sanh et al., arXiv:1910.01108): 5 x the T^2-scaled KL between teacher and
    student MLM distributions at the masked positions (T = 2), plus 2 x the hard-label masked-LM
    cross-entropy. The vocabulary projection runs 32 positions at a time (30522-way for BERT)."""
    return {"od": dict(weight=5.0, temperature=temperature, positions="mlm", chunk_size=32),
            "mlm": dict(weight=2.0)}
