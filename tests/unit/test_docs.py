"""The docs keep up with the package: docs/architecture.md names every module, and every
`qadist.<module>` that a docstring, comment or doc cites exists. Text only: nothing is imported."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "qadist"


def modules() -> list[str]:
    """Every module of the package as `file.py` or `folder/file.py` (no `__init__.py`)."""
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def layout_entries(doc: str) -> dict[str, str]:
    """The `qadist/` tree of the doc: each entry (`cli.py`, `train/`) -> its text, continuation lines
    included. An entry line starts with two spaces and the name; a continuation line with more."""
    block = re.search(r"```\nqadist/\n(.*?)```", doc, re.S)
    assert block, "docs/architecture.md has no ``` block starting with `qadist/`"
    entries: dict[str, str] = {}
    name = None
    for line in block.group(1).splitlines():
        head = re.match(r"  (\S+)", line)
        if head and not line.startswith("   "):
            name = head.group(1)
            entries[name] = line
        elif name and line.startswith("   "):
            entries[name] += "\n" + line
        else:
            name = None  # a line outside the package (`jobs/`)
    return entries


def test_architecture_doc_names_every_module():
    """A module is named by `folder/file.py` anywhere in the doc, or by `file.py` in its folder's
    entry of the layout (`train/   stage.py, launch.py, ...`); a top-level one in the layout."""
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    entries = layout_entries(doc)
    top_level = "\n".join(entries.values())
    missing = []
    for module in modules():
        folder, _, name = module.rpartition("/")
        text = entries.get(f"{folder}/", "") if folder else top_level
        if (folder and module in doc) or re.search(rf"(?<![\w/]){re.escape(name)}\b", text):
            continue
        missing.append(module)
    assert not missing, "docs/architecture.md does not name these modules of qadist/: " + ", ".join(missing)


CITED = re.compile(r"\bqadist(?:\.[A-Za-z_]\w*)+")


def test_every_cited_qadist_module_exists():
    """A dotted qadist name cited in code or docs: its longest prefix that is a module or package must
    exist, and nothing but a name inside that module may follow it."""
    stale = set()
    files = [
        *PACKAGE.rglob("*.py"),
        *(REPO / "docs").rglob("*.md"),
        *(REPO / "benchmarks").rglob("*.py"),
        *(REPO / "jobs").rglob("*.py"),
        *(REPO / "tests").rglob("*.py"),
        REPO / "README.md",
    ]
    # MLflow tag keys that qadist sets (qadist/registry_mlflow.py) are dotted like modules, not modules.
    tags = {"qadist.moves", "qadist.previous", "qadist.reason", "qadist.record", "qadist.source",
            "qadist.moved_to", "qadist.verdict"}  # fmt: skip
    for path in files:
        for ref in set(CITED.findall(path.read_text(encoding="utf-8"))) - tags:
            parts = ref.split(".")
            for i in range(len(parts), 1, -1):
                stem = REPO.joinpath(*parts[:i])
                if stem.with_suffix(".py").is_file():
                    break
                if stem.is_dir():
                    if i < len(parts) - 1 or (i == len(parts) - 1 and not (stem / "__init__.py").is_file()):
                        stale.add(f"{ref} ({path.relative_to(REPO)})")
                    break
            else:
                stale.add(f"{ref} ({path.relative_to(REPO)})")
    assert not stale, "cited modules that do not exist: " + ", ".join(sorted(stale))
