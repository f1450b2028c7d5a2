"""Per-request settings for serving engines (no engine needed): the three ways to send them, server
lists, and a clear refusal of everything the engine could not compile later."""
import json

import pytest

import cull
from cull.integrations.request_settings import parse_settings


def test_no_settings_is_none():
    assert parse_settings(None) is None and parse_settings({}) is None and parse_settings({"other": 1}) is None


@pytest.mark.parametrize("extra", [
    {"cull": {"phrases": ["delve", "a testament to"], "mode": "bias", "bias": -3}},
    {"cull": json.dumps({"phrases": ["delve", "a testament to"], "mode": "bias", "bias": -3})},
    {"cull_phrases": ["delve", "a testament to"], "cull_mode": "bias", "cull_bias": -3},
])
def test_three_forms_give_the_same_rules(extra):
    req = parse_settings(extra)
    assert [r.text for r in req.rules] == ["delve", "a testament to"]
    assert all(r.action == "bias" and r.delta == -3 for r in req.rules)


def test_server_lists(tmp_path, monkeypatch):
    (tmp_path / "slop.txt").write_text("delve\ntapestry\n")
    monkeypatch.setenv("CULL_LISTS_DIR", str(tmp_path))
    req = parse_settings({"cull": {"list": "slop", "phrases": ["moreover"], "include_prompt": True}})
    assert sorted(r.text for r in req.rules) == ["delve", "moreover", "tapestry"] and req.include_prompt
    for name in ("../etc/passwd", "nope", ".hidden"):
        with pytest.raises(cull.CullError, match="list"):
            parse_settings({"cull": {"list": name}})


@pytest.mark.parametrize("extra,msg", [
    ({"cull": {"phrase": ["x"]}}, "unknown key"),
    ({"cull": "{not json"}, "not JSON"),
    ({"cull": ["delve"]}, "must be an object"),
    ({"cull": {"phrases": ["x"], "mode": "soft"}}, "'mode' must be 'ban' or 'bias'"),
    ({"cull": {"phrases": ["x"], "bias": -1}}, "'mode' is not 'bias'"),
    ({"cull": {"phrases": ["x"], "mode": "bias", "bias": float("nan")}}, "finite number"),
    ({"cull": {"phrases": ["x"], "include_prompt": "yes"}}, "true or false"),
    ({"cull": {"phrases": [1, 2]}}, "list of strings"),
    ({"cull": {"phrases": []}}, "no phrases"),
    ({"cull": {"phrases": ["re:a.*b"]}}, "finite set of literals"),
    ({"cull": {"phrases": [f"{i:06d}" + "x" * 190 for i in range(70_000)]}}, "12,000,000 symbols"),
])
def test_bad_settings_are_refused_with_a_fix(extra, msg):
    with pytest.raises(cull.CullError, match=msg):
        parse_settings(extra)


def test_parsed_settings_are_reused():
    a = parse_settings({"cull": {"phrases": ["delve"]}})
    assert parse_settings({"cull": {"phrases": ["delve"]}}) is a
