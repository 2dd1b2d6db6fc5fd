"""The run's export: the student as an HF directory that describes itself, written atomically.

`export_student` writes, into <workdir>/export:
  config.json, model.safetensors, tokenizer files     models.export_pretrained
  tokenizer_config.json name_or_path = the export     (not the teacher's name)
  modules.json, 1_Pooling/, sentence_bert_config.json  when the teacher is a sentence-transformers
                                                      model (distill_jax/sentence_transformers_stack.py)
  README.md                                           the model card (distill_jax/model_card.py)
Every file is mode 0644 and every directory 0755 (safetensors writes 0600), so other users of a
shared disk can read it.

Atomic: a local export is built in a temporary directory beside the target and renamed into
place, so <workdir>/export is either the previous export or the whole new one. A gs:// export is
built locally, copied file by file, and marked complete by an EXPORT_COMPLETE file written last
(removed first when an older export is overwritten).

Push to the hub: `hf upload <user>/<repo> <workdir>/export` (huggingface_hub's CLI, installed with
transformers); the README.md becomes the model page.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from etils import epath

from distill_jax import model_card
from distill_jax import sentence_transformers_stack as st_stack

COMPLETE_MARKER = "EXPORT_COMPLETE"


def set_tokenizer_name(out_dir: Path, name: str) -> None:
    """tokenizer_config.json's name_or_path -> `name` (it otherwise keeps the teacher's)."""
    path = out_dir / "tokenizer_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        config["name_or_path"] = name
        path.write_text(json.dumps(config, indent=2) + "\n")


def make_readable(root: Path) -> None:
    """Files 0644, directories 0755 under `root` (and root itself)."""
    os.chmod(root, 0o755)
    for path in root.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _render_card(local_dir: Path, summary: Mapping, export_name: str,
                 evaluation: Mapping[str, float] | None) -> str:
    """The README.md of the export in `local_dir` (its config.json and module stack read there)."""
    architecture = json.loads((local_dir / "config.json").read_text())["architectures"][0]
    return model_card.render_model_card(summary, export_dir=export_name, architecture=architecture,
                                        sentence_transformers=st_stack.pooling_summary(local_dir),
                                        evaluation=evaluation)


def write_export(model, local_dir: Path, *, teacher_dir: str, summary: Mapping, export_name: str,
                 evaluation: Mapping[str, float] | None = None) -> dict:
    """Writes the whole export into the (new, empty) local directory `local_dir`; returns facts for
    summary.json: {"sentence_transformers": [module types] or the reason there are none}."""
    from distill_jax.models import export_pretrained

    export_pretrained(model, local_dir, tokenizer_dir=teacher_dir)
    set_tokenizer_name(local_dir, export_name)
    seq_len = int(summary["config"]["data"]["seq_len"])
    modules, reason = st_stack.copy_module_stack(teacher_dir, local_dir, hidden_size=model.cfg.hidden_size,
                                                 max_seq_length=seq_len)
    (local_dir / "README.md").write_text(_render_card(local_dir, summary, export_name, evaluation))
    make_readable(local_dir)
    return {"sentence_transformers": modules or reason}


def rewrite_model_card(export_dir: str, summary: Mapping, evaluation: Mapping[str, float]) -> None:
    """Re-renders a finished local export's README.md with evaluation numbers measured after the
    export (e.g. the study's GLUE fine-tunes and zero-shot STS-B), in one atomic write; the weights
    and every other file stay as they are."""
    from distill_jax.atomic import write_atomic

    local = Path(export_dir)
    write_atomic(str(local / "README.md"), _render_card(local, summary, str(local), evaluation))
    os.chmod(local / "README.md", 0o644)


def export_student(model, export_dir: str, *, teacher_dir: str, summary: Mapping,
                   evaluation: Mapping[str, float] | None = None) -> dict:
    """The export of `model` (an Encoder) at `export_dir` (local or gs://), atomically; see the
    module docstring. Returns write_export's facts."""
    if "://" in export_dir:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "export"
            local.mkdir()
            facts = write_export(model, local, teacher_dir=teacher_dir, summary=summary,
                                 export_name=export_dir, evaluation=evaluation)
            out = epath.Path(export_dir)
            (out / COMPLETE_MARKER).unlink(missing_ok=True)
            for file in sorted(p for p in local.rglob("*") if p.is_file()):
                target = out / file.relative_to(local).as_posix()
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(file.read_bytes())
            (out / COMPLETE_MARKER).write_text("")
        return facts
    target = Path(export_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        facts = write_export(model, staging, teacher_dir=teacher_dir, summary=summary,
                             export_name=str(target), evaluation=evaluation)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.rename(target, old)
        os.rename(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return facts
