"""The on-disk compile cache: bounded (LRU), shared safely by processes, never trusting a damaged
or mismatched file."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cull
from cull.compile.cache import prune_cache
from cull.compile.vocab import vocab_from_token_bytes

TOKENS = [t.encode() for t in ["a", "b", "c", "d", " ", "ab", "cd", " a", " b", " c", "abc", "dd"]]
REPO = Path(__file__).resolve().parents[2]


def _files(folder):
    return sorted(p for p in Path(folder).glob("*.npz") if ".tmp." not in p.name)


def _size(folder):
    return sum(p.stat().st_size for p in _files(folder))


def test_cache_stays_under_its_bound_and_evicts_least_recently_used(tmp_path, monkeypatch):
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path))
    vocab = vocab_from_token_bytes(TOKENS)
    cull.compile_rules(["ab c"], vocab)
    one = _size(tmp_path)
    monkeypatch.setenv("CULL_CACHE_MIB", str(3.5 * one / 2**20))  # room for three lists
    first = _files(tmp_path)[0]
    for i in range(12):
        os.utime(first, (time.time() + 10 * i, time.time() + 10 * i))  # keep "ab c" the most recent
        cull.compile_rules([f"{'a' * (i + 1)} d"], vocab)
        assert _size(tmp_path) <= 3.5 * one
        assert first.exists(), "the most recently used list was evicted"
    assert len(_files(tmp_path)) == 3


def test_a_hit_refreshes_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path))
    vocab = vocab_from_token_bytes(TOKENS)
    cull.compile_rules(["ab"], vocab)
    f = _files(tmp_path)[0]
    os.utime(f, (1, 1))
    m = cull.compile_rules(["ab"], vocab)
    assert m.meta["from_cache"]
    assert f.stat().st_mtime > 1


def test_zero_bound_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CULL_CACHE_MIB", "0")
    cull.compile_rules(["ab"], vocab_from_token_bytes(TOKENS))
    assert _files(tmp_path) == []


def test_bad_cache_bound_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CULL_CACHE_MIB", "lots")
    with pytest.raises(cull.CullError, match="CULL_CACHE_MIB must be a number"):
        cull.compile_rules(["ab"], vocab_from_token_bytes(TOKENS))


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_file_is_recompiled_and_rewritten(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path))
    vocab = vocab_from_token_bytes(TOKENS)
    good = cull.compile_rules(["ab c", "dd"], vocab)
    f = _files(tmp_path)[0]
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(len(data))}[damage])
    again = cull.compile_rules(["ab c", "dd"], vocab)
    assert not again.meta["from_cache"]
    for k, v in good.tables.items():
        assert np.array_equal(v, again.tables[k]), k
    assert cull.compile_rules(["ab c", "dd"], vocab).meta["from_cache"]  # rewritten whole


def test_a_file_of_an_older_format_is_recompiled_and_rewritten(tmp_path, monkeypatch):
    """Format 3 stored a `node_cls` array that nothing read; such a file (here under the current
    key, as a copied or downgraded cache would have it) is a miss, rebuilt without an error."""
    import json

    from cull.compile.matcher import FORMAT_VERSION

    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path))
    vocab = vocab_from_token_bytes(TOKENS)
    good = cull.compile_rules(["ab c", "dd"], vocab)
    f = _files(tmp_path)[0]
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(bytes(z["meta"]).decode())
    assert "node_cls" not in arrays and meta["format"] == FORMAT_VERSION > 3
    meta["format"] = 3
    arrays["node_cls"] = np.zeros(len(arrays["fail"]), np.int8)
    with open(f, "wb") as out:
        np.savez(out, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    again = cull.compile_rules(["ab c", "dd"], vocab)
    assert not again.meta["from_cache"]
    assert again.banned(again.initial_state()) == good.banned(good.initial_state())
    for k, v in good.tables.items():
        assert np.array_equal(v, again.tables[k]), k
    with np.load(f) as z:
        assert json.loads(bytes(z["meta"]).decode())["format"] == FORMAT_VERSION
        assert "node_cls" not in z.files
    assert cull.compile_rules(["ab c", "dd"], vocab).meta["from_cache"]


def test_another_lists_tables_under_this_key_are_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path))
    vocab = vocab_from_token_bytes(TOKENS)
    cull.compile_rules(["ab"], vocab)
    other = _files(tmp_path)[0]
    cull.compile_rules(["cd"], vocab)
    target = [p for p in _files(tmp_path) if p != other][0]
    shutil.copy(other, target)  # "cd"'s key now holds "ab"'s tables
    m = cull.compile_rules(["cd"], vocab)
    assert not m.meta["from_cache"]
    assert m.banned(m.initial_state()) != {}
    tok_cd = TOKENS.index(b"cd")
    assert tok_cd in m.banned(m.initial_state())


def test_prune_ignores_vanished_files_and_clears_stale_temporaries(tmp_path):
    (tmp_path / "x.npz.1-2.tmp.npz").write_bytes(b"0" * 10)
    os.utime(tmp_path / "x.npz.1-2.tmp.npz", (1, 1))
    (tmp_path / "fresh.npz.3-4.tmp.npz").write_bytes(b"0" * 10)  # a writer at work: left alone
    (tmp_path / "a.npz").write_bytes(b"0" * 100)
    assert prune_cache(tmp_path, limit_bytes=1000) == 1
    assert (tmp_path / "fresh.npz.3-4.tmp.npz").exists() and (tmp_path / "a.npz").exists()
    assert prune_cache(tmp_path / "missing", limit_bytes=0) == 0


_WORKER = """
import sys, cull
from cull.compile.vocab import vocab_from_token_bytes
toks = [t.encode() for t in {tokens!r}]
vocab = vocab_from_token_bytes(toks)
for i in range(25):
    n = int(sys.argv[1]) * 100 + i
    m = cull.compile_rules([f"{{'a' * (n % 7 + 1)}} {{'d' * (n // 7 % 5 + 1)}}", "cd"[: 1 + n % 2]], vocab)
    m = cull.compile_rules(["ab c"], vocab)  # a shared list, read while others prune
    assert m.banned(m.initial_state()) is not None
print("ok")
"""


def test_processes_share_the_folder_safely(tmp_path):
    one_list = 20_000  # bytes, about one small list's tables: the bound forces constant eviction
    env = dict(os.environ, CULL_CACHE_DIR=str(tmp_path), CULL_CACHE_MIB=str(4 * one_list / 2**20))
    code = _WORKER.format(tokens=[t.decode() for t in TOKENS])
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    assert _size(tmp_path) <= 4 * one_list + max(p.stat().st_size for p in _files(tmp_path))


def test_a_file_larger_than_the_bound_is_dropped_alone(tmp_path):
    (tmp_path / "old.npz").write_bytes(b"0" * 100)
    (tmp_path / "big.npz").write_bytes(b"0" * 5000)
    assert prune_cache(tmp_path, limit_bytes=1000, keep=tmp_path / "big.npz") == 1
    assert (tmp_path / "old.npz").exists() and not (tmp_path / "big.npz").exists()


def test_an_unwritable_cache_is_said_once(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CULL_CACHE_DIR", str(blocker / "cache"))  # under a file: cannot be created
    vocab = vocab_from_token_bytes([b" delve", b"d", b"elve"])
    for phrase in ("delve", "delves"):
        assert cull.compile_rules([phrase], vocab).meta["from_cache"] is False
    err = capsys.readouterr().err
    assert err.count("cannot write the compile cache") == 1 and "CULL_CACHE_DIR" in err
