"""The same distillation step in PyTorch: what a user would write with HF transformers instead.

HF `BertModel` / `BertForMaskedLM` (SDPA attention, no pooler, dropout off as in the JAX bench)
of the case's shapes; the teacher frozen under `torch.no_grad()`; the student and the objective's
own parameters (HS projections) updated by `torch.optim.AdamW` (decay on matrices only) after
global-norm clipping at 1.0, as the JAX side. Objectives, as in distill_jax.losses:

  minilmv2  Q-Q, K-K, V-V relation KL(teacher || student) between the last layers; Q/K/V are
            captured by forward hooks on each self-attention's query/key/value nn.Linear (HF
            models expose no per-layer Q/K/V otherwise). Each model splits its width into R
            relation heads; padded keys masked; KL averaged over relation heads and valid rows.
  hs        uniform_cons layer map, per-layer Linear projection student->teacher width, MSE over
            features, averaged over valid tokens, then over pairs (1-to-N pairs average the
            teacher layers first).
  od        T^2 KL on MLM logits at the masked positions only (hidden states gathered before the
            heads), averaged over weighted positions.

`TorchDistillStep(case, compile=True)` wraps teacher+student forward and the loss in
`torch.compile` (inductor); the backward and the optimizer step run as compiled autograd /
eager respectively.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from benchmarks.cases import Case
from distill_jax.flops import Shape


def bert_config(shape: Shape, *, max_positions: int = 512):
    from transformers import BertConfig

    return BertConfig(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
                      num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
                      intermediate_size=shape.intermediate_size, max_position_embeddings=max_positions,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      attn_implementation="sdpa")


def build_model(shape: Shape, *, with_mlm_head: bool, checkpoint_dir: str | None = None) -> nn.Module:
    """BertForMaskedLM (OD) or BertModel without pooler; weights from checkpoint_dir when given."""
    from transformers import BertForMaskedLM, BertModel

    if checkpoint_dir is not None:
        kwargs = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      attn_implementation="sdpa", use_safetensors=True)
        if with_mlm_head:  # MiniLM-L6 has no MLM head: HF initialises one at random (fine for speed)
            return BertForMaskedLM.from_pretrained(checkpoint_dir, **kwargs)
        return BertModel.from_pretrained(checkpoint_dir, add_pooling_layer=False, **kwargs)
    config = bert_config(shape)
    return BertForMaskedLM(config) if with_mlm_head else BertModel(config, add_pooling_layer=False)


def encoder_of(model: nn.Module) -> nn.Module:
    return model.bert if hasattr(model, "bert") else model


class QKVCapture:
    """Forward hooks on one layer's self-attention query/key/value Linear; holds their outputs."""

    def __init__(self, model: nn.Module, layer_index: int):
        attention = encoder_of(model).encoder.layer[layer_index].attention.self
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [getattr(attention, name).register_forward_hook(self._hook(name))
                        for name in ("query", "key", "value")]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.outputs[name] = output
        return hook

    def get(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.outputs["query"], self.outputs["key"], self.outputs["value"]


def masked_mean(per_token_bs: torch.Tensor, mask_bs: torch.Tensor) -> torch.Tensor:
    m = mask_bs.to(per_token_bs.dtype)
    return (per_token_bs * m).sum() / m.sum().clamp(min=1.0)


def relation_log_probs(x_bsd: torch.Tensor, mask_bs: torch.Tensor, num_heads: int) -> torch.Tensor:
    """log softmax over keys of x x^T / sqrt(d_r) per relation head -> [B, R, S, S], float32."""
    b, s, d = x_bsd.shape
    x_brsd = x_bsd.float().view(b, s, num_heads, d // num_heads).transpose(1, 2)
    scores = x_brsd @ x_brsd.transpose(-1, -2) / math.sqrt(d // num_heads)
    scores = scores.masked_fill(mask_bs[:, None, None, :] == 0, -1e9)  # finite: all-pad rows stay finite
    return torch.log_softmax(scores, dim=-1)


def relation_kl(student_bsd, teacher_bsd, mask_bs, num_heads: int) -> torch.Tensor:
    log_s = relation_log_probs(student_bsd, mask_bs, num_heads)
    log_t = relation_log_probs(teacher_bsd, mask_bs, num_heads)
    kl_brs = (log_t.exp() * (log_t - log_s)).sum(-1)
    return masked_mean(kl_brs.mean(1), mask_bs)


def hs_mse(student_states, teacher_states, pairs, projections: nn.ModuleList | None, mask_bs):
    losses = []
    for k, (s_layer, t_layers) in enumerate(pairs):
        x = student_states[s_layer].float()
        if projections is not None:
            x = projections[k](x)
        target = torch.stack([teacher_states[t].float() for t in t_layers]).mean(0)
        losses.append(masked_mean(((x - target) ** 2).mean(-1), mask_bs))
    return torch.stack(losses).mean()


def od_kl(student_logits_bpv, teacher_logits_bpv, weights_bp, temperature: float = 1.0):
    log_s = torch.log_softmax(student_logits_bpv.float() / temperature, -1)
    log_t = torch.log_softmax(teacher_logits_bpv.float() / temperature, -1)
    kl_bp = (log_t.exp() * (log_t - log_s)).sum(-1)
    return temperature ** 2 * masked_mean(kl_bp, weights_bp)


def gather_rows(h_bsd: torch.Tensor, positions_bp: torch.Tensor) -> torch.Tensor:
    return torch.gather(h_bsd, 1, positions_bp[..., None].expand(-1, -1, h_bsd.shape[-1]))


class TorchDistillStep:
    """One optimizer step of the case's objective; call with a dict of int64 CPU tensors."""

    def __init__(self, case: Case, *, compile: bool = False, lr: float = 1e-4, seed: int = 0,
                 student_dir: str | None = None):
        """student_dir: start the student from this HF checkpoint (tests: the JAX student's export)."""
        torch.manual_seed(seed)
        self.case = case
        with_head = case.objective == "od"
        self.teacher = build_model(case.teacher_shape, with_mlm_head=with_head,
                                   checkpoint_dir=case.teacher_dir).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = build_model(case.student_shape, with_mlm_head=with_head,
                                   checkpoint_dir=student_dir).train()
        self.projections = None
        params = list(self.student.parameters())
        if case.objective == "hs" and case.student_shape.hidden_size != case.teacher_shape.hidden_size:
            self.projections = nn.ModuleList(
                nn.Linear(case.student_shape.hidden_size, case.teacher_shape.hidden_size)
                for _ in case.hs_pairs())
            params += list(self.projections.parameters())
        if case.objective == "minilmv2":
            self.t_qkv = QKVCapture(self.teacher, case.teacher_shape.num_layers - 1)
            self.s_qkv = QKVCapture(self.student, case.student_shape.num_layers - 1)
        # The JAX side's optimizer (distill_jax.optim, configs/common.py): AdamW eps 1e-6, decay
        # 0.01 on matrices only (not biases/LayerNorm), global-norm clipping at 1.0.
        self.params = params
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)
        self.clip_norm = 1.0
        self.autocast = case.dtype == "bfloat16"  # bf16 compute via autocast, float32 master weights
        self.teacher_autocast = case.teacher_dtype == "bfloat16"
        self.loss_fn = torch.compile(self._loss) if compile else self._loss

    def _loss(self, input_ids, attention_mask, token_type_ids, mlm_positions=None, mlm_weights=None):
        case = self.case
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        want_states = case.objective == "hs"
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.teacher_autocast):
            t_out = encoder_of(self.teacher)(**inputs, output_hidden_states=want_states)
            if case.objective == "minilmv2":
                t_qkv = [x.detach() for x in self.t_qkv.get()]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            s_out = encoder_of(self.student)(**inputs, output_hidden_states=want_states)
            if case.objective == "minilmv2":
                s_qkv = self.s_qkv.get()
                return sum(relation_kl(s, t, attention_mask, case.relation_heads)
                           for s, t in zip(s_qkv, t_qkv))
            if case.objective == "hs":
                return hs_mse(s_out.hidden_states, [h.detach() for h in t_out.hidden_states],
                              case.hs_pairs(), self.projections, attention_mask)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.teacher_autocast):
                t_logits = self.teacher.cls(gather_rows(t_out.last_hidden_state, mlm_positions))
            s_logits = self.student.cls(gather_rows(s_out.last_hidden_state, mlm_positions))
            return od_kl(s_logits, t_logits, mlm_weights)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective's value on `batch` (with the autograd graph of the student side)."""
        keys = ("input_ids", "attention_mask", "token_type_ids", "mlm_positions", "mlm_weights")
        return self.loss_fn(**{k: batch[k] for k in keys if k in batch})

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def torch_batch(batch_np: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The JAX bench's numpy batch as torch tensors (int64 ids, float weights)."""
    out = {}
    for key, value in batch_np.items():
        t = torch.from_numpy(np.asarray(value))
        out[key] = t.float() if value.dtype.kind == "f" else t.long()
    return out


def time_torch_step(step: TorchDistillStep, batch: dict[str, torch.Tensor], *, warmup: int,
                    steps: int, progress=None) -> dict:
    """First call (includes torch.compile's compile), warm-up, then `steps` timed steps."""
    t0 = time.perf_counter()
    loss = float(step(batch))
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        step(batch)
    times, cpu_times = [], []
    for i in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = float(step(batch))  # float() waits for the step (CPU torch is synchronous anyway)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if progress:
            progress(i + 1, steps, times[-1])
    return {"first_step_s": first, "step_times_s": times, "step_cpu_s": cpu_times, "final_loss": loss}
