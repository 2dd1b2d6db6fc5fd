"""The docs pages' text and code blocks, so tests run the docs exactly as written.

Pages are named by their path from the repository root ("README.md", "docs/models.md").
"""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def page_text(page: str) -> str:
    path = REPO / page
    assert path.is_file(), f"{page} is missing: a test reads its documented commands"
    return path.read_text()


def section(page: str, heading: str) -> str:
    """The lines under `heading` (a whole line such as '## Using the losses'), up to the next
    heading of the same or a higher level; '#' lines inside ``` fences are code, not headings."""
    level = heading.split(" ", 1)[0]
    assert re.fullmatch(r"#+", level), f"{heading!r} is not a markdown heading"
    lines = page_text(page).splitlines(keepends=True)
    assert heading + "\n" in lines, f"{page} lost its section {heading!r}"
    body, in_fence = [], False
    for line in lines[lines.index(heading + "\n") + 1:]:
        in_fence ^= line.startswith("```")
        match = None if in_fence else re.match(r"(#+) ", line)
        if match and len(match.group(1)) <= len(level):
            break
        body.append(line)
    return "".join(body)


def python_example(page: str, heading: str) -> str:
    """The single ```python block under `heading` of `page`."""
    blocks = re.findall(r"```python\n(.*?)```", section(page, heading), flags=re.S)
    assert len(blocks) == 1, f"{page} {heading!r} should hold exactly one python example"
    return blocks[0]
