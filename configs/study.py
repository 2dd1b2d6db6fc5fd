"""The OD vs HS vs MHA study: distil one student per method, fine-tune each downstream, one table.

    python main.py --config=configs/study.py:preset=cpu --workdir=$HOME/.cache/distill_jax/study/cpu \
        --config.report_dir=docs/study
    python main.py --config=configs/study.py:preset=cpu,report_only --workdir=... --config.report_dir=docs/study
    python main.py --config=configs/study.py:preset=pod,dry_run --workdir=gs://<bucket>/study   # prints the plan

Every method gets the same teacher, corpus, token budget, optimizer, schedule and seed; only
`method_objectives[method]` differs. Reruns of the same command skip finished records and resume an
unfinished distillation from its checkpoints (studies/driver.py). The workdir holds the
heavy state (checkpoints, exported students, the fitted MLM head); `report_dir` holds one small JSON
record per distillation and per (method, task, seed) fine-tuning run, and the table + chart built
from those records alone.

Presets:
  cpu  the offline all-MiniLM-L6-v2 (6x384) -> 3x384 random-init students, 2000 steps of 32 x 64
       tokens (4.1 M tokens) of the English Wikipedia sample in ../shared/data, fine-tuned on SST-2,
       CoLA and MRPC (capped training sets, full dev sets), 3 seeds, one fixed recipe. Sized to a
       few CPU-hours on 2 cores (measured figures in BUILD_NOTES.md, "Study").
  pod  paper scale for a TPU slice: bert-base-uncased (12x768, bf16, ships its MLM head) -> 6x384,
       Wikipedia from the hub, 1024 x 512 for 400K steps (MiniLMv2's budget), full GLUE training
       and dev sets, a learning-rate grid and 5 seeds. `dry_run` prints the plan without running.

Args: preset=cpu|pod, student=<LxW> (the student shape, one of STUDENT_SHAPES[preset]; the first is
the default), only=<m1+m2> (a subset of methods, run in that order; same records), steps=<n>
(distillation steps; changes every method's budget and so its records' identity), report_only, dry_run.

The student axis: only the student's width (and FFN, 4 x width) or depth differs between shapes;
teacher, corpus, budget, optimizer, schedule, seed, relation heads and fine-tuning recipe are the
same. Each shape has its own records and report (a report dir belongs to one shape: the driver
refuses another's), e.g. the narrower CPU student:
    python main.py --config=configs/study.py:preset=cpu,student=3x192 \
        --workdir=$HOME/.cache/distill_jax/study/cpu_3x192 --config.report_dir=docs/study_3x192
"""

import os

import ml_collections

from configs import common
from configs import glue as glue_config
from distill_jax.evaluate.report import REFERENCES  # the reference rows' names (the driver gives their meaning)

# The cost records and the trade-off chart (studies/cost.py): beside the per-shape report dirs.
COST_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "study_cost"))

# Reference rows (REFERENCES): 'teacher' fine-tunes the teacher itself; 'none' fine-tunes the
# student shape at a random init drawn with the study's seed (BERT init, as the trainer draws a
# student's): no distillation. The other rows are the methods of _objectives().


def _objectives(preset: str) -> dict:
    """The distillation objective of every method (configs/common.py)."""
    # MiniLMv2 for base-size teachers, whatever the student: 384/48 = 8, 192/48 = 4, 768/48 = 16
    # dims per relation head (see STUDENT_SHAPES)
    relation_heads = 48
    return {
        "minilmv2_last": common.minilmv2(relation_heads, teacher_layer=-1),
        # The same from layer L_T - 1, the "upper-middle" layer the seed paper recommends.
        "minilmv2_upper": common.minilmv2(relation_heads, teacher_layer=-2),
        # Last layers (needs equal head counts: 12 and 12).
        "minilm_v1": common.minilm_v1(),
        # Learned per-layer projections when widths differ (384 -> 768 on the pod, 192 -> 384 for
        # the cpu 3x192 student; at equal widths, 384 = 384 for the cpu 3x384 student, the
        # identity: no parameters to learn).
        "hs_last": common.hidden_states("last", loss="mse"),
        "hs_uniform": common.hidden_states("uniform", loss="mse"),
        "hs_uniform_cons": common.hidden_states("uniform_cons", loss="mse"),
        "hs_uniform_last": common.hidden_states("uniform_last", loss="mse"),
        # The teacher's MLM head: its own (pod) or fitted (cpu).
        "od": common.distilbert_od(temperature=2.0),
    }


