"""cull's shipped phrase list (cull/data/slop_phrases.txt): the default of `cull demo` and `cull scan` on
every machine, at least 300 valid hard bans, none of them an everyday word, and rebuilt exactly by
bench/build_demo_list.py from the discover run kept in bench/results."""
import json

import pytest

from cull import PhraseSet, find
from cull.cli.demo import SHIPPED_LIST, default_phrases
from cull.cli.main import main
from cull.resources import PACKAGE_DATA

DISCOVER_RUN = "bench/results/discover-smollm2-train-2026-12-02.json"

# Everyday English a ban list must leave alone: function words, connectives, and the plain words
# the demo's prompts ask for (a lighthouse, a sunset over the ocean, a letter, the night sky).
EVERYDAY = """
The keeper climbed the stairs of the lighthouse every night and lit the lamp. However, the storm
was strong, so he stayed awake until morning. The sun went down over the ocean; the sky turned
orange, then red, and the waves were calm. Stars came out and the moon rose above the horizon.
Dear Anna, thank you for your letter. I have been busy with work, but I think of you often and I
would like to visit in the spring. Moreover, my sister says hello. Best wishes, Tom.
She found a hidden door in the library, opened it, and walked into a room full of old books.
The forest was quiet; light fell through the trees, and a small path led to a river.
Therefore, although it was late, they were happy because everything had gone well.
"""


@pytest.fixture(scope="module")
def shipped():
    return PhraseSet.load(SHIPPED_LIST, action="ban")


def test_the_default_list_is_the_shipped_one_wherever_the_data_folder_is(monkeypatch, tmp_path):
    monkeypatch.setenv("CULL_DATA_DIR", str(tmp_path / "nothing-here"))
    no_data = default_phrases()
    monkeypatch.delenv("CULL_DATA_DIR")
    assert no_data == default_phrases() == (PACKAGE_DATA / "slop_phrases.txt", "cull's shipped list")


def test_at_least_300_distinct_valid_bans(shipped):
    texts = [r.text.lower() for r in shipped]
    assert len(texts) >= 300 and len(set(texts)) == len(texts)
    assert all(r.action == "ban" and r.regex is None for r in shipped)


def test_everyday_words_are_not_banned(shipped):
    assert find(EVERYDAY, shipped) == []


def test_it_catches_well_known_slop(shipped):
    text = ("She delved into the rich tapestry of a bustling city, a testament to its vibrant history. "
            "I hope this letter finds you well.")
    found = {m.rule.text for m in find(text, shipped)}
    assert {"delv*", "tapestr*", "bustl*", "testament", "vibran*", "finds you well"} <= found


def test_the_build_script_rebuilds_the_shipped_file_exactly(capsys):
    from bench.build_demo_list import main as build

    assert build([DISCOVER_RUN, "--check"]) == 0
    assert f"({len(PhraseSet.load(SHIPPED_LIST))} phrases)" in capsys.readouterr().out


def test_scan_uses_the_shipped_list_by_default(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_COLOR", "1")
    (tmp_path / "a.txt").write_text("A vibrant tapestry. " + EVERYDAY)
    assert main(["scan", str(tmp_path / "a.txt"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [p["phrase"] for p in json.loads(out)["phrases"]] == ["tapestr*", "vibran*"]
    assert str(SHIPPED_LIST) in err.replace("\n", "")
