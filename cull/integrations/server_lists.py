"""Server-side phrase lists ($CULL_LISTS_DIR) made ready before any request needs them: parsed
in the API server when the plugin loads, compiled in the engine when it starts."""
from __future__ import annotations

import os

from cull.integrations.request_settings import parse_settings
from cull.integrations.serving_metrics import log


def warm_server_lists() -> None:
    """Parse and check every server-side list once, in the background, when the plugin is imported:
    the API server validates requests on its event loop, and a 50k-phrase list parsed there on its
    first use would freeze every stream for seconds."""
    import threading
    from pathlib import Path

    from cull.integrations.request_settings import LISTS_ENV

    folder = os.environ.get(LISTS_ENV)
    if not folder or not Path(folder).is_dir():
        return

    def work():
        for path in sorted(Path(folder).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                try:
                    parse_settings({"cull_list": path.name})
                except Exception as exc:
                    log.warning("cull: server list %s cannot be used: %s", path.name, exc)

    threading.Thread(target=work, name="cull-warm-lists", daemon=True).start()


def precompile_server_lists(cache) -> None:
    """Compile every list in $CULL_LISTS_DIR (with the file's own actions) when the engine starts,
    so that no request waits for one; a list that fails is logged, not fatal."""
    from pathlib import Path

    from cull.integrations.request_settings import LISTS_ENV, server_list

    folder = os.environ.get(LISTS_ENV)
    if not folder or not Path(folder).is_dir():
        return
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith("."):
            try:
                cache.get(server_list(path.name, None, None), persist=True, source=f"list {path.name}")
            except Exception as exc:
                log.warning("cull: server list %s was not precompiled: %s", path.name, exc)
