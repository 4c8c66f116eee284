"""The protocols an API speaks (`networking.protocols`) and their sections of api.yaml: `oip` and `openai`.

A protocol is a front door, not a kind: the same predictor answers the native route (`myelin`), the
OpenAI-compatible routes (`openai`) and the Open Inference Protocol v2 (`oip`); these sections say what
each door needs to know that the predictor's class cannot tell (the tensors of an OIP model, the OpenAI
routes an API answers).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..contract import PROTOCOL_OIP
from .fields import _Strict

#: OIP tensor data types (the Open Inference Protocol's table) and their element size in bytes (BYTES: variable).
DATATYPES = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
    "FP16": 2, "FP32": 4, "FP64": 8, "BYTES": 0,
}
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                   "FP64", "BYTES"]
_TENSOR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class TensorSpec(_Strict):
    """One input or output tensor of an OIP model.

    The first dimension is the rows of a request: each row is one prediction (one `predict` payload), so it
    is always -1 (variable); the other dimensions are fixed sizes, or -1 for variable.
    """

    name: str = Field(..., description="Tensor name: the key of this value in each row's payload (inputs) or "
                      "result (outputs).")
    datatype: Datatype = Field(..., description="OIP data type: BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, "
                               "BYTES.")
    shape: list[int] = Field(..., min_length=1, max_length=8,
                             description="Dimensions, -1 for variable; the first is the rows (-1).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _TENSOR_NAME.match(v):
            raise ValueError(f"{v!r} is not a tensor name: a letter or '_', then letters, digits, '_', '.', '-' "
                             "(at most 64)")
        return v

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        for dim in v:
            if isinstance(dim, bool) or dim < -1 or dim == 0:
                raise ValueError(f"dimensions are positive sizes or -1 (variable), got {dim!r}")
        if v[0] != -1:
            raise ValueError(f"the first dimension is the rows of a request (one prediction each) and must be -1, "
                             f"got {v[0]}")
        return v


class OipSpec(_Strict):
    """`oip:` the model an API serves over the Open Inference Protocol v2 (`networking.protocols: [oip]`)."""

    version: str = Field("1", description="The model version: served in metadata; `/versions/<v>` must name it.")
    platform: str = Field("myelin_python", description="The `platform` field of the model metadata.")
    inputs: list[TensorSpec] = Field(..., min_length=1, description="Input tensors; a row's payload is "
                                     "{name: value} over them.")
    outputs: list[TensorSpec] = Field(..., min_length=1, description="Output tensors; read by name from each "
                                      "row's result.")

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _VERSION.match(v):
            raise ValueError(f"{v!r} is not a version: letters, digits, '_', '.', '-' (at most 64)")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "OipSpec":
        for side, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            seen: set[str] = set()
            for tensor in tensors:
                if tensor.name in seen:
                    raise ValueError(f"{side}: tensor {tensor.name!r} is declared twice")
                seen.add(tensor.name)
        return self


OpenAIRoute = Literal["chat", "completions", "embeddings"]


class OpenAISpec(_Strict):
    """`openai:` which OpenAI-compatible routes an API answers (`networking.protocols: [openai]`)."""

    routes: list[OpenAIRoute] = Field(
        default_factory=lambda: ["chat", "completions"], min_length=1,
        description="chat (POST /v1/chat/completions), completions (POST /v1/completions), embeddings "
        "(POST /v1/embeddings); GET /v1/models is always answered.",
    )
    max_inputs: int = Field(2048, ge=1, le=100000, description="Most inputs one embeddings request may carry.")

    @field_validator("routes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"a route is listed twice: {v}")
        if "embeddings" in v and len(v) > 1:
            raise ValueError("embeddings and text generation (chat, completions) need different predictors: an "
                             "API serves either embeddings, or chat and completions")
        return v


def protocol_sections(protocol: str, protocols: list[str], section: object | None) -> None:
    """The `oip:` section is there when (and only when) oip is served; `openai:` only when openai is."""
    if protocol == PROTOCOL_OIP and PROTOCOL_OIP in protocols and section is None:
        raise ValueError("networking.protocols lists oip: declare the model's tensors here (oip.inputs and "
                         "oip.outputs, each a list of {name, datatype, shape})")
    if section is not None and protocol not in protocols:
        raise ValueError(f"set, but networking.protocols does not list {protocol}")


def protocols_of(spec: object) -> list[str]:
    """The protocols a spec of any kind speaks: `networking.protocols`, or the native route alone for a kind
    without the field (a TrafficSplitter routes its endpoint only)."""
    return list(getattr(getattr(spec, "networking", None), "protocols", None) or ["myelin"])
