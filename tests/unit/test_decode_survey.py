"""Issue 16: dicomhub decodes what the peers decode.

Every pixel-bearing file of pydicom's test files and pydicom-data is decoded by
dicomhub's codec and by GDCM's ``gdcmconv`` (DCMTK when GDCM cannot, or as a
second opinion when GDCM disagrees on a lossless file), see
``tests/decodesurvey.py``. No server: the peers run as command-line tools, which
``scripts/install-test-deps.sh`` installs.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.decodesurvey import KNOWN, FileResult, survey, table_markdown

ROOT = Path(__file__).resolve().parents[2]


def _decode_table_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("decode_table", ROOT / "benchmarks" / "decode_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("decode_table", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results() -> list[FileResult]:
    for tool in ("gdcmconv", "dcmdjpeg", "dcmdjpls", "dcmdrle", "dcmconv"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/install-test-deps.sh"
    return survey()


def test_the_survey_covers_both_collections(results: list[FileResult]) -> None:
    names = [r.name for r in results]
    assert len(names) == len(set(names))
    assert sum(n.startswith("pydicom/") for n in names) >= 90
    assert sum(n.startswith("pydicom-data/") for n in names) >= 60


def test_every_file_a_peer_decodes_dicomhub_decodes_alike(results: list[FileResult]) -> None:
    wrong = [
        r
        for r in results
        if r.reference
        and r.name not in KNOWN
        and (not r.decoder or r.comparison not in ("equal", "within tolerance"))
    ]
    assert not wrong, "\n".join(f"{r.name}: {r.error or r.comparison} {r.note}" for r in wrong)


def test_lossless_files_are_pixel_equal(results: list[FileResult]) -> None:
    # Only a colour conversion on one side (YBR_FULL kept by one decoder, RGB by the other) may round.
    loose = [
        r
        for r in results
        if r.reference
        and r.name not in KNOWN
        and not r.lossy
        and r.comparison != "equal"
        and "compared as RGB" not in r.note
    ]
    assert not loose, [(r.name, r.comparison, r.max_difference) for r in loose]


def test_the_known_exceptions_still_hold(results: list[FileResult]) -> None:
    by_name = {r.name: r for r in results}
    assert set(KNOWN) <= set(by_name)
    for name in KNOWN:
        r = by_name[name]
        assert r.reference, f"{name}: no peer decodes it any more, drop it from KNOWN"
        assert not r.decoder or r.comparison != "equal", f"{name} now matches its peer: drop it from KNOWN"


def test_the_12_bit_jpeg_extended_file_is_decoded_by_the_gdcm_fallback(results: list[FileResult]) -> None:
    (lossy,) = [r for r in results if r.name == "pydicom/JPEG-lossy.dcm"]
    assert lossy.decoder == "gdcm-fallback"
    assert lossy.reference == "gdcm" and lossy.comparison == "equal"
    # Everything else that decodes goes through the fast path.
    others = {r.decoder for r in results if r.decoder and r.name != "pydicom/JPEG-lossy.dcm"}
    assert others <= {"native", "pylibjpeg"}


def test_the_docs_table_is_the_one_this_loop_writes(results: list[FileResult]) -> None:
    script = _decode_table_script()
    docs = (ROOT / "docs" / "transcoding.md").read_text(encoding="utf-8")
    assert script.replace_table(docs, table_markdown(results)) == docs, (
        "docs/transcoding.md is stale: run .venv/bin/python benchmarks/decode_table.py"
    )
