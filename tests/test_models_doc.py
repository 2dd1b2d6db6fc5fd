"""docs/models.md's "Models: load, run, export" example runs as written (real teacher, real tokenizer)."""

import transformers

from doc_blocks import REPO, python_example

PAGE, SECTION = "docs/models.md", "# Models: load, run, export"
EXPORT_DIR = "/tmp/student-3x384"


def models_example() -> str:
    block = python_example(PAGE, SECTION)
    assert EXPORT_DIR in block
    return block


def test_documented_models_example_runs(tmp_path, capsys):
    export_dir = tmp_path / "student"
    code = models_example().replace(EXPORT_DIR, str(export_dir))
    namespace: dict = {}
    exec(compile(code, f"{REPO / PAGE}:models-example", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    seq = namespace["batch"]["input_ids"].shape[1]
    assert printed[1] == f"7 (2, {seq}, 384)"
    assert printed[2] == f"(2, {seq}, 384) (2, 12, {seq}, {seq})"
    assert printed[3] == f"(2, {seq}, 30522)"
    assert printed[4] == "(2, 2)"
    _, info = transformers.AutoModelForMaskedLM.from_pretrained(export_dir, output_loading_info=True)
    assert not info["missing_keys"]
