"""The one python example of a README section, so tests run the docs exactly as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_example(section_heading: str) -> str:
    """The single ```python block under `section_heading` (up to the next '## ' heading)."""
    text = README.read_text()
    assert section_heading in text, f"README.md lost its section {section_heading!r}"
    section = text.split(section_heading, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, f"{section_heading!r} should hold exactly one python example"
    return blocks[0]
