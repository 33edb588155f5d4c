"""OpenAPI pieces of the contract (bodies are parsed by hand, so they are described by hand).

Pydantic would hold 30M numbers as Python objects and validate each; the real parsing lives in
:mod:`bridge._contract.wire` and these schemas only document it.
"""

from __future__ import annotations

from typing import Any

from .._contract.wire import ARROW_MEDIA_TYPE, JSON_MEDIA_TYPE

_INT_LIST = {"type": "array", "items": {"type": "integer", "minimum": 0}}
MATRIX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A cells x genes CSR matrix (scipy's indptr, indices, data and shape).",
    "required": ["indptr", "indices", "data", "shape"],
    "properties": {
        "indptr": {**_INT_LIST, "description": "n_cells + 1 non-decreasing offsets into data"},
        "indices": {**_INT_LIST, "description": "0-based gene column of each value"},
        "data": {"type": "array", "items": {"type": "number", "minimum": 0}},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0},
                  "minItems": 2, "maxItems": 2, "description": "[n_cells, n_genes]"},
    },
}
_BASE_PROPERTIES: dict[str, Any] = {
    "genes": {"type": "array", "items": {"type": "string"},
              "description": "gene ids of the matrix columns, in column order"},
    "matrix": MATRIX_SCHEMA,
}
_MODEL_PROPERTIES: dict[str, Any] = {
    "model": {"type": ["string", "null"], "description": "a model GET /v1/models lists"},
    "reference_atlas": {"type": ["string", "null"],
                        "description": "an atlas name GET /v1/models lists for the model"},
}
_ARROW_BODY = {"schema": {"type": "string", "format": "binary",
                          "description": "Arrow CSR IPC stream (docs/format.md)"}}


def request_body(extra: dict[str, Any], description: str) -> dict[str, Any]:
    schema = {"type": "object", "required": ["genes", "matrix"],
              "properties": {**_BASE_PROPERTIES, **extra}}
    return {"requestBody": {"required": True, "description": description, "content": {
        JSON_MEDIA_TYPE: {"schema": schema}, ARROW_MEDIA_TYPE: _ARROW_BODY}}}


ANNOTATE_BODY = request_body(
    _MODEL_PROPERTIES,
    "The public tutorial's JSON payload, or an Arrow CSR stream (then model and "
    "reference_atlas are query parameters).")
EMBED_BODY = request_body(
    {"n_components": {"type": "integer", "minimum": 1, "maximum": 200},
     "n_top_genes": {"type": "integer", "minimum": 10, "maximum": 50000},
     "seed": {"type": "integer"}},
    "A matrix as for annotate; the embedding parameters in the JSON body or the query.")
MARKERS_BODY = request_body(
    {"labels": {"type": "array", "items": {"type": ["string", "null"]},
                "description": "one label per cell (JSON); Arrow streams carry a 'label' column"},
     "top_n": {"type": "integer", "minimum": 1, "maximum": 1000},
     "method": {"type": "string", "enum": ["t-test", "wilcoxon"]}},
    "A matrix as for annotate plus one label per cell.")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message", "hint"],
                             "properties": {"code": {"type": "string"},
                                            "message": {"type": "string"},
                                            "hint": {"type": "string"},
                                            "request_id": {"type": ["string", "null"]}}}},
}
_ERROR_CONTENT = {JSON_MEDIA_TYPE: {"schema": ERROR_SCHEMA}}
_ERRORS = {
    "400": "the body is not valid JSON / Arrow",
    "401": "missing or invalid API key",
    "408": "the body (or the headers) stopped arriving, or took longer than the deadline",
    "413": "too many cells or too large a body (chunk the request)",
    "415": "unsupported Content-Type or Content-Encoding (send bodies uncompressed)",
    "422": "the payload or a parameter is invalid (message and hint say what to change)",
    "431": "the request line and headers are too large",
    "500": "server error (report the request id)",
    "503": "busy: retry after the Retry-After delay",
}


def error_responses(codes: tuple[str, ...] = tuple(_ERRORS)) -> dict[int | str, Any]:
    return {c: {"description": _ERRORS[c], "content": _ERROR_CONTENT} for c in codes}


_CALL = {
    "type": "object", "required": ["label", "confidence", "alternates", "markers"],
    "properties": {
        "cell": {"type": "string"},
        "label": {"type": "string"},
        "ontology_id": {"type": ["string", "null"]},
        "confidence": {"type": ["number", "null"]},
        "alternates": {"type": "array", "items": {"type": "object", "properties": {
            "label": {"type": "string"}, "score": {"type": ["number", "null"]}}}},
        "markers": {"type": "array", "items": {"type": "string"}},
    },
}
_METADATA = {"type": "object", "additionalProperties": {"type": "string"}}


def ok_response(json_schema: dict[str, Any], description: str) -> dict[int | str, Any]:
    return {200: {"description": description, "content": {
        JSON_MEDIA_TYPE: {"schema": json_schema},
        ARROW_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}}


ANNOTATE_OK = ok_response(
    {"type": "object", "required": ["calls"],
     "properties": {"calls": {"type": "array", "items": _CALL}, "metadata": _METADATA}},
    "One call per cell, in request order (Arrow: the Calls table as an IPC stream).")
EMBED_OK = ok_response(
    {"type": "object", "required": ["embeddings"],
     "properties": {"embeddings": {"type": "array", "items": {
         "type": "array", "items": {"type": "number"}}}, "metadata": _METADATA}},
    "One embedding vector per cell, in request order.")
MARKERS_OK = ok_response(
    {"type": "object", "required": ["markers"],
     "properties": {"markers": {"type": "array", "items": {"type": "object"}},
                    "metadata": _METADATA}},
    "Top marker genes per label (label, gene, score, log2_fold_change, p values, fractions).")
