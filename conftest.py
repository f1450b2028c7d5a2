"""Doctest collection of the cull package (`python -m pytest` collects `tests/` and the docstring
examples under `cull/`, see pyproject.toml). Collecting a module imports it, so a module that needs
an engine which is not installed here is left out rather than failing collection; its examples run
in that engine's own test venv (tests/vllm/test_doctests.py)."""
import importlib.util

ENGINE_MODULES = {"vllm": "cull/integrations/vllm.py"}  # optional package -> the module that imports it

collect_ignore = [path for package, path in ENGINE_MODULES.items() if importlib.util.find_spec(package) is None]
