"""The README's "Using the losses in your own JAX project" example runs as written."""

from readme_blocks import README, python_example

SECTION = "## Using the losses in your own JAX project"


def readme_example() -> str:
    return python_example(SECTION)


def test_readme_losses_example_runs(capsys):
    namespace: dict = {}
    exec(compile(readme_example(), f"{README}:losses-example", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "((1, (1, 2)), (2, (3, 4)), (3, (5, 6)))" in printed
    terms = namespace["terms"]
    assert {"minilmv2", "hs", "minilmv2/qq"} <= set(terms)
    expected = 1.0 * float(terms["minilmv2"]) + 0.5 * float(terms["hs"])
    assert abs(float(namespace["loss"]) - expected) < 1e-4 * max(1.0, expected)
    assert set(namespace["aux_params"]["hs"]) == {"layer_1", "layer_2", "layer_3"}
