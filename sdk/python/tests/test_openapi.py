"""The gateway's OpenAPI document (``GET /v1/openapi.json``): valid OpenAPI 3.1, and a
request built from it for every operation is accepted by a running node."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from conftest import CFG

pytestmark = pytest.mark.cluster


def fetch(path: str) -> Any:
    with urllib.request.urlopen(CFG["nodes"][0] + path, timeout=10) as res:
        return json.loads(res.read())


def test_the_openapi_document_is_valid_and_every_operation_accepts_its_example() -> None:
    from openapi_spec_validator import validate

    spec = fetch("/v1/openapi.json")
    assert spec["openapi"].startswith("3.1"), spec["openapi"]
    validate(spec)
    schemas = spec["components"]["schemas"]
    tried = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            url = path
            query: dict[str, str] = {}
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    url = url.replace(
                        "{" + p["name"] + "}", urllib.parse.quote(p["example"], safe="")
                    )
                elif p["name"] == "tenant":
                    query["tenant"] = CFG["tenant"]
                elif p["name"] == "ns" and url.endswith("/history"):
                    # The example cluster records this namespace only.
                    query["ns"] = CFG["recovery_namespace"]
            body = None
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                example = dict(schemas[ref.rsplit("/", 1)[-1]]["example"])
                example["tenant"] = CFG["tenant"]
                body = json.dumps(example).encode()
            if query:
                url += "?" + urllib.parse.urlencode(query)
            request = urllib.request.Request(
                CFG["nodes"][0] + url,
                data=body,
                method=method.upper(),
                headers={
                    "Authorization": f"Bearer {CFG['key']}",
                    "Content-Type": "application/json",
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as res:
                    status = res.status
            except urllib.error.HTTPError as e:
                status = e.code
                detail = e.read().decode(errors="replace")
                raise AssertionError(f"{method.upper()} {url} answered {status}: {detail}") from e
            documented = {int(code) for code in op["responses"]}
            assert status in documented and status < 300, (method, url, status)
            tried.append(f"{method.upper()} {path}")
    assert len(tried) >= 9, tried
