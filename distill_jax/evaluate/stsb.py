"""Zero-shot sentence similarity: how well an encoder embeds sentences, with no fine-tuning.

Each sentence is embedded as the attention-masked mean of the encoder's last hidden states (the
pooling of sentence-transformers models such as all-MiniLM-L6-v2, the study's teacher); a pair's
similarity is the cosine of its two embeddings; the score is Spearman's rank correlation x 100
between those cosines and the gold similarity (0-5) over STS-B dev (1500 pairs), as the
sentence-embedding literature (SBERT, MTEB's STSBenchmark) reports it. Spearman, because a
cosine is not on the gold's scale: only the ordering is compared.

    from distill_jax.evaluate import stsb
    stsb.zero_shot_stsb_dir("path/to/export", glue_dir="../shared/data/glue")   # {"spearman": 82.1, ...}

Everything runs through our own Flax encoder (distill_jax.models), in float32, deterministic
(no dropout). Seconds per model on a CPU for the 3000 sentences.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill_jax.evaluate import glue_metrics

MAX_LEN = 128        # tokens per sentence (STS-B sentences are far shorter: nothing is truncated)
BATCH_SIZE = 64      # sentences per forward
PAD_MULTIPLE = 32    # batches pad to a multiple of this: few distinct shapes to compile (2 on STS-B dev)


def mean_pool(hidden_bsd: jax.Array, mask_bs: jax.Array) -> jax.Array:
    """Masked mean over tokens: [B, S, D] x [B, S] (1 valid, 0 padding) -> float32 [B, D]."""
    mask = mask_bs.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden_bsd.astype(jnp.float32) * mask, axis=1)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def cosine_rows(a_nd: np.ndarray, b_nd: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair: [N, D] x [N, D] -> float64 [N] (0 for a zero row)."""
    a, b = np.asarray(a_nd, np.float64), np.asarray(b_nd, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide(np.sum(a * b, axis=1), norms, out=np.zeros(a.shape[0]), where=norms > 0)


def score_pairs(emb_a: np.ndarray, emb_b: np.ndarray, gold: np.ndarray) -> dict:
    """Spearman and Pearson x 100 between the pairs' cosines and the gold scores."""
    cos = cosine_rows(emb_a, emb_b)
    return {"spearman": 100.0 * glue_metrics.spearman(cos, gold), "pearson": 100.0 * glue_metrics.pearson(cos, gold),
            "pairs": int(len(gold))}


def read_stsb(glue_dir: str, split: str = "dev"):
    """STS-B pairs from <glue_dir>/STS-B/<split>.tsv: Examples (text_a, text_b, labels = gold 0-5)."""
    from distill_jax.evaluate.data import read_glue_tsv
    from distill_jax.evaluate.tasks import get_task

    return read_glue_tsv(get_task("stsb"), split, glue_dir)


class SentenceEmbedder:
    """Mean-pooled last hidden states of an nnx Encoder, one jitted forward per padded length.

    Built once per model graph; `embed` / `score` take the parameters to use (`state`: an nnx State
    or pure dict of that graph, e.g. a training student's current ones), by default those it was
    built with (`from_model`).
    """

    def __init__(self, graphdef, tokenizer, *, state=None, max_len: int = MAX_LEN, batch_size: int = BATCH_SIZE):
        self.graphdef, self.state = graphdef, state
        self.tokenizer, self.max_len, self.batch_size = tokenizer, int(max_len), int(batch_size)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        def forward(state, ids_bs, mask_bs):
            model = nnx.merge(self.graphdef, state)
            out = model(ids_bs, mask_bs, jnp.zeros_like(ids_bs))
            return mean_pool(out.hidden_states[-1], mask_bs)

        self._forward = jax.jit(forward)

    @classmethod
    def from_model(cls, encoder: nnx.Module, tokenizer, **kwargs) -> "SentenceEmbedder":
        graphdef, state = nnx.split(encoder)
        return cls(graphdef, tokenizer, state=state, **kwargs)

    @classmethod
    def from_graphdef(cls, graphdef, tokenizer, **kwargs) -> "SentenceEmbedder":
        """For parameters supplied at each call (the trainer's student)."""
        return cls(graphdef, tokenizer, **kwargs)

    def embed(self, sentences: list[str], state=None) -> np.ndarray:
        """float32 [N, D]: one embedding per sentence, in the given order. state: an nnx State of
        this model (default: the one it was built with)."""
        state = self.state if state is None else state
        if state is None:
            raise ValueError("SentenceEmbedder.embed: no parameters (built from a graphdef: pass state=)")
        ids = self.tokenizer(list(sentences), truncation=True, max_length=self.max_len, padding=False,
                             return_attention_mask=False)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")   # similar lengths share a batch
        out = np.zeros((len(ids), 0), np.float32)
        for start in range(0, len(ids), self.batch_size):
            rows = order[start:start + self.batch_size]
            longest = max(len(ids[i]) for i in rows)
            length = min(self.max_len, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)
            batch = np.full((self.batch_size, length), self.pad_id, np.int32)   # full rows: one shape per length
            mask = np.zeros((self.batch_size, length), np.int32)
            for r, i in enumerate(rows):
                batch[r, :len(ids[i])], mask[r, :len(ids[i])] = ids[i], 1
            pooled = np.asarray(self._forward(state, batch, mask))[:len(rows)]
            if out.shape[1] == 0:
                out = np.zeros((len(ids), pooled.shape[1]), np.float32)
            out[rows] = pooled
        return out

    def score(self, examples, state=None) -> dict:
        """{"spearman", "pearson" (x 100), "pairs", "seconds"} on STS-B-style Examples."""
        start = time.perf_counter()
        emb = self.embed([*examples.text_a, *examples.text_b], state)
        n = len(examples.text_a)
        return score_pairs(emb[:n], emb[n:], np.asarray(examples.labels, np.float64)) | {
            "seconds": time.perf_counter() - start}


def score_model_dir(model_dir: str, examples, *, max_len: int = MAX_LEN, batch_size: int = BATCH_SIZE) -> dict:
    """Loads an HF-format encoder (a directory: an exported student; or a model id such as the
    offline teacher's) with its tokenizer and scores it on STS-B-style Examples: {"spearman", "pearson", "pairs", "seconds"}."""
    from distill_jax.data.tokenization import load_tokenizer
    from distill_jax.models import load_pretrained, resolve_model_dir

    model_dir = resolve_model_dir(model_dir)   # a directory, or an id the offline resolver knows
    model, _cfg, _report = load_pretrained(model_dir, dtype="float32", param_dtype="float32", with_mlm_head=False)
    embedder = SentenceEmbedder.from_model(model, load_tokenizer(os.fspath(model_dir)), max_len=max_len,
                                           batch_size=batch_size)
    return embedder.score(examples)


def zero_shot_stsb_dir(model_dir: str, glue_dir: str, *, split: str = "dev", max_len: int = MAX_LEN,
                       batch_size: int = BATCH_SIZE) -> dict:
    """score_model_dir on <glue_dir>/STS-B/<split>.tsv (a missing file is one line naming it,
    before the model loads)."""
    return score_model_dir(model_dir, read_stsb(glue_dir, split), max_len=max_len, batch_size=batch_size)
