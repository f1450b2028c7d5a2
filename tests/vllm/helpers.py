"""Shared pieces of the vLLM tests: a tiny random Llama with a real tokenizer, and a fake
vllm_config for driving the processors directly."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

DATA = Path(os.environ.get("CULL_DATA_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
GPT2 = DATA / "tokenizers" / "gpt2"
VOCAB = 50257


def tiny_llama(folder: Path, tied: bool = False) -> Path:
    """A random 2-layer Llama (head_dim 64, as vLLM's CPU attention needs) with GPT-2's tokenizer;
    `tied`: input and output embeddings shared (as SmolLM2's are)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not GPT2.is_dir():
        raise FileNotFoundError(f"test data {GPT2} is missing; set CULL_DATA_DIR to the shared data folder")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=tied)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(GPT2 / f, folder / f)
    return folder


def fake_vllm_config(tokenizer_dir=GPT2, vocab_size=VOCAB):
    return SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(tokenizer_dir), trust_remote_code=False,
                                                        tokenizer_revision=None, get_vocab_size=lambda: vocab_size))


def gpt2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(GPT2)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The OpenAI-compatible server in a subprocess on 127.0.0.1, started with `args` after
    `--model`, waited for through /health (a loaded 2-core machine takes minutes), stopped on exit."""

    def __init__(self, args: list[str], env: dict, log_path: Path, cwd=None, timeout_s: float = 600):
        import subprocess
        import sys
        import time
        import urllib.request

        self.port = free_port()
        self.log = open(log_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args, "--host", "127.0.0.1",
             "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"}, cwd=cwd)
        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                self.proc.kill()
                raise RuntimeError("the vLLM server did not start:\n" + self.log.read()[-4000:])
            time.sleep(1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def tiny_server_args(model: Path) -> list[str]:
    """What every test server runs: the tiny model, eager, small memory, cull loaded."""
    return ["--model", str(model), "--enforce-eager", "--dtype", "float32", "--max-model-len", "512",
            "--kv-cache-memory-bytes", str(64 * 2**20), "--logits-processors",
            "cull.integrations.vllm:CullLogitsProcessor"]
