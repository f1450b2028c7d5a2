"""Where cull keeps its files: the cache folder follows CULL_CACHE_DIR, then XDG_CACHE_HOME, then
~/.cache, and the compile cache and the model cache both live under it."""
from pathlib import Path

import cull
from cull.compile.vocab import vocab_from_token_bytes
from cull.measure import models
from cull.resources import cache_dir

TOKENS = [t.encode() for t in ["a", "b", "c", " ", "ab", " a", " b"]]


def _clear(monkeypatch, home: Path) -> None:
    monkeypatch.delenv("CULL_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))


def test_cull_cache_dir_wins_over_xdg(tmp_path, monkeypatch):
    _clear(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_cull_cache_dir_expands_the_home_folder(tmp_path, monkeypatch):
    _clear(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("CULL_CACHE_DIR", "~/cull-cache")
    assert cache_dir() == tmp_path / "home" / "cull-cache"


def test_xdg_cache_home_is_followed(tmp_path, monkeypatch):
    _clear(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cull"


def test_without_either_the_cache_is_under_the_home_folder(tmp_path, monkeypatch):
    _clear(monkeypatch, tmp_path / "home")
    assert cache_dir() == tmp_path / "home" / ".cache" / "cull"


def test_a_relative_or_empty_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    # the XDG base-directory spec: a relative path there is invalid and must be ignored
    _clear(monkeypatch, tmp_path / "home")
    for value in ("relative/cache", ""):
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert cache_dir() == tmp_path / "home" / ".cache" / "cull"


def test_compiled_tables_and_the_model_copy_go_under_xdg_cache_home(tmp_path, monkeypatch):
    _clear(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cull.compile_rules(["ab"], vocab_from_token_bytes(TOKENS))
    assert [p.parent for p in (tmp_path / "xdg" / "cull").glob("*.npz")] == [tmp_path / "xdg" / "cull"]
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    conv = models.converted_dir(tmp_path, gguf.name)
    assert conv.parent == tmp_path / "xdg" / "cull" / "models" / "converted"
    assert not (tmp_path / "home").exists(), "nothing may be written under ~/.cache when XDG_CACHE_HOME is set"