# Student shapes per preset: (layers, width, heads, FFN); the first is the preset's default.
# cpu: today's 3x384 (as wide as the teacher, so HS matches hidden states through an identity) and
# 3x192, narrower than the teacher (HS learns 192 -> 384 projections). 12 heads in both (head dim
# 32 and 16): MiniLM v1 needs the teacher's head count, and MiniLMv2's 48 relation heads are set by
# the teacher (the paper: 48 for base-size teachers whatever the student) and divide 192 (4 dims
# per relation head) as they divide 384 (8) and 768 (16).
# pod: MiniLM's paper-scale students from bert-base-uncased (arXiv:2002.10957 Table 1 / 2012.15828
# Table 2 report 6x384 and 4x384 among others).
STUDENT_SHAPES = {
    "cpu": {"3x384": (3, 384, 12, 1536), "3x192": (3, 192, 12, 768)},
    "pod": {"6x384": (6, 384, 12, 1536), "4x384": (4, 384, 12, 1536)},
}


def student_shape_name(student) -> str:
    """'<layers>x<width>' of a student config (the key of STUDENT_SHAPES, and of report dirs)."""
    return f"{student.num_layers}x{student.hidden_size}"


LABELS = {
    "teacher": "teacher (6x384, all-MiniLM-L6-v2)",
    "none": "no distillation (random init)",
    "minilmv2_last": "MiniLMv2 Q/K/V, teacher last layer",
    "minilmv2_upper": "MiniLMv2 Q/K/V, teacher layer L-1",
    "minilm_v1": "MiniLM v1 (attention + value)",
    "hs_last": "HS MSE, map last",
    "hs_uniform": "HS MSE, map uniform",
    "hs_uniform_cons": "HS MSE, map uniform_cons",
    "hs_uniform_last": "HS MSE, map uniform_last",
    "od": "OD (KL T=2 x5 + MLM x2)",
}


def _cpu(c: ml_collections.ConfigDict) -> None:
    c.teacher_name = "sentence-transformers/all-MiniLM-L6-v2"
    d = c.distill
    d.teacher.dtype = "float32"               # a 6x384 teacher gains nothing from bf16 on CPU
    # d.student's shape: STUDENT_SHAPES["cpu"], set by get_config's student= arg
    d.data.source = "wikiextractor"
    d.data.paths = os.path.join(common.SHARED_DATA_DIR, "corpus", "wikipedia_en_sample", "text")
    d.data.seq_len = 64
    d.data.mlm.max_predictions = 10            # 15% of 62 maskable tokens (OD only)
    d.batch_size = 32
    d.total_steps = 2000                      # 2000 x 32 x 64 = 4.1 M tokens, ~one pass over the sample
    d.optim.learning_rate = 5e-4
    d.optim.warmup_steps = 200                # 10%, then linear decay to 0
    d.log_every = 50
    d.checkpoint_every = 250                  # a killed run loses at most ~4 minutes
    d.keep_checkpoints = 2

    c.glue = glue_config.get_config(
        "tasks=sst2+cola+mrpc,refs=0,lrs=1e-4,seeds=0+1+2,epochs=3,batch=32,max_len=128,"
        "cap=sst2:2000+cola:2000+mrpc:2000")
    c.glue.finetune.log_every_steps = 0       # one console line per epoch
    c.fit_head = _fit_head_config("")


