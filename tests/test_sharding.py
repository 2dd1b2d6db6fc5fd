"""Mesh construction and the logical-axis rules table."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from distill_jax import sharding


def test_mesh_fills_minus_one_and_names_axes():
    mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert len(jax.devices()) == 8


@pytest.mark.parametrize("sizes, message", [
    ((3, 1, 1), "but 8 devices"),
    ((-1, -1, 1), "only one of"),
    ((-1, 3, 1), "cannot fill"),
    ((0, 1, 1), "mesh.data=0"),
])
def test_mesh_bad_sizes_name_the_field(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.resolve_mesh_shape(*sizes, num_devices=8)


def test_rules_map_logical_names_and_never_reuse_a_mesh_axis():
    assert sharding.logical_to_mesh_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert sharding.logical_to_mesh_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert sharding.logical_to_mesh_spec(("batch", None)) == P(("data", "fsdp"), None)
    # "heads" and "mlp" both want "tensor": the second dim falls back to replicated.
    assert sharding.logical_to_mesh_spec(("heads", "mlp")) == P("tensor", None)
    assert sharding.logical_to_mesh_spec(None) == P()


def test_global_batch_from_local_single_process():
    mesh = sharding.make_mesh(data=4, fsdp=2, tensor=1)
    local = {"input_ids": np.arange(8 * 5, dtype=np.int32).reshape(8, 5)}
    batch = sharding.global_batch_from_local(local, mesh)
    np.testing.assert_array_equal(np.asarray(batch["input_ids"]), local["input_ids"])
    assert batch["input_ids"].sharding.spec == P(("data", "fsdp"), None)
