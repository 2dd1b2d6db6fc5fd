"""Turning the logical axis names on model parameters into NamedShardings, and creating models
already sharded on a mesh (abstract init -> shardings -> jax.jit(init, out_shardings=...)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from distill_jax.models.layers import LOGICAL_AXES_KEY
from distill_jax.sharding import DEFAULT_RULES, logical_to_mesh_spec

M = TypeVar("M", bound=nnx.Module)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def logical_axes_of(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a parameter was created with (None for untagged variables)."""
    return variable.get_metadata().get(LOGICAL_AXES_KEY)


def state_shardings(model_or_state: nnx.Module | nnx.State, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> nnx.State:
    """NamedSharding for every variable, same tree as `nnx.state(model)` (each Variable's value
    replaced by its NamedSharding, as nnx.get_named_sharding does). Untagged variables are replicated.

    Use it as `out_shardings` / `in_shardings` of jax.jit for the model state, or with jax.device_put.
    """
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return jax.tree.map(
        lambda v: v.replace(NamedSharding(mesh, logical_to_mesh_spec(logical_axes_of(v), rules))),
        state, is_leaf=_is_variable)


def create_sharded(make_model: Callable[[], M], mesh: Mesh,
                   rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> M:
    """Builds `make_model()` with every parameter created directly in its sharding on `mesh`
    (never materialised whole on one device). `make_model` must be a pure constructor, e.g.
    `lambda: Encoder(cfg, rngs=nnx.Rngs(0))`.
    """
    abstract = nnx.eval_shape(make_model)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    def init():
        return nnx.state(make_model())

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