def _pod(c: ml_collections.ConfigDict) -> None:
    from configs import mha_l6_h384

    c.teacher_name = "bert-base-uncased"      # ships its MLM head: OD needs no fitting
    pod = mha_l6_h384.get_config()            # MiniLMv2's paper-scale recipe, shared by every method
    pod.objective = ml_collections.ConfigDict()
    c.distill = pod
    c.distill.data.mlm.max_predictions = 80   # 15% of 512 (OD only)
    c.glue = glue_config.get_config(
        "tasks=mnli+qnli+qqp+sst2+cola+mrpc+rte+stsb,refs=0,lrs=1e-5+2e-5+3e-5+5e-5,seeds=0+1+2+3+4,"
        "epochs=3,epochs_per_task=rte:10+mrpc:5+stsb:5+cola:5")
    c.glue.data.source = "hf"                 # nyu-mll/glue from the hub: every task, full sets
    c.glue.dtype = "bfloat16"
    c.fit_head = _fit_head_config("")


def _fit_head_config(arg: str) -> ml_collections.ConfigDict:
    from configs import fit_mlm_head

    return fit_mlm_head.get_config(arg)


def get_config(arg=None):
    args = common.parse_arg(arg, preset="cpu", student="", only="", steps=0, report_only=False, dry_run=False)
    if args.preset not in ("cpu", "pod"):
        raise ValueError(f"config arg preset={args.preset!r}: use preset=cpu or preset=pod")
    shapes = STUDENT_SHAPES[args.preset]
    shape = args.student or next(iter(shapes))
    if shape not in shapes:
        raise ValueError(f"config arg student={shape!r}: the {args.preset} preset's students are "
                         f"{', '.join(shapes)}")
    c = ml_collections.ConfigDict()
    c.mode = "study"              # main.py dispatches to studies.driver.run_study
    c.preset = args.preset
    c.distill = common.base_config()  # the trainer config every method shares (objective set per method)
    c.distill.export = True
    if args.preset == "cpu":
        _cpu(c)
    else:
        _pod(c)
    s = c.distill.student
    s.num_layers, s.hidden_size, s.num_heads, s.intermediate_size = shapes[shape]
    c.distill.teacher.name = c.teacher_name
    if args.steps:
        c.distill.total_steps = args.steps
        c.distill.optim.warmup_steps = max(1, args.steps // 10)
        c.distill.checkpoint_every = min(c.distill.checkpoint_every, args.steps)
    objectives = _objectives(args.preset)
    c.methods = (*REFERENCES, *objectives)   # table rows in this order (also the run order unless config.only)
    c.method_objectives = ml_collections.ConfigDict(objectives)
    labels = dict(LABELS)
    if args.preset == "pod":
        labels["teacher"] = "teacher (12x768, bert-base-uncased)"
    c.method_labels = ml_collections.ConfigDict(labels)
    # '+'-separated methods to run, in this order ('' = all, in table order); the report shows
    # every record whatever ran.
    c.only = args.only
    c.report_dir = ""             # '' = <workdir>/report; records/ and the table live here
    c.report_only = args.report_only  # rebuild the table and chart from the records; train nothing
    c.dry_run = args.dry_run      # print the plan (methods, budgets, runs) and stop
    c.fit_head.enabled = True     # fit the teacher's MLM head first when an OD method needs one it lacks
    # Zero-shot sentence embedding, every model: STS-B Spearman x 100 of the cosine of mean-pooled
    # last hidden states, no fine-tuning (distill_jax/evaluate/stsb.py), from config.glue.data.
    c.zero_shot = ml_collections.ConfigDict(dict(enabled=True, split="dev", max_len=128, batch_size=64))
    # What each shape costs to run (teacher and every student shape of the preset, measured in one
    # process by `python -m studies.cost --preset=...`); the report reads it, nothing trains from it.
    c.cost_record = os.path.join(COST_DIR, f"cost_{args.preset}.json")
    return c
