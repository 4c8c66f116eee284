"""/docs (OpenAPI) lists the protocol routes an API answers, in `myelin serve` and in `myelin local`'s document
(issue 24, gap 5: each kind's operations documented as they behave, the protocol routes included)."""

from __future__ import annotations

from pathlib import Path

import httpx

from conftest import ROOT
from myelin.openapi_doc import paths
from myelin.spec import load_api_spec

APIS = ROOT / "apis"


def _paths(name: str) -> dict:
    folder = APIS / name
    spec = load_api_spec(folder)
    return paths(spec, folder, spec.endpoint)


def test_the_document_lists_each_protocols_routes():
    chat = _paths("text-generator")
    assert set(chat) == {"/text-generator", "/text-generator/v1/chat/completions", "/text-generator/v1/completions",
                         "/text-generator/v1/models"}
    assert "post" in chat["/text-generator/v1/chat/completions"] and "get" in chat["/text-generator/v1/models"]
    assert set(_paths("sentence-embedding")) == {"/sentence-embedding", "/sentence-embedding/v1/embeddings",
                                                 "/sentence-embedding/v1/models"}
    oip = _paths("kmeans")
    assert {"/v2/models/kmeans", "/v2/models/kmeans/ready", "/v2/models/kmeans/infer"} <= set(oip)
    assert "application/octet-stream" in oip["/v2/models/kmeans/infer"]["post"]["requestBody"]["content"]
    # An API that speaks only the native protocol documents only its own route.
    assert set(_paths("wine-classifier")) == {"/wine-classifier"}


def test_myelin_serve_documents_its_protocol_routes(start_server):
    server = start_server("serve", str(APIS / "kmeans"))
    document = httpx.get(server.base + "/openapi.json", timeout=10).json()
    assert {"/kmeans", "/v2/models/kmeans", "/v2/models/kmeans/ready", "/v2/models/kmeans/infer"} <= set(document["paths"])
    assert document["paths"]["/v2/models/kmeans/infer"]["post"]["operationId"] == "oip_infer_kmeans"
