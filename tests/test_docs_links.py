"""The docs link to each other by relative paths (README.md -> docs/*.md -> docs/results/*.md and
the study's report dirs); a page that moves must take its links along. Every relative link of every
markdown page in the repository resolves to a file or directory that exists."""

import re

from doc_blocks import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")   # [text](target) and ![alt](target)


def markdown_pages():
    pages = [REPO / "README.md", REPO / "BUILD_NOTES.md", *sorted((REPO / "docs").rglob("*.md"))]
    return [p for p in pages if "records" not in p.parts]


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in markdown_pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):   # a URL, or a link inside the page
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)
    assert len(markdown_pages()) > 10   # README, BUILD_NOTES, the guides and the results pages were seen


def test_no_generator_writes_the_readme():
    """Generated blocks live in docs/results/ pages; the README holds no generator's markers."""
    from benchmarks.plan_table import PLAN_MARKERS, PLAN_PAGE
    from studies.write_docs import BUDGET_MARKERS, COST_MARKERS, SHAPES_MARKERS, STUDY_PAGE, TABLE_MARKERS

    readme = (REPO / "README.md").read_text()
    for start, end in (PLAN_MARKERS, TABLE_MARKERS, COST_MARKERS, BUDGET_MARKERS, SHAPES_MARKERS):
        assert start not in readme and end not in readme
    study_page = (REPO / STUDY_PAGE).read_text()
    for start, end in (TABLE_MARKERS, COST_MARKERS, BUDGET_MARKERS, SHAPES_MARKERS):
        assert start in study_page and end in study_page
    assert PLAN_PAGE.parent == REPO / "docs" / "results" and PLAN_MARKERS[0] in PLAN_PAGE.read_text()
