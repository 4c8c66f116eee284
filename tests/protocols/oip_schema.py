"""The Open Inference Protocol v2 REST responses as JSON Schemas, written from the protocol's specification
(kserve/open-inference-protocol, specification/protocol/inference_rest.md and open_inference_rest.yaml) and
Triton's binary tensor data extension (docs/protocol/extension_binary_data.md): the second, independent
client the OIP tests check Myelin's answers against (besides tritonclient)."""

from __future__ import annotations

from jsonschema import Draft202012Validator

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES", "BF16"]

_parameters = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
_tensor_data = {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/tensor_data"}, {"type": "number"},
                                                    {"type": "string"}, {"type": "boolean"}]}}
_metadata_tensor = {
    "type": "object", "required": ["name", "datatype", "shape"],
    "properties": {"name": {"type": "string"}, "datatype": {"enum": DATATYPES},
                   "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}}},
}
_response_output = {
    "type": "object", "required": ["name", "shape", "datatype"],
    "properties": {"name": {"type": "string"}, "datatype": {"enum": DATATYPES},
                   "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                   "parameters": {"$ref": "#/$defs/parameters"}, "data": {"$ref": "#/$defs/tensor_data"}},
    # The binary extension: an output is either `data`, or `parameters.binary_data_size` with its bytes after the JSON.
    "oneOf": [
        {"required": ["data"], "not": {"required": ["parameters"], "properties": {
            "parameters": {"required": ["binary_data_size"]}}}},
        {"required": ["parameters"], "not": {"required": ["data"]},
         "properties": {"parameters": {"required": ["binary_data_size"],
                                       "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}}},
    ],
}
_defs = {"parameters": _parameters, "tensor_data": _tensor_data, "metadata_tensor": _metadata_tensor,
         "response_output": _response_output}


def _schema(body: dict) -> Draft202012Validator:
    return Draft202012Validator({"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": _defs, **body})


SERVER_METADATA = _schema({"type": "object", "required": ["name", "version", "extensions"], "properties": {
    "name": {"type": "string"}, "version": {"type": "string"},
    "extensions": {"type": "array", "items": {"type": "string"}}}})
MODEL_METADATA = _schema({"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
    "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
    "platform": {"type": "string"},
    "inputs": {"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}},
    "outputs": {"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}}}})
INFER_RESPONSE = _schema({"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
    "parameters": {"$ref": "#/$defs/parameters"},
    "outputs": {"type": "array", "items": {"$ref": "#/$defs/response_output"}}}})
ERROR = _schema({"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
                 "additionalProperties": False})
MODEL_READY = _schema({"type": "object", "required": ["name", "ready"],
                       "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}})
SERVER_LIVE = _schema({"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}})


def check(validator: Draft202012Validator, document: object) -> None:
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
