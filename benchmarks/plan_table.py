"""The pod-recipe table of docs/results/plan.md: every `python -m distill_jax.plan ...` line in the
recipes' docstrings (configs/*.py: the slice each recipe is meant for), planned one after the other,
printed as a markdown table (progress on stderr):

    python -m benchmarks.plan_table > /tmp/plan_table.md
    python -m benchmarks.plan_table --write_doc             # also replace docs/results/plan.md's table
    python -m benchmarks.plan_table --only=mha_l6_h384 --json=/tmp/plan_table.json

Each flagship compile takes minutes on a 2-core machine; run it under `nice` when others work.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN_LINE = re.compile(r"python -m distill_jax\.plan --config=configs/(\w+)\.py(?::(\S+))? --topology=(\S+)")


def recipe_plans() -> list[tuple[str, str | None, str]]:
    """(recipe module, config arg, topology) for every plan command in configs/*.py docstrings."""
    out = []
    for path in sorted((REPO / "configs").glob("*.py")):
        module = importlib.import_module(f"configs.{path.stem}")
        for name, arg, topology in PLAN_LINE.findall(module.__doc__ or ""):
            if name == path.stem:
                out.append((name, arg or None, topology))
    return out


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def table_row(recipe: str, arg: str | None, r: dict) -> str:
    p = r["per_chip"]
    params = p["student_params"] + p["aux_params"] + p["teacher_params"]
    oom = r.get("out_of_memory")
    if oom:
        total, verdict = oom.get("required_bytes"), "**no** (XLA: needs more than usable)"
        headroom = (oom["usable_bytes"] - oom["required_bytes"]) if "required_bytes" in oom else None
        usable = oom.get("usable_bytes")
    else:
        total, usable, headroom = p.get("total"), r.get("hbm_usable_bytes"), r.get("headroom_bytes")
        verdict = "yes" if r.get("fits") else ("**no**" if r.get("fits") is False else "n/a")
    name = f"{recipe}{':' + arg if arg else ''}"
    return (f"| `{name}` | {r['topology']} ({r['chips']} chips) | {r['mesh']['data']}x{r['mesh']['fsdp']}x"
            f"{r['mesh']['tensor']} | {r['rows_per_chip']} x {r['seq_len']} | {_gib(params)} | "
            f"{_gib(p['optimizer_state'])} | {_gib(p.get('temporaries'))} | {_gib(total)} | {_gib(usable)} | "
            f"{_gib(headroom)} | {verdict} |")


HEADER = ("| recipe | slice | mesh data x fsdp x tensor | rows x seq per chip | parameters GiB "
          "(student + aux + teacher) | optimizer GiB | temporaries GiB | total GiB | usable HBM GiB | "
          "headroom GiB | fits |\n|---|---|---|---|---|---|---|---|---|---|---|")


PLAN_PAGE = REPO / "docs" / "results" / "plan.md"
PLAN_MARKERS = ("<!-- plan-table -->", "<!-- /plan-table -->")


def write_table(table: str, page: Path) -> None:
    """Puts `table` (and the jax / libtpu versions it was compiled with) between the page's markers."""
    import importlib.metadata as md

    import jax

    start, end = PLAN_MARKERS
    text = page.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{page}: no {start} ... {end} markers to put the table between")
    try:
        libtpu = md.version("libtpu")
    except md.PackageNotFoundError:
        libtpu = "not installed"
    stamp = (f"Compiled {time.strftime('%Y-%m-%d')} with jax {jax.__version__}, libtpu {libtpu} "
             f"(`python -m benchmarks.plan_table --write_doc`).")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{table}\n\n{stamp}\n{end}{tail}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma list of recipe modules (default: all)")
    p.add_argument("--json", default="", help="also write every plan's figures here")
    p.add_argument("--write_doc", "--write_readme", action="store_true", dest="write_doc",
                   help="replace the table between the plan-table markers of docs/results/plan.md "
                        "(--write_readme: its name from when the table lived in README.md)")
    args = p.parse_args(argv)

    from distill_jax import plan

    plan.compile_only_environment()
    only = {n for n in args.only.split(",") if n}
    rows, results = [], []
    for recipe, arg, topology in recipe_plans():
        if only and recipe not in only:
            continue
        config = importlib.import_module(f"configs.{recipe}").get_config(arg)
        t0 = time.time()
        print(f"planning {recipe}{':' + arg if arg else ''} on {topology} ...", file=sys.stderr, flush=True)
        r = plan.plan_config(config, plan.parse_topology(topology))
        print(plan.format_report(r), file=sys.stderr, flush=True)
        print(f"  ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows.append(table_row(recipe, arg, r))
        results.append({"recipe": recipe, "arg": arg, **r})
    table = f"{HEADER}\n" + "\n".join(rows)
    print(table)
    if args.write_doc:
        write_table(table, PLAN_PAGE)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
