"""Is the network there? Decided quickly, once per process, before any library starts retrying.

Hugging Face and open_clip downloads retry with back-off when there is no network: a missing backbone
on an offline laptop used to cost 50-110 s of retries and then a long traceback. vlprompt asks first:

- `offline_reason()`: offline mode set by the user (``VLPROMPT_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or
  ``TRANSFORMERS_OFFLINE=1``), else None. Free.
- `unreachable_reason(url)`: offline mode, or a failed name lookup / TCP connect to the URL's host (or to
  the proxy the environment names for it) within `PROBE_TIMEOUT_S`, else None. One probe per host and
  process; a machine with network pays one connect (milliseconds).
- `hub_offline()`: a context in which huggingface_hub answers from its cache only (no HTTP at all), for
  loading files already known to be cached.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator

OFFLINE_ENVS = ("VLPROMPT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 3.0
HF_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}
_probes: dict[tuple[str, int], str | None] = {}


def offline_reason() -> str | None:
    """``"HF_HUB_OFFLINE=1"`` (the first offline variable set) when offline mode is on, else None."""
    for env in OFFLINE_ENVS:
        value = os.environ.get(env, "")
        if value.strip().lower() in _TRUE:
            return f"{env}={value}"
    return None


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or HF_ENDPOINT


def _target(url: str) -> tuple[str, int, str]:
    """(host, port, what) to connect to for `url`: the proxy the environment sets for it, else its host."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    proxies = urllib.request.getproxies()
    if parts.scheme in proxies and not urllib.request.proxy_bypass(host):
        proxy = urllib.parse.urlsplit(proxies[parts.scheme])
        if proxy.hostname:
            return proxy.hostname, proxy.port or 8080, f"proxy {proxy.hostname}:{proxy.port or 8080}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host, port, f"{host}:{port}"


def unreachable_reason(url: str = HF_ENDPOINT, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why `url` cannot be reached (offline mode, no name resolution, no connection), or None if it can."""
    reason = offline_reason()
    if reason is not None:
        return reason
    host, port, what = _target(url)
    if not host:
        return None
    key = (host, port)
    if key not in _probes:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                _probes[key] = None
        except OSError as error:
            detail = "timed out" if isinstance(error, TimeoutError) else (error.strerror or type(error).__name__)
            _probes[key] = f"no network: cannot reach {what} ({detail})"
    return _probes[key]


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """huggingface_hub in offline mode for the duration (cached files only, no HTTP, no retries)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of open_clip
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


__all__ = ["hf_endpoint", "hub_offline", "offline_reason", "unreachable_reason"]
