"""Fit BERT's masked-LM head on a frozen teacher that ships without one (distill_jax/mlm_head.py).

    python main.py --config=configs/fit_mlm_head.py --workdir=/tmp/minilm_mlm_head
    python main.py --config=configs/od_l6_h384.py:runlocal --config.teacher.name=/tmp/minilm_mlm_head/export ...

Default: the offline all-MiniLM-L6-v2 (no MLM head) on the English Wikipedia sample in
../shared/data (builtin corpus when that is absent), evaluated on WikiText-2 test. Only the head's
transform, LayerNorm and output bias train (the decoder is tied to the frozen word embeddings).

Args (comma-separated after ':'): steps=<n> (default 600), corpus=wiki|builtin, runlocal (a tiny
smoke run: builtin corpus for both training and evaluation, 20 steps).
"""

import os

import ml_collections

from configs import common


def get_config(arg=None):
    args = common.parse_arg(arg, steps=600, corpus="wiki", runlocal=False)
    c = ml_collections.ConfigDict()
    c.mode = "fit_mlm_head"       # main.py dispatches to distill_jax.mlm_head.fit_mlm_head
    c.seed = 0                    # fresh head init and training data order
    c.teacher = ml_collections.ConfigDict()
    c.teacher.name = "sentence-transformers/all-MiniLM-L6-v2"

    wiki = os.path.join(common.SHARED_DATA_DIR, "corpus", "wikipedia_en_sample", "text")
    wikitext = os.path.join(common.SHARED_DATA_DIR, "corpus", "wikitext-2-raw", "wiki.test.raw")
    use_shared = args.corpus == "wiki" and not args.runlocal and os.path.isdir(wiki)
    c.data = common.base_config().data
    c.data.seq_len = 128          # BERT's pre-training length for the first 90% of steps
    c.data.mlm.max_predictions = 20  # 15% of 128
    if use_shared:
        c.data.source, c.data.paths = "wikiextractor", wiki
    else:
        c.data.source, c.data.max_documents = "builtin", 4000

    # Held-out evaluation corpus, masked like training data with fixed masks (eval_seed).
    c.eval_data = common.base_config().data
    c.eval_data.seq_len = 128
    c.eval_data.mlm.max_predictions = 20
    c.eval_data.shuffle = False
    if use_shared and os.path.isfile(wikitext):
        c.eval_data.source, c.eval_data.paths, c.eval_data.doc_split = "text", wikitext, "line"
    else:
        c.eval_data.source, c.eval_data.max_documents = "builtin", 100
    c.eval_seed = 1234
    c.eval_batch_size = 32
    c.max_eval_batches = 0        # 0 = the whole eval corpus once

    c.batch_size = 32
    c.total_steps = args.steps    # 600 x 32 x 128 = 2.5 M tokens: the head's loss has flattened (measured)
    c.optim = common.base_config().optim
    c.optim.learning_rate = 1e-3  # a fresh 0.3 M-parameter head on frozen features learns fast
    c.optim.warmup_steps = max(1, args.steps // 10)
    c.log_every = 50
    c.checkpoint_every = 200
    if args.runlocal:
        c.data.seq_len = c.eval_data.seq_len = 64
        c.data.mlm.max_predictions = c.eval_data.mlm.max_predictions = 10
        c.batch_size = c.eval_batch_size = 8
        c.total_steps = 20
        c.optim.warmup_steps = 2
        c.log_every = c.checkpoint_every = 10
        c.max_eval_batches = 4
    return c
