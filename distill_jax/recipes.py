"""The launch recipes (configs/*.py), described from their own source: what `distill-jax --help`
lists and what an unknown `--config=` name is answered with.

A recipe is read, not imported: its docstring, the args its `get_config` passes to
`common.parse_arg(arg, <name>=<default>, ...)`, and the `config.mode` it sets (recipes that set
none inherit common.base_config()'s DEFAULT_MODE). Reading the source needs no ml_collections and
no module the recipe imports (configs/study.py imports studies/, which the wheel does not ship).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from distill_jax.commands import recipe_dir

DEFAULT_MODE = "distill"  # configs/common.py base_config()'s mode: a recipe that sets none runs this
_NOT_RECIPES = ("__init__", "common")  # files of configs/ that hold no get_config


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str                 # file stem: --config=<name> or --config=configs/<name>.py
    path: Path
    doc: str                  # the module docstring, whole
    args: dict[str, object]   # parse_arg keyword -> its default (a literal; `...` when computed)
    mode: str                 # the config.mode it sets (DEFAULT_MODE when it sets none)

    @property
    def summary(self) -> str:
        """The docstring's first paragraph on one line."""
        return " ".join(self.doc.split("\n\n")[0].split())


def recipes(directory: Path | None = None) -> list[Recipe]:
    """Every recipe in `directory` (default recipe_dir()), by name."""
    directory = directory or recipe_dir()
    return [describe(p) for p in sorted(directory.glob("*.py")) if p.stem not in _NOT_RECIPES]


def describe(path: Path) -> Recipe:
    tree = ast.parse(Path(path).read_text(), str(path))
    args: dict[str, object] = {}
    mode = DEFAULT_MODE
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called_name(node.func) == "parse_arg":
            for keyword in node.keywords:
                try:
                    args[keyword.arg] = ast.literal_eval(keyword.value)
                except ValueError:  # computed (e.g. a path from the environment)
                    args[keyword.arg] = ...
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
              and any(isinstance(t, ast.Attribute) and t.attr == "mode" for t in node.targets)):
            mode = node.value.value
    return Recipe(name=Path(path).stem, path=Path(path), doc=ast.get_docstring(tree) or "",
                  args=args, mode=mode)


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def arg_usage(recipe: Recipe) -> str:
    """'steps=200 corpus=wiki runlocal': a boolean arg is a bare word that turns it on; the others
    show their default ('...' where the default is computed or empty)."""
    words = []
    for key, default in recipe.args.items():
        if isinstance(default, bool):
            words.append(key if not default else f"{key}=true")
        else:
            words.append(f"{key}={'...' if default in (..., '') else default}")
    return " ".join(words)
