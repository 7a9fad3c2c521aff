"""The demo page served inside the test process (toy model, CPU), for tests/test_demo*.py.

Missing packages or browser: a failure under CI (CI=true), where .ci/run installs them; a skip on a developer's
machine that has not installed demo/requirements.txt or chromium.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from typing import Iterator

import pytest


def require(what: str, ok: bool, how: str) -> None:
    if ok:
        return
    message = f"{what} is missing: {how}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_modules(*names: str) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            require(f"the Python package {name}", False, "pip install -r demo/requirements.txt")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served_demo() -> Iterator[str]:
    """The page on 127.0.0.1 with the toy model loaded; yields its URL."""
    require_modules("gradio", "gradio_client")
    from demo.app import build_app, launch
    from demo.runner import ModelStore

    store = ModelStore("cpu")
    store.get("toy")
    app = build_app(store, "toy")
    port = free_port()
    launch(app, "127.0.0.1", port, queue_size=8, concurrency=2, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()
