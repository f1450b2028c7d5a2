"""cull's version (one place: the package, the CLI and pyproject agree)."""
__version__ = "0.1.0"
