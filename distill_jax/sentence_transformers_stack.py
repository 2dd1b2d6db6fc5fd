"""A sentence-transformers teacher's module stack, carried over to its student's export.

A sentence-transformers model directory is an HF model (module 0, `Transformer`, path "") plus a
`modules.json` listing the modules after it: typically `1_Pooling/config.json` (mean pooling)
and a `Normalize` module (no files). `SentenceTransformer(dir)` runs that pipeline; without
`modules.json` it falls back to defaults (mean pooling, no Normalize, max_seq_length 512).

The export gets the same stack with the student's width (`word_embedding_dimension`) and
`max_seq_length` = the sequence length the student was trained at. Modules with weights of the
teacher's width (Dense, ...) cannot be carried over: then no stack is written, and the reason is
returned.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"
CARRIED = (TRANSFORMER, POOLING, NORMALIZE)
# Files of the teacher's directory root that belong to the stack (module 0's settings).
ROOT_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def read_modules(model_dir: str | Path) -> list[dict] | None:
    """The entries of `model_dir`/modules.json ({idx, name, path, type}), or None when absent."""
    path = Path(model_dir) / "modules.json"
    return json.loads(path.read_text()) if path.is_file() else None


def copy_module_stack(teacher_dir: str | Path, out_dir: str | Path, *, hidden_size: int,
                      max_seq_length: int) -> tuple[list[str], str | None]:
    """Writes the teacher's sentence-transformers stack into `out_dir` for a student of width
    `hidden_size` trained at `max_seq_length` tokens.

    Returns (module types written, None), or ([], reason) when the teacher is not a
    sentence-transformers model or its stack cannot be carried over.
    """
    teacher, out = Path(teacher_dir), Path(out_dir)
    modules = read_modules(teacher)
    if modules is None:
        return [], "the teacher directory has no modules.json (not a sentence-transformers model)"
    others = [m["type"] for m in modules if m["type"] not in CARRIED]
    if others:
        return [], (f"the teacher's modules {others} have weights of the teacher's width; only "
                    f"{', '.join(t.rsplit('.', 1)[1] for t in CARRIED)} are carried over")
    for name in ROOT_FILES:
        if (teacher / name).is_file():
            shutil.copyfile(teacher / name, out / name)
    settings_path = out / "sentence_bert_config.json"
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    settings["max_seq_length"] = int(max_seq_length)
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    for module in modules:
        if module["type"] == TRANSFORMER or not module["path"]:
            continue
        source, target = teacher / module["path"], out / module["path"]
        target.mkdir(parents=True, exist_ok=True)
        if module["type"] == POOLING:
            pooling = json.loads((source / "config.json").read_text())
            pooling["word_embedding_dimension"] = int(hidden_size)
            (target / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
        elif source.is_dir():  # Normalize: no weights; copy whatever settings it has
            for file in source.iterdir():
                if file.is_file():
                    shutil.copyfile(file, target / file.name)
    return [m["type"] for m in modules], None


def pooling_summary(out_dir: str | Path) -> str:
    """'mean pooling, normalized' style description of an export's stack ('' without one)."""
    modules = read_modules(out_dir)
    if not modules:
        return ""
    parts = []
    for module in modules:
        if module["type"] == POOLING:
            config = json.loads((Path(out_dir) / module["path"] / "config.json").read_text())
            modes = [k[len("pooling_mode_"):].replace("_tokens", "").replace("_token", "")
                     for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
            parts.append(f"{'/'.join(modes) or 'mean'} pooling")
        elif module["type"] == NORMALIZE:
            parts.append("L2-normalized")
    return ", ".join(parts)
