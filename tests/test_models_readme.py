"""The README's "Models: load, run, export" example runs as written (real teacher, real tokenizer)."""

import pathlib
import re

import transformers

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Models: load, run, export"
EXPORT_DIR = "/tmp/student-3x384"


def readme_example() -> str:
    text = README.read_text()
    assert SECTION in text, f"README.md lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section should hold exactly one python example"
    assert EXPORT_DIR in blocks[0]
    return blocks[0]


def test_readme_models_example_runs(tmp_path, capsys):
    export_dir = tmp_path / "student"
    code = readme_example().replace(EXPORT_DIR, str(export_dir))
    namespace: dict = {}
    exec(compile(code, f"{README}:models-example", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    seq = namespace["batch"]["input_ids"].shape[1]
    assert printed[1] == f"7 (2, {seq}, 384)"
    assert printed[2] == f"(2, {seq}, 384) (2, 12, {seq}, {seq})"
    assert printed[3] == f"(2, {seq}, 30522)"
    assert printed[4] == "(2, 2)"
    _, info = transformers.AutoModelForMaskedLM.from_pretrained(export_dir, output_loading_info=True)
    assert not info["missing_keys"]
