"""Helpers for tests that start real world servers (envs/services/http_server.py) and talk HTTP to them."""

import http.client
import json
from urllib.parse import urlsplit

from envs.services.http_client import LocalServer

STRAIGHT = {"map": "straight", "num_towns": 2}


def start_server(serve: dict | None = None, env: dict | None = None, index: int = 0) -> LocalServer:
    """A real server process on a free loopback port (port 0), tracked by its pid; call ``stop()`` after."""
    return LocalServer(index, env if env is not None else STRAIGHT, threads=1, token=None, start_timeout_s=60.0,
                       serve=serve).start()


def request(url: str, verb: str, path: str, body=None, token: str | None = None, raw: bytes | None = None,
            headers: dict | None = None):
    """(status, parsed JSON or raw bytes) of one request; ``body`` is sent as JSON, ``raw`` as it is."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    try:
        connection.request(verb, path, body=data, headers=sent)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    if response.getheader("content-type", "").startswith("application/json"):
        return response.status, json.loads(payload)
    return response.status, payload
