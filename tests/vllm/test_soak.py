"""Operate the real OpenAI-compatible server as its users do, with the official `openai` client:
waves of concurrent requests, most with their own phrase list, mixed with shared bias lists (n=2),
plain requests, streaming, chat and malformed settings. The server must never fail, every banned
output must be clean, plain outputs must equal a run without cull, every malformed request must
get HTTP 400 with cull's message, and memory and the disk cache must stay within their bounds."""
import concurrent.futures as cf
import json
import os
import random
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from helpers import DATA, Server, tiny_llama, tiny_server_args

pytestmark = pytest.mark.vllm

WAVES, CONCURRENT, DISTINCT_PER_WAVE = 5, 48, 42
MATCHER_MIB, CACHE_MIB = 64, 3
PROMPTS = ["The quick brown fox", "Once upon a time", "In the beginning", "She opened the door and",
           "The report concludes that", "My favourite food is", "Tomorrow we will", "The old lighthouse"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
BAD = [  # (extra body, the words of cull's message)
    ({"cull_mode": "soft", "cull_phrases": ["x"]}, "'mode' must be 'ban' or 'bias'"),
    ({"cull_phrase": ["x"]}, "unknown key"),
    ({"cull": "{not json"}, "not JSON"),
    ({"cull_phrases": ["x"], "cull_include_prompt": "maybe"}, "must be true or false"),
    ({"cull_phrases": ["re:([abcdefghijklmnop][abcdefghijklmnop]){3}"]}, "finite set of literals"),
    ({"cull_phrases": [f"p{i}" for i in range(6000)]}, "exceed this server's limit"),
    ({"cull_list": "../../etc/passwd"}, "plain list name"),
]


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text)


