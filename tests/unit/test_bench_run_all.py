"""`make bench` rewrites BENCHMARKS.md's tables between their markers and nothing else."""

import re
from pathlib import Path

import pytest

from bench.run_all import SECTIONS, render, replace_block

DOCUMENT = """# Benchmarks

Prose before.

<!-- bench:alpha -->
old alpha table
<!-- /bench:alpha -->

Prose between.

<!-- bench:beta -->
| old | beta |
<!-- /bench:beta -->

Prose after.
"""


def _outside(text: str, name: str) -> tuple[str, str]:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    return text[:text.index(start) + len(start)], text[text.index(end):]


def test_the_table_lands_between_its_markers_and_nothing_else_changes():
    rewritten = replace_block(DOCUMENT, "alpha", "| new | alpha |\n|---|---|")
    assert _outside(rewritten, "alpha") == _outside(DOCUMENT, "alpha")
    inside = rewritten.split("<!-- bench:alpha -->")[1].split("<!-- /bench:alpha -->")[0]
    assert inside == "\n| new | alpha |\n|---|---|\n"
    assert "old alpha table" not in rewritten
    assert rewritten.count("| old | beta |") == 1  # the other section untouched
    assert replace_block(rewritten, "alpha", "old alpha table") == DOCUMENT


@pytest.mark.parametrize("document, complaint", [
    (DOCUMENT.replace("<!-- /bench:alpha -->\n", ""), "exactly one '<!-- /bench:alpha -->'"),
    (DOCUMENT + "<!-- bench:alpha -->\n", "found 2"),
    (DOCUMENT.replace("<!-- bench:alpha -->", "<!-- tmp -->").replace("<!-- /bench:alpha -->", "<!-- bench:alpha -->")
     .replace("<!-- tmp -->", "<!-- /bench:alpha -->"), "comes before"),
    (DOCUMENT.replace("<!-- /bench:alpha -->\n", "").replace("Prose after.", "<!-- /bench:alpha -->"),
     "another section's marker"),
])
def test_broken_markers_are_refused(document, complaint):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        replace_block(document, "alpha", "table")


def test_a_table_holding_a_marker_is_refused():
    with pytest.raises(ValueError, match="holds a bench marker"):
        replace_block(DOCUMENT, "alpha", "table\n<!-- /bench:alpha -->\nstray")


def test_every_section_has_its_markers_in_benchmarks_md():
    text = (Path(__file__).resolve().parents[2] / "BENCHMARKS.md").read_text()
    for section in SECTIONS:
        replace_block(text, section.name, "")  # raises when a marker is missing or repeated


def test_printed_json_lines_with_the_same_keys_become_rows_of_one_table():
    output = '{"rate": 50, "fps": 49.3}\n{"rate": 200, "fps": 186.8}\nnote\n| a | b |\n|---|---|\n'
    assert render(output).splitlines() == [
        "| rate | fps |", "|---|---|", "| 50 | 49.3 |", "| 200 | 186.8 |", "", "```", "note", "```", "",
        "| a | b |", "|---|---|"]


def test_paths_of_this_checkout_do_not_reach_the_document():
    from bench.run_all import ROOT, _without_local_paths

    output = f"built in {ROOT}/runs/bench/demo, data {ROOT.parent}/shared/datasets/bsdata, log /tmp/x1/b.log"
    assert _without_local_paths(output) == ("built in runs/bench/demo, data ../shared/datasets/bsdata, "
                                            "log <temporary folder>")
