"""MkDocs hooks: the pages generated at build time (``mkdocs.yml`` names this file under ``hooks``).

* ``configuration.md`` (a stub in git) -- the configuration reference, read from the pydantic models of
  ``toolkit/config.py``: every key, its type or allowed values, default and bounds come from the
  models; the prose comes from ``docs/_gen/config_notes.yaml`` (or, where that has none, the
  field's own ``Field(description=...)``).  A key with no prose, or prose for a key the models do
  not have, is a build warning, so ``mkdocs build --strict`` fails until the page is complete.
* ``benchmark-history.md`` (a stub in git) -- ``benchmarks/RESULTS.md`` (the benchmarks' lab notebook, which the
  benchmark authors append to) as a page of the site.
"""

from __future__ import annotations

import logging
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("mkdocs.hooks.kmeans_docs")


# -- the configuration reference ---------------------------------------------------------------


def _config_module() -> types.ModuleType:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import toolkit.config  # pydantic + yaml + toolkit.names only: cheap, no MLflow

    return toolkit.config


def _is_section(annotation: Any, cfg: types.ModuleType) -> bool:
    """A nested settings model (``data``, ``search.fidelity``...), as opposed to a value type."""
    return (isinstance(annotation, type) and issubclass(annotation, cfg._Strict)
            and annotation not in (cfg.IntRange, cfg.FloatRange))


def _type_text(annotation: Any, cfg: types.ModuleType) -> str:
    """How a YAML author writes a value of ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`".replace("|", "\\|") if not isinstance(a, bool) else f"`{str(a).lower()}`"
                            for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        text = " or ".join(_type_text(a, cfg) for a in parts)
        return text + (" or `null`" if len(parts) < len(typing.get_args(annotation)) else "")
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {_type_text(item, cfg)}"
    if annotation is cfg.IntRange:
        return "`{low, high, step}`"
    if annotation is cfg.FloatRange:
        return "`{low, high, log}`"
    names = {int: "whole number", float: "number", str: "text", bool: "`true` \\| `false`"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return "`{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _bounds_text(field: Any) -> str:
    marks = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "length ≥"}
    out = []
    for meta in field.metadata:
        for attr, sign in marks.items():
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"{sign} {value}")
    return ", ".join(out)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rows(model: type, prefix: str, cfg: types.ModuleType, notes: dict, used: set[str],
          sections: list[tuple[str, type]]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        if field.exclude:  # bookkeeping, not a key (source_path)
            continue
        key = f"{prefix}{name}"
        if _is_section(field.annotation, cfg):
            sections.append((key, field.annotation))
            continue
        note = notes.get(key)
        used.add(key)
        if isinstance(note, dict):
            default, meaning = note.get("default"), note.get("meaning")
        else:
            default, meaning = None, note
        meaning = meaning or field.description
        if not meaning:
            log.warning("configuration reference: %s has no description: add it to docs/_gen/config_notes.yaml "
                        "(or a Field(description=...) in toolkit/config.py)", key)
            meaning = ""
        bounds = _bounds_text(field)
        rows.append(f"| `{name}` | {_type_text(field.annotation, cfg)}{' (' + bounds + ')' if bounds else ''} "
                    f"| {default or _default_text(field)} | {_cell(meaning)} |")
    return rows


def _doc_intro(model: type) -> str:
    """The first paragraph of a settings model's own docstring, as Markdown."""
    doc = (model.__doc__ or "").strip()
    if not doc or model.__doc__ == getattr(model.__mro__[1], "__doc__", None):
        return ""
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "`")


def configuration_page() -> str:
    """The configuration reference, as Markdown."""
    cfg = _config_module()
    notes = yaml.safe_load((REPO / "docs/_gen/config_notes.yaml").read_text())
    used: set[str] = set()
    out = [notes.pop("_page").rstrip(), ""]
    queue: list[tuple[str, type]] = [("", cfg.ExperimentConfig)]
    while queue:
        key, model = queue.pop(0)
        nested: list[tuple[str, type]] = []
        rows = _rows(model, f"{key}." if key else "", cfg, notes, used, nested)
        out += [f"## {'Top level' if not key else f'`{key}`'}", ""]
        intro = notes.get(f"_{key or 'top'}") or _doc_intro(model)
        used.add(f"_{key or 'top'}")
        if intro:
            out += [intro.rstrip(), ""]
        out += ["| key | type | default | meaning |", "|-----|------|---------|---------|", *rows, ""]
        extra = notes.get(f"_{key or 'top'}_after")
        used.add(f"_{key or 'top'}_after")
        if extra:
            out += [extra.rstrip(), ""]
        queue[:0] = nested  # a section's subsections follow it (search, search.space, search.fidelity)
    for stale in sorted(set(notes) - used):
        log.warning("configuration reference: docs/_gen/config_notes.yaml describes %r, which no config "
                    "model has: remove it or fix the key", stale)
    return "\n".join(out) + "\n"


# -- the benchmark history ---------------------------------------------------------------------


#: The notebook's commands are records of benchmark runs, not examples (tests/test_docs.py).
_RECORDED = ("<!-- not-run: a recorded benchmark run (minutes on the benchmark VM); "
             "tests/test_benchmarks.py runs each section on tiny data -->")


def history_page() -> str:
    text = (REPO / "benchmarks/RESULTS.md").read_text()
    text = text.replace("](../docs/", "](")  # links to the site from the notebook's own folder
    return re.sub(r"^(?=```(?:bash|sh|shell|console|python)\b)", _RECORDED + "\n", text, flags=re.M)


# -- mkdocs hooks --------------------------------------------------------------------------------

#: Pages whose committed file is a stub (so links to it work on GitHub too), and what replaces it.
GENERATED = {"configuration.md": configuration_page, "benchmark-history.md": history_page}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """The generated pages' text in place of their stubs."""
    make = GENERATED.get(page.file.src_uri)
    return make() if make else markdown


if __name__ == "__main__":  # python3 docs/_gen/hooks.py configuration|benchmark-history
    print(GENERATED[f"{sys.argv[1] if len(sys.argv) > 1 else 'configuration'}.md"](), end="")