def rss_mib(pid: int) -> dict[str, float]:
    import psutil

    out = {}
    for p in [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True):
        try:
            out[f"{p.pid}:{p.name()}"] = p.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.npz"))


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("soak")
    model = tiny_llama(root / "model")
    lists = root / "lists"
    lists.mkdir()
    shutil.copy(DATA / "phrases" / "antislop" / "slop_phrase_prob_adjustments.json", lists / "antislop.json")
    (root / "chat.jinja").write_text(CHAT_TEMPLATE)
    cache = root / "cache"
    prom = root / "prometheus"  # how the engine process's counters reach /metrics
    prom.mkdir()
    env = {**os.environ, "CULL_CACHE_DIR": str(cache), "CULL_CACHE_MIB": str(CACHE_MIB),
           "CULL_MATCHER_CACHE_MIB": str(MATCHER_MIB), "CULL_LISTS_DIR": str(lists),
           "CULL_MAX_REQUEST_PHRASES": "5000", "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the engine in its own process, as deployed
    srv = Server(tiny_server_args(model) + ["--served-model-name", "tiny", "--max-num-seqs", "64",
                                            "--chat-template", str(root / "chat.jinja")], env, root / "server.log")
    yield {"port": srv.port, "pid": srv.proc.pid, "cache": cache, "proc": srv.proc}
    srv.stop()


def test_soak_many_users_many_lists(soak_server):
    import openai

    import cull

    port, cache = soak_server["port"], soak_server["cache"]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
    rng = random.Random(0)

    def complete(prompt, xargs=None, **kw):
        body = {"vllm_xargs": xargs} if xargs else None
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=kw.pop("max_tokens", 16),
                                         temperature=kw.pop("temperature", 0), extra_body=body, **kw)

    base = {p: complete(p).choices[0].text for p in PROMPTS}  # plain, before any list was seen
    assert all(words(t) for t in base.values())

    def job(kind, prompt, phrases):
        """Run one request; return (kind, phrases, [texts]) or (kind, message, None) for a 400."""
        xargs = {"cull_phrases": phrases} if phrases else None
        if kind == "ban":
            return kind, phrases, [complete(prompt, xargs).choices[0].text]
        if kind == "ban_sampled":
            return kind, phrases, [c.text for c in complete(prompt, xargs, temperature=1.0, n=2, seed=7).choices]
        if kind == "large":  # persisted to the bounded disk cache
            return kind, phrases, [complete(prompt, xargs).choices[0].text]
        if kind == "bias_shared":
            r = complete(prompt, {"cull_list": "antislop", "cull_mode": "bias", "cull_bias": -4}, n=2,
                         temperature=0.8, seed=3)
            return kind, None, [c.text for c in r.choices]
        if kind == "plain":
            return kind, None, [complete(prompt).choices[0].text]
        if kind == "stream":
            parts = [ch.choices[0].text for ch in complete(prompt, xargs, stream=True) if ch.choices]
            return kind, phrases, ["".join(parts)]
        if kind == "chat":
            r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                               max_tokens=16, temperature=0, extra_body={"vllm_xargs": xargs})
            return kind, phrases, [r.choices[0].message.content]
        if kind == "bad":
            extra, msg = BAD[rng.randrange(len(BAD))]
            try:
                complete(prompt, extra)
            except openai.BadRequestError as exc:
                assert exc.status_code == 400
                assert msg in str(exc), (msg, str(exc))
                return kind, msg, None
            raise AssertionError(f"malformed settings {extra} were accepted")
        if kind == "bad_stream":  # HTTP 200 with an SSE error event (code 400): the client raises APIError
            extra, msg = BAD[rng.randrange(len(BAD))]
            try:
                list(complete(prompt, extra, stream=True))
            except openai.APIError as exc:
                assert msg in str(exc), (msg, str(exc))
                return kind, msg, None
            raise AssertionError(f"malformed settings {extra} were accepted in a stream")
        raise ValueError(kind)

    distinct = set()
    rss_after_first = None
    peaks = []
    for wave in range(WAVES):
        jobs = []
        for i in range(DISTINCT_PER_WAVE):
            prompt = PROMPTS[(wave + i) % len(PROMPTS)]
            own = words(base[prompt])[1:3]  # what the model writes here without cull
            phrases = [" ".join(own)] + own[:1] + [f"w{wave}x{i}y{k}" for k in range(18)]
            kind = ["ban", "ban", "ban_sampled", "stream", "chat"][i % 5]
            if i == 0:
                kind = "large"
                phrases = phrases + [f"filler{wave} phrase {k}" for k in range(1200)]
            distinct.add(tuple(phrases))
            jobs.append((kind, prompt, phrases))
        for i in range(CONCURRENT - DISTINCT_PER_WAVE):
            jobs.append((["bias_shared", "plain", "bad", "bad_stream"][i % 4], PROMPTS[i % len(PROMPTS)], None))
        rng.shuffle(jobs)
        with cf.ThreadPoolExecutor(CONCURRENT) as pool:
            results = list(pool.map(lambda j: job(*j), jobs))
        for (kind, prompt, _), (_, phrases, texts) in zip(jobs, results):
            if kind == "plain":
                assert texts[0] == base[prompt], "a plain request changed"
            elif kind == "bias_shared":
                assert len(texts) == 2
            elif kind not in ("bad", "bad_stream"):
                rules = cull.PhraseSet(phrases)
                for t in texts:
                    assert not cull.find(t, rules), (kind, phrases[:3], t)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.status == 200
        rss = rss_mib(soak_server["pid"])
        worker = max(rss.values())
        peaks.append(worker)
        if wave == 0:
            rss_after_first = worker
        assert dir_bytes(cache) <= CACHE_MIB * 2**20, f"disk cache {dir_bytes(cache) / 2**20:.1f} MiB"
    assert len(distinct) >= 200
    growth = peaks[-1] - rss_after_first
    report = {"waves": WAVES, "concurrent": CONCURRENT, "distinct_lists": len(distinct), "worker_rss_mib": peaks,
              "growth_after_first_wave_mib": growth, "disk_cache_mib": dir_bytes(cache) / 2**20,
              "matcher_cache_mib": MATCHER_MIB, "cache_mib": CACHE_MIB}
    print("SOAK " + json.dumps(report))
    out = os.environ.get("CULL_SOAK_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
    assert growth <= MATCHER_MIB + 64, report
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    compiles = re.search(r"^cull_compiles_total (\S+)", metrics, re.M)
    assert compiles, "cull's counters are not in /metrics"
    assert float(compiles.group(1)) >= len(distinct), metrics[-2000:]
    assert soak_server["proc"].poll() is None
