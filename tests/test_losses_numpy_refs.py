"""Independent float64 numpy implementations of every loss, written from the issue's formulas with
explicit loops over examples / heads / valid rows (no code shared with distill_jax.losses), plus
hand-computed cases that pin the references themselves. Other test_losses_* files import them."""

import math

import numpy as np


def np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
    """sum_k p_k log(p_k / q_k) over the last axis, with 0 log 0 = 0."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(-1)


def ref_od(s_logits, t_logits, mask, temperature):
    total, count = 0.0, 0
    for idx in np.ndindex(*np.shape(mask)):
        if mask[idx]:
            p_t = np_softmax(t_logits[idx] / temperature)
            p_s = np_softmax(s_logits[idx] / temperature)
            total += temperature ** 2 * np_kl(p_t, p_s)
            count += 1
    return total / count if count else 0.0


def ref_mlm_ce(s_logits, labels, mask):
    total, count = 0.0, 0
    for idx in np.ndindex(*np.shape(mask)):
        if mask[idx]:
            total += -math.log(np_softmax(s_logits[idx])[labels[idx]])
            count += 1
    return total / count if count else 0.0


def ref_relation_kl(xs, xt, mask, num_relation_heads):
    """Each model splits its width into R heads; softmax(x x^T / sqrt(d_r)) over valid keys only."""
    total, rows = 0.0, 0
    for b in range(xs.shape[0]):
        valid = np.flatnonzero(mask[b])
        if valid.size == 0:
            continue
        for r in range(num_relation_heads):
            rel = []
            for x in (xt, xs):
                d = x.shape[-1] // num_relation_heads
                xr = np.asarray(x[b][valid][:, r * d:(r + 1) * d], np.float64)
                rel.append(np_softmax(xr @ xr.T / math.sqrt(d)))
            for q in range(valid.size):
                total += np_kl(rel[0][q], rel[1][q])
        rows += valid.size
    return total / (num_relation_heads * rows) if rows else 0.0


def ref_attention_kl(p_s, p_t, mask):
    total, rows = 0.0, 0
    heads = p_s.shape[1]
    for b in range(p_s.shape[0]):
        valid = np.flatnonzero(mask[b])
        for h in range(heads):
            for q in valid:
                total += np_kl(p_t[b, h, q, valid], p_s[b, h, q, valid])
        rows += valid.size
    return total / (heads * rows) if rows else 0.0


def ref_token_distance(x, y, loss):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if loss == "mse":
        return np.mean((x - y) ** 2)
    return 1.0 - x @ y / (np.linalg.norm(x) * np.linalg.norm(y))


def ref_hs(student_states, teacher_states, pairs, mask, projections, loss, one_to_many="mean_target"):
    """projections: None or a function (student_layer, x_d) -> projected x."""
    per_pair = []
    for s, ts in pairs:
        dists = []
        for b in range(mask.shape[0]):
            for i in np.flatnonzero(mask[b]):
                x = np.asarray(student_states[s][b, i], np.float64)
                if projections is not None:
                    x = projections(s, x)
                targets = [np.asarray(teacher_states[t][b, i], np.float64) for t in ts]
                if one_to_many == "mean_target":
                    dists.append(ref_token_distance(x, sum(targets) / len(targets), loss))
                else:
                    dists.append([ref_token_distance(x, y, loss) for y in targets])
        if one_to_many == "mean_target":
            per_pair.append(np.mean(dists))
        else:
            per_pair.append(np.mean(np.mean(np.asarray(dists), axis=0)))
    return float(np.mean(per_pair))


def ref_projected_mse(xs, xt, mask, kernel, bias):
    diffs = []
    for b in range(mask.shape[0]):
        for i in np.flatnonzero(mask[b]):
            x = np.asarray(xs[b, i], np.float64)
            if kernel is not None:
                x = x @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
            diffs.append(np.mean((x - np.asarray(xt[b, i], np.float64)) ** 2))
    return float(np.mean(diffs)) if diffs else 0.0


def ref_tinybert(s_scores, t_scores, pairs, mask):
    per_pair = []
    for s, ts in pairs:
        sq, count = 0.0, 0
        for b in range(mask.shape[0]):
            valid = np.flatnonzero(mask[b])
            for h in range(s_scores[s - 1].shape[1]):
                for q in valid:
                    for k in valid:
                        target = np.mean([float(t_scores[t - 1][b, h, q, k]) for t in ts])
                        sq += (float(s_scores[s - 1][b, h, q, k]) - target) ** 2
                        count += 1
        per_pair.append(sq / count)
    return float(np.mean(per_pair))


# ---- the references themselves, on cases worked out by hand ---------------------------------

def test_ref_od_hand_case():
    # p_t = (3/4, 1/4), p_s = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    t = np.array([[math.log(3.0), 0.0]])
    s = np.array([[0.0, 0.0]])
    assert math.isclose(ref_od(s, t, np.array([1]), 1.0), expected, rel_tol=1e-12)
    # T = 2 on doubled logits gives the same distributions, scaled by T^2 = 4.
    assert math.isclose(ref_od(2 * s, 2 * t, np.array([1]), 2.0), 4 * expected, rel_tol=1e-12)
    # A masked-out position does not count.
    two = np.array([[0.0, 0.0], [5.0, -5.0]])
    assert math.isclose(ref_od(np.stack([s[0], two[1]]), np.stack([t[0], two[0]]), np.array([1, 0]), 1.0),
                        expected, rel_tol=1e-12)


def test_ref_relation_hand_case():
    # Two valid tokens of width 1, one relation head: student x = (1, 0), teacher x = (0, 0).
    # Teacher rows are uniform; student row 0 = softmax(1, 0), row 1 = uniform (KL 0).
    e = math.e
    row0 = 0.5 * math.log(0.5 / (e / (e + 1))) + 0.5 * math.log(0.5 / (1 / (e + 1)))
    xs = np.array([[[1.0], [0.0], [7.0]]])
    xt = np.array([[[0.0], [0.0], [-3.0]]])
    mask = np.array([[1, 1, 0]])
    assert math.isclose(ref_relation_kl(xs, xt, mask, 1), row0 / 2, rel_tol=1e-12)


def test_ref_cosine_and_tinybert_hand_cases():
    assert math.isclose(ref_token_distance([1.0, 0.0], [0.0, 2.0], "cosine"), 1.0)
    assert math.isclose(ref_token_distance([1.0, 1.0], [2.0, 2.0], "cosine"), 0.0, abs_tol=1e-12)
    s = (np.zeros((1, 1, 2, 2)),)
    t = (np.array([[[[1.0, 2.0], [3.0, 99.0]]]]),)
    # token 1 is padding: only the (0, 0) entry counts.
    assert ref_tinybert(s, t, ((1, (1,)),), np.array([[1, 0]])) == 1.0
