"""Write src/dicomhub/iod/data/iod_tables.json.gz, the IOD tables dicomhub ships and reads.

dicomhub's IOD validation (dicomhub.iod) and the de-identification engine
(dicomhub.deid.iod_types) read the standard's tables from this one file, so that
they do not depend on another package's private data folder. Its sources, all
derived from the DICOM standard by the innolitics/dicom-standard project (MIT
licence, src/dicomhub/iod/data/LICENSE.txt):

* SOP class -> IOD, IOD -> modules (usage M/C/U) and module -> attributes (keyword,
  Type, the sequences it sits in): the copies highdicom ships in
  ``highdicom/_standard/`` (``--tables``; highdicom is a test dependency);
* the condition text of Type 1C/2C attributes: ``module_to_attributes.json`` of the
  ``dicom-standard`` package on PyPI (``--conditions``), which keeps each
  attribute's description; get it with
  ``pip download --no-deps dicom-standard==0.1.0`` and unzip the wheel
  (``dicom_standard-0.1.0.data/data/standard/module_to_attributes.json``).
  That edition is older than the tables: a conditional attribute it does not
  list has no condition text, and the validator skips it.

What is kept: every attribute entry (the de-identification engine needs the
Type of Type 3 attributes too) as ``[path, keyword, type, condition]``, the
path joined with "/", the condition an index into a list of distinct condition
sentences (-1 for none), cut from the description to the sentence that says
when the attribute is required. The 22 MB module table becomes about 0.5 MB
of gzip'd JSON.

Usage::

    python scripts/make_iod_tables.py --tables .venv/lib/python3.11/site-packages/highdicom/_standard \\
        --conditions /tmp/dicom_standard/module_to_attributes.json
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import re
from pathlib import Path
from typing import Any

from pydicom.datadict import keyword_for_tag

OUT = Path(__file__).resolve().parent.parent / "src" / "dicomhub" / "iod" / "data" / "iod_tables.json.gz"

_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
# The sentence that states the condition: it starts with one of these and ends at a full stop
# followed by a space and a capital (or the end): "Section C.7.6.3.1.3" has no space after its dots.
_CONDITION = re.compile(
    r"((?:Required|Shall be present|Required only|Shall be present only) if .*?\.)(?=\s+[A-Z(]|\s*$)"
)


def condition_text(description: str) -> str | None:
    """The sentence of an attribute description that says when the attribute is required."""
    text = _SPACE.sub(" ", html.unescape(_TAGS.sub(" ", description))).replace("\u00a0", " ").strip()
    match = _CONDITION.search(text)
    return match.group(1).strip() if match else None


def _tag_path(path: str) -> tuple[str, ...] | None:
    """``ct-image:00081110:00081150`` -> the keywords of the tags after the module id."""
    keywords = []
    for part in path.split(":")[1:]:
        try:
            keyword = keyword_for_tag(int(part, 16))
        except ValueError:
            return None
        if not keyword:
            return None
        keywords.append(keyword)
    return tuple(keywords)


def _conditions(path: Path) -> dict[tuple[str, tuple[str, ...]], str]:
    """(module, keyword path) -> condition sentence, for the Type 1C/2C entries."""
    out: dict[tuple[str, tuple[str, ...]], str] = {}
    for entry in json.loads(path.read_text(encoding="utf-8")):
        if entry.get("type") not in ("1C", "2C"):
            continue
        keywords = _tag_path(str(entry["path"]))
        text = condition_text(str(entry.get("description") or ""))
        if keywords and text:
            out[(str(entry["moduleId"]), keywords)] = text
    return out


def build(tables: Path, conditions_file: Path) -> dict[str, Any]:
    """The compacted tables, as written to ``iod_tables.json.gz``."""
    sop_classes = json.loads((tables / "sop_class_iod_map.json").read_text(encoding="utf-8"))
    iod_modules = json.loads((tables / "iod_module_map.json").read_text(encoding="utf-8"))
    module_attributes = json.loads((tables / "module_attribute_map.json").read_text(encoding="utf-8"))
    conditions = _conditions(conditions_file)
    texts: dict[str, int] = {}
    modules: dict[str, list[list[Any]]] = {}
    for module, entries in sorted(module_attributes.items()):
        rows = []
        for entry in entries:
            path = tuple(str(p) for p in entry["path"])
            keyword = str(entry["keyword"])
            kind = str(entry["type"])
            index = -1
            if kind in ("1C", "2C"):
                text = conditions.get((module, (*path, keyword)))
                if text is not None:
                    index = texts.setdefault(text, len(texts))
            rows.append(["/".join(path), keyword, kind, index])
        modules[module] = rows
    return {
        "source": (
            "innolitics/dicom-standard (MIT): IOD and module tables as shipped by highdicom; "
            "condition text from the dicom-standard 0.1.0 package"
        ),
        "sop_classes": dict(sorted(sop_classes.items())),
        "iods": {
            iod: [[str(m["key"]), str(m["usage"])] for m in mods] for iod, mods in sorted(iod_modules.items())
        },
        "modules": modules,
        "conditions": list(texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tables", type=Path, required=True, help="highdicom's _standard folder")
    parser.add_argument(
        "--conditions", type=Path, required=True, help="dicom-standard's module_to_attributes.json"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = build(args.tables, args.conditions)
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    # mtime=0: the same tables give the same bytes, so a regenerated file shows no diff.
    args.out.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    kept = sum(1 for rows in data["modules"].values() for row in rows if row[3] >= 0)
    conditional = sum(1 for rows in data["modules"].values() for row in rows if row[2] in ("1C", "2C"))
    print(
        f"{args.out}: {args.out.stat().st_size} bytes ({len(raw)} uncompressed), "
        f"{conditional} conditional attributes, {kept} with condition text, "
        f"{len(data['conditions'])} distinct conditions"
    )


if __name__ == "__main__":
    main()
