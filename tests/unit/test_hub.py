"""``lit_bar.io.hub``: the hub probe goes through huggingface_hub's HTTP client (proxies apply), and a hub
name resolves from the local cache under ``HF_HUB_OFFLINE=1`` or fails with one clear message."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants
from huggingface_hub.utils import close_session

from lit_bar.io.hub import hub_reachable, resolve_pretrained


class _Proxy:
    """A one-port stand-in for an HTTP proxy: records each request line, answers with ``status``."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.requests: list[str] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            with conn:
                head = conn.recv(65536).decode("latin-1")
                self.requests.append(head.split("\r\n", 1)[0])
                conn.sendall(
                    f"HTTP/1.1 {self.status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
                )

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def through_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[pytest.MonkeyPatch, list[_Proxy]]]:
    """Proxy variables set for a fresh huggingface_hub client (it reads them when it is created)."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    proxies: list[_Proxy] = []
    close_session()
    yield monkeypatch, proxies
    close_session()
    for proxy in proxies:
        proxy.close()


def test_probe_uses_https_proxy(through_proxy: tuple[pytest.MonkeyPatch, list[_Proxy]]) -> None:
    """The raw TCP probe connected to the hub directly; the HTTP probe asks the proxy to CONNECT."""
    monkeypatch, proxies = through_proxy
    proxies.append(proxy := _Proxy("502 Bad Gateway"))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    assert hub_reachable(timeout=5.0) is False  # the proxy refused
    assert proxy.requests == ["CONNECT hub.invalid:443 HTTP/1.1"]


def test_probe_answered_through_http_proxy_is_reachable(
    through_proxy: tuple[pytest.MonkeyPatch, list[_Proxy]],
) -> None:
    monkeypatch, proxies = through_proxy
    monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")
    assert hub_reachable(timeout=5.0) is False  # without the proxy: the name does not resolve
    close_session()
    proxies.append(proxy := _Proxy("200 OK"))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert hub_reachable(timeout=5.0) is True
    assert proxy.requests == ["HEAD http://hub.invalid/ HTTP/1.1"]


def test_offline_mode_makes_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # would be refused at once anyway
    assert hub_reachable() is False


def _cache_snapshot(cache: Path, repo_id: str, files: dict[str, str]) -> Path:
    """The hub cache layout huggingface_hub writes: refs/main → snapshots/<commit>/<files>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


@pytest.fixture
def offline_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path


def test_cached_hub_name_resolves_offline(offline_cache: Path) -> None:
    _cache_snapshot(offline_cache, "tiny-org/tiny-model", {"config.json": "{}"})
    assert resolve_pretrained("tiny-org/tiny-model") == "tiny-org/tiny-model"


def test_uncached_hub_name_offline_is_one_clear_error(offline_cache: Path) -> None:
    _cache_snapshot(offline_cache, "tiny-org/tiny-model", {"config.json": "{}"})
    with pytest.raises(
        ValueError, match=r"'tiny-org/other' is not a local folder and not in the local .*cache"
    ):
        resolve_pretrained("tiny-org/other")


def test_unreachable_hub_names_the_cache_when_it_holds_the_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("lit_bar.io.hub.hub_reachable", lambda timeout=3.0: False)
    _cache_snapshot(tmp_path, "tiny-org/tiny-model", {"config.json": "{}"})
    with pytest.raises(ValueError, match="It is in your local cache: set HF_HUB_OFFLINE=1"):
        resolve_pretrained("tiny-org/tiny-model")
    with pytest.raises(ValueError, match=r"unreachable.*Pass a local folder instead"):
        resolve_pretrained("tiny-org/other")
