"""The builtin offline corpus: docstrings of the CPython standard library.

Every machine with Python has these files, so the quickstart needs no download. The text is real
English technical prose written by people: module, class and function docstrings, prose comment
blocks (consecutive `#` lines, kept when at least 60 characters and mostly letters), and the
language-reference topics that `pydoc` ships in `pydoc_data/topics.py`.

One document per source module: its docstrings in source order (module, then classes and functions
depth-first), each cleaned with `inspect.cleandoc`, then its prose comment blocks, joined by blank
lines; one document per pydoc topic. Modules are visited in sorted path order, so the corpus is deterministic for a given Python
build. Test suites, IDLE, lib2to3, turtledemo, site-packages and the `encodings` codecs (boilerplate
docstrings) are skipped: they are code fixtures or repetitive, not prose.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
import sysconfig
from collections.abc import Iterator

# Bump when the extraction changes: it is part of the cache key.
BUILTIN_CORPUS_VERSION = 3

_SKIP_DIRS = frozenset({
    "test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo", "site-packages",
    "dist-packages", "__pycache__", "encodings", "ensurepip", "venv", "config-3.11",
})
# Comment blocks shorter than this, or with fewer letters, are code notes ("XXX", "noqa", tables).
_MIN_COMMENT_CHARS = 60
_MIN_COMMENT_LETTER_FRACTION = 0.85
# Docstrings shorter than this are mostly "Return self." style stubs.
_MIN_DOCSTRING_CHARS = 20


def stdlib_dir() -> str:
    """Directory of the running interpreter's pure-Python standard library."""
    return sysconfig.get_paths()["stdlib"]


def builtin_fingerprint() -> dict:
    """What the builtin corpus depends on (part of the cache key)."""
    return {"kind": "builtin", "version": BUILTIN_CORPUS_VERSION,
            "python": sys.version, "stdlib": stdlib_dir()}


def _module_paths(root: str) -> list[str]:
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps os.walk out of skipped trees; sorting makes the order fixed.
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.startswith(("test", "config-")))
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                paths.append(os.path.join(dirpath, name))
    paths.sort(key=lambda p: os.path.relpath(p, root))
    return paths


def _docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    nodes = [tree]
    while nodes:
        node = nodes.pop(0)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= _MIN_DOCSTRING_CHARS:
                yield doc
        children = [c for c in ast.iter_child_nodes(node)
                    if isinstance(c, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        nodes[0:0] = children  # depth-first, source order


def _comment_blocks(source: str, tree: ast.AST) -> list[str]:
    """Runs of full-line comments on consecutive lines, each joined into one line of prose.

    A line scan, not `tokenize` (ten times slower): lines inside multi-line string literals are
    excluded using the AST, so a '#' line in a template string is not mistaken for a comment.
    Trailing comments after code are skipped; they are short notes, rarely prose.
    """
    lines = source.splitlines()
    in_string = bytearray(len(lines) + 2)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.end_lineno is not None and node.end_lineno > node.lineno):
            in_string[node.lineno - 1:node.end_lineno] = b"\x01" * (node.end_lineno - node.lineno + 1)
    blocks, current = [], []
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped.startswith("#") and not in_string[i]:
            current.append(stripped.lstrip("#!").strip())
        elif current:
            blocks.append(" ".join(current).strip())
            current = []
    if current:
        blocks.append(" ".join(current).strip())

    def is_prose(block: str) -> bool:
        letters = sum(c.isalpha() or c == " " for c in block)
        return len(block) >= _MIN_COMMENT_CHARS and letters >= _MIN_COMMENT_LETTER_FRACTION * len(block)

    return [b for b in blocks if is_prose(b)]


def _pydoc_topics(root: str) -> list[str]:
    path = os.path.join(root, "pydoc_data", "topics.py")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            topics = ast.literal_eval(node.value)
            return [inspect.cleandoc(topics[k]) for k in sorted(topics) if topics[k].strip()]
    return []


def iter_builtin_documents(root: str | None = None) -> Iterator[str]:
    """Yields the builtin corpus documents in a fixed order (stdlib modules, then pydoc topics)."""
    root = root or stdlib_dir()
    for path in _module_paths(root):
        if os.path.relpath(path, root).startswith("pydoc_data"):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            tree = ast.parse(source, filename=path)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or legacy encodings; not prose we need
        docs = list(_docstrings(tree)) + _comment_blocks(source, tree)
        if docs:
            yield "\n\n".join(docs)
    yield from _pydoc_topics(root)
