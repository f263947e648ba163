"""The client calls only routes that the server's OpenAPI document names."""

from __future__ import annotations

import re
from pathlib import Path

import smolvm

PKG = Path(smolvm.__file__).resolve().parent
CALL = re.compile(r'\.(?:call|open)\(\s*"(GET|POST|PUT|PATCH|DELETE)",\s*f?"([^"]+)"')


def client_routes() -> set:
    routes = set()
    for src in PKG.glob("*.py"):
        for method, path in CALL.findall(src.read_text()):
            path = re.sub(r"\{quote\(self\._vm_id\)\}", "{id}", path)
            path = re.sub(r"\{quote\(name\)\}", "{name}", path)
            routes.add((method.lower(), "/v1" + path))
    return routes


def test_every_route_the_client_uses_is_documented(client: smolvm.Client) -> None:
    doc = client.call("GET", "/openapi.json")
    assert doc["openapi"].startswith("3.1")
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    used = client_routes()
    assert len(used) >= 20, used  # the scan found the client's calls
    assert used - documented == set()
