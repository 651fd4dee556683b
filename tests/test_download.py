"""Verified downloads against a real HTTP server on loopback: good, corrupt, dropped, 404, offline."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from vlprompt.errors import VLPromptError
from vlprompt.zoo.download import ChecksumError, SourceNotFound, download_url
from vlprompt.zoo.registry import ZooEntry, fetch

PAYLOAD = bytes(range(256)) * 800  # 200 KiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """/good: bytes with Range support; /corrupt: same length, wrong bytes; /drop: first response cut
    in half, then Range supported; /norange-drop: cut once, then never honours Range; anything else: 404."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        route = self.path.strip("/").split("/")[0]
        if route == "good":
            self._send(PAYLOAD, ranges=True)
        elif route == "corrupt":
            self._send(bytes(reversed(PAYLOAD)), ranges=True)
        elif route in ("drop", "norange-drop"):
            first = not server.dropped.get(route)
            server.dropped[route] = True
            self._send(PAYLOAD, ranges=route == "drop", cut=first)
        else:
            self.send_error(404, "Not Found")

    def _send(self, data: bytes, ranges: bool, cut: bool = False) -> None:
        start = 0
        header = self.headers.get("Range")
        if ranges and header and header.startswith("bytes="):
            start = int(header[len("bytes=") :].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if ranges else "none")
        self.end_headers()
        if cut:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True  # drop the connection mid-transfer
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.requests = []
    httpd.dropped = {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def base(server, monkeypatch, tmp_path):
    server.requests.clear()
    server.dropped.clear()
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for env in ("VLPROMPT_OFFLINE", "HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(env, raising=False)
    return f"http://127.0.0.1:{server.server_address[1]}"


def _entry(*sources: str) -> ZooEntry:
    return ZooEntry.from_dict({"name": "blob", "sources": list(sources), "sha256": SHA, "size": len(PAYLOAD)})


def _files(root):
    """Files left on disk, except the (empty) cross-process lock files."""
    return sorted(p.name for p in root.rglob("*") if p.is_file() and p.suffix != ".lock") if root.exists() else []


# generous timeout: a loaded box must not time out the local server
FAST = {"retries": 2, "backoff": 0.0, "timeout": 120.0, "progress": False}


def test_good_download_is_verified_and_cached(base, server, tmp_path):
    entry = _entry(f"{base}/good/blob.safetensors")
    path = fetch(entry, **FAST)
    assert path == entry.cache_path and path.read_bytes() == PAYLOAD
    assert _files(tmp_path / "cache") == ["blob.safetensors"]  # no .part left behind
    fetch(entry, **FAST)  # second call: a cache hit, no request
    assert len(server.requests) == 1


def test_corrupt_payload_is_rejected_and_nothing_is_cached(base, tmp_path):
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        download_url(f"{base}/corrupt/x", tmp_path / "out" / "x.bin", SHA, **FAST)
    assert _files(tmp_path / "out") == []
    with pytest.raises(VLPromptError, match="could not fetch zoo entry 'blob'.*sha256 mismatch"):
        fetch(_entry(f"{base}/corrupt/blob"), **FAST)
    assert _files(tmp_path / "cache") == []


def test_dropped_connection_is_resumed_with_range_then_verified(base, server, tmp_path):
    dest = download_url(f"{base}/drop/blob", tmp_path / "blob.bin", SHA, len(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r[1] for r in server.requests] == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert _files(tmp_path) == ["blob.bin"]


def test_dropped_connection_without_range_support_restarts(base, server, tmp_path):
    dest = download_url(f"{base}/norange-drop/blob", tmp_path / "blob.bin", SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 2


def test_partial_file_from_an_earlier_run_is_resumed(base, server, tmp_path):
    (tmp_path / ".blob.bin.part").write_bytes(PAYLOAD[:1000])
    download_url(f"{base}/good/blob", tmp_path / "blob.bin", SHA, **FAST)
    assert server.requests == [("/good/blob", "bytes=1000-")]
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_404_is_not_retried_and_falls_back_to_the_next_source(base, server, tmp_path):
    with pytest.raises(SourceNotFound, match="404"):
        download_url(f"{base}/missing/blob", tmp_path / "blob", SHA, **FAST)
    assert len(server.requests) == 1
    server.requests.clear()
    path = fetch(_entry(f"{base}/missing/blob", f"{base}/good/blob"), **FAST)
    assert path.read_bytes() == PAYLOAD
    assert [r[0] for r in server.requests] == ["/missing/blob", "/good/blob"]


def test_every_source_failing_names_each_one(base):
    with pytest.raises(VLPromptError) as info:
        fetch(_entry(f"{base}/missing/a", f"{base}/corrupt/b"), **FAST)
    message = str(info.value)
    assert "/missing/a: HTTP 404" in message and "/corrupt/b: sha256 mismatch" in message


def test_offline_uses_the_cache_and_makes_no_request(base, server, monkeypatch):
    entry = _entry(f"{base}/good/blob")
    fetch(entry, **FAST)
    server.requests.clear()
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    assert fetch(entry, **FAST).read_bytes() == PAYLOAD
    assert server.requests == []


@pytest.mark.parametrize("env", ["VLPROMPT_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_without_cached_copy_says_so(base, server, monkeypatch, env):
    monkeypatch.setenv(env, "1")
    with pytest.raises(VLPromptError, match=rf"offline mode \({env}=1\): zoo entry 'blob' is not in the cache"):
        fetch(_entry(f"{base}/good/blob"), **FAST)
    assert server.requests == []


def test_corrupted_cache_copy_is_replaced(base):
    entry = _entry(f"{base}/good/blob")
    entry.cache_path.write_bytes(b"garbage")
    assert fetch(entry, **FAST).read_bytes() == PAYLOAD


def test_concurrent_downloads_of_one_file_fetch_it_once(base, server, tmp_path):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(download_url(f"{base}/good/b", tmp_path / "b.bin", SHA, **FAST)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and all(p.read_bytes() == PAYLOAD for p in results)
    assert len(server.requests) == 1
