"""docs/losses.md's "Using the losses in your own JAX project" example runs as written."""

from doc_blocks import REPO, python_example

PAGE, SECTION = "docs/losses.md", "# Using the losses in your own JAX project"


def losses_example() -> str:
    return python_example(PAGE, SECTION)


def test_documented_losses_example_runs(capsys):
    namespace: dict = {}
    exec(compile(losses_example(), f"{REPO / PAGE}:losses-example", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "((1, (1, 2)), (2, (3, 4)), (3, (5, 6)))" in printed
    terms = namespace["terms"]
    assert {"minilmv2", "hs", "minilmv2/qq"} <= set(terms)
    expected = 1.0 * float(terms["minilmv2"]) + 0.5 * float(terms["hs"])
    assert abs(float(namespace["loss"]) - expected) < 1e-4 * max(1.0, expected)
    assert set(namespace["aux_params"]["hs"]) == {"layer_1", "layer_2", "layer_3"}
