"""Which student layer learns from which teacher layer(s).

Layers are numbered as HF's ``hidden_states``: 0 is the embedding output, i (1..L) the output of
transformer layer i. A layer map is a tuple of pairs ``(student_layer, teacher_layers)`` where
``teacher_layers`` is a sorted tuple of one or more teacher layers (1-to-N pairs average them; see
``hs.py``). Pairs come in increasing student order.

Strategies (L_S student layers, L_T teacher layers, i = 1..L_S):
  last          ((L_S, (L_T,)),)
  uniform       i -> floor(i * L_T / L_S)                       (1-to-1; needs L_S <= L_T)
  uniform_cons  i -> floor((i-1) * L_T / L_S) + 1 .. floor(i * L_T / L_S)
                contiguous blocks that use every teacher layer exactly once (needs L_S <= L_T)
  uniform_last  i -> {floor(i * L_T / L_S), L_T}                (the last pair is just (L_S, (L_T,)))
  identity      i -> i                                          (needs L_S == L_T)
  explicit      a sequence of (student, teacher) or (student, [teacher, ...]) pairs, validated
With ``include_embeddings=True`` the pair (0, (0,)) is prepended (embedding output to embedding
output).

Everything here is plain Python on ints: it runs once in ``build_objective``, before any compile,
and raises ValueError naming the problem and the fix.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Union

LayerPair = tuple[int, tuple[int, ...]]
LayerMap = tuple[LayerPair, ...]
LayerMapSpec = Union[str, Sequence]

STRATEGIES = ("last", "uniform", "uniform_cons", "uniform_last", "identity")


def _check_depths(num_student_layers: int, num_teacher_layers: int) -> None:
    for name, value in (("num_student_layers", num_student_layers),
                        ("num_teacher_layers", num_teacher_layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive int (the number of transformer layers)")


def _uniform_teacher_layer(i: int, num_student_layers: int, num_teacher_layers: int) -> int:
    return (i * num_teacher_layers) // num_student_layers


def layer_map(strategy: LayerMapSpec, num_student_layers: int, num_teacher_layers: int, *,
              include_embeddings: bool = False, field: str = "map") -> LayerMap:
    """Returns the layer map as ((student_layer, (teacher_layer, ...)), ...).

    Args:
      strategy: one of STRATEGIES, or an explicit sequence of pairs ``(s, t)`` / ``(s, [t1, t2])``
        with 0 <= s <= L_S and 0 <= t <= L_T (0 = embeddings, only as 0 -> 0).
      num_student_layers, num_teacher_layers: transformer depths L_S, L_T.
      include_embeddings: prepend (0, (0,)) for a named strategy (an explicit list says it itself).
      field: the config field name used in error messages.
    """
    _check_depths(num_student_layers, num_teacher_layers)
    ls, lt = num_student_layers, num_teacher_layers
    if isinstance(strategy, str):
        if strategy == "last":
            pairs = [(ls, (lt,))]
        elif strategy == "identity":
            if ls != lt:
                raise ValueError(
                    f"{field}='identity' needs equal depths but the student has {ls} layers and the "
                    f"teacher {lt}; use 'uniform', 'uniform_cons', 'uniform_last' or an explicit list")
            pairs = [(i, (i,)) for i in range(1, ls + 1)]
        elif strategy in ("uniform", "uniform_cons", "uniform_last"):
            if ls > lt:
                raise ValueError(
                    f"{field}={strategy!r} needs at most as many student layers as teacher layers, got "
                    f"{ls} student > {lt} teacher; use 'last' or an explicit list of pairs")
            if strategy == "uniform":
                pairs = [(i, (_uniform_teacher_layer(i, ls, lt),)) for i in range(1, ls + 1)]
            elif strategy == "uniform_cons":
                pairs = [(i, tuple(range(((i - 1) * lt) // ls + 1, (i * lt) // ls + 1)))
                         for i in range(1, ls + 1)]
            else:
                pairs = [(i, tuple(sorted({_uniform_teacher_layer(i, ls, lt), lt})))
                         for i in range(1, ls + 1)]
        else:
            raise ValueError(
                f"{field}={strategy!r} is not a layer-map strategy; use one of {', '.join(STRATEGIES)} "
                f"or an explicit list of (student_layer, teacher_layer) pairs")
        if include_embeddings:
            pairs = [(0, (0,))] + pairs
        return tuple(pairs)
    return _explicit_map(strategy, ls, lt, field)


def _as_layer_index(value, upper: int, who: str, field: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # ints and numpy ints; floats and strings are refused
    except TypeError:
        raise ValueError(f"{field}: {who} layer {value!r} must be an int in 0..{upper}") from None
    if not 0 <= value <= upper:
        raise ValueError(
            f"{field}: {who} layer {value} is out of range; {who} layers are 0..{upper} "
            f"(0 = embeddings, {upper} = last layer; negative indices are not accepted here)")
    return value


def _explicit_map(pairs, ls: int, lt: int, field: str) -> LayerMap:
    if isinstance(pairs, (bytes, dict)) or not isinstance(pairs, Sequence) or len(pairs) == 0:
        raise ValueError(f"{field}={pairs!r}: give a strategy name ({', '.join(STRATEGIES)}) or a non-empty "
                         f"list of (student_layer, teacher_layer) pairs")
    out: list[LayerPair] = []
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"{field}: entry {pair!r} is not a (student_layer, teacher_layer) pair")
        s = _as_layer_index(pair[0], ls, "student", field)
        t_raw = pair[1]
        t_list = list(t_raw) if isinstance(t_raw, Sequence) and not isinstance(t_raw, str) else [t_raw]
        if not t_list:
            raise ValueError(f"{field}: entry {pair!r} lists no teacher layer")
        ts = tuple(sorted({_as_layer_index(t, lt, "teacher", field) for t in t_list}))
        if (s == 0 or 0 in ts) and (s, ts) != (0, (0,)):
            raise ValueError(f"{field}: entry {pair!r} mixes embeddings (layer 0) with transformer layers; "
                             f"embeddings map only as 0 -> 0")
        out.append((s, ts))
    if len({s for s, _ in out}) != len(out):
        raise ValueError(f"{field}: a student layer appears twice in {pairs!r}; list its teacher layers in one "
                         f"pair, e.g. (3, [5, 6])")
    return tuple(sorted(out))


def check_no_embeddings(pairs: LayerMap, field: str) -> None:
    """Attention terms have no layer 0 (embeddings carry no attention)."""
    if any(s == 0 or 0 in ts for s, ts in pairs):
        raise ValueError(f"{field}: layer 0 (embeddings) has no attention; map transformer layers 1..L only")
