"""The OpenAI-compatible server with cull loaded: a request with `vllm_xargs` is served with its
phrases banned, a bad request gets HTTP 400 with cull's message, and the server keeps serving."""
import json
import os
import re
import urllib.error
import urllib.request

import pytest

from helpers import Server, tiny_llama, tiny_server_args

pytestmark = pytest.mark.vllm


def post(port, body) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = tiny_llama(tmp_path_factory.mktemp("tiny-llama-server"))
    srv = Server(tiny_server_args(model) + ["--served-model-name", "tiny"], dict(os.environ),
                 tmp_path_factory.mktemp("log") / "server.log")
    yield srv.port
    srv.stop()


def test_server_good_bad_good(server):
    port = server
    body = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 24, "temperature": 0}
    status, base = post(port, body)
    assert status == 200
    words = re.findall(r"[A-Za-z]+", base["choices"][0]["text"])
    phrase = " ".join(words[1:3])
    status, out = post(port, {**body, "vllm_xargs": {"cull": json.dumps({"phrases": [phrase]})}})
    assert status == 200
    assert phrase.lower() not in " ".join(re.findall(r"[A-Za-z]+", out["choices"][0]["text"])).lower()
    status, out = post(port, {**body, "vllm_xargs": {"cull_phrases": [phrase], "cull_mode": "ban"}})
    assert status == 200 and phrase.lower() not in out["choices"][0]["text"].lower()

    status, err = post(port, {**body, "vllm_xargs": {"cull_phrases": [phrase], "cull_mode": "soft"}})
    assert status == 400, err
    assert "'mode' must be 'ban' or 'bias'" in json.dumps(err)
    status, err = post(port, {**body, "vllm_xargs": {"cull": "{not json"}})
    assert status == 400, err

    status, again = post(port, body)  # still serving, and unchanged for requests without cull
    assert status == 200 and again["choices"][0]["text"] == base["choices"][0]["text"]
