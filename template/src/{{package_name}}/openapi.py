"""The OpenAPI document, with the bounds of numbers exactly as the schemas declare them.

FastAPI's OpenAPI models hold `minimum`, `maximum` and their kin as floats: the population's
bounds 0 and 2**63 - 1 came out as 0.0 and 9.223372036854776e+18, a number past the bound.
The document is generated as usual, then each body schema's bounds are put back from pydantic's
own JSON schema of the model of that name in `schemas.py`.
"""

from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from . import schemas

NUMERIC_KEYWORDS: Final = frozenset(
    {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
)
# FastAPI's names for a model whose input and output schemas differ.
MODE_SUFFIXES: Final[dict[str, JsonSchemaMode]] = {
    "-Input": "validation",
    "-Output": "serialization",
}


def exact_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """`app.openapi`, with exact numbers: assign it to `app.openapi`."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        document = generate()  # FastAPI keeps it, and returns it again from then on
        if fresh:
            restore_exact_numbers(document)
        return document

    return openapi


def restore_exact_numbers(document: dict[str, Any]) -> None:
    """Put the exact bounds back into `document`'s schemas of the models of `schemas.py`."""
    models = {
        name: model
        for name, model in vars(schemas).items()
        if isinstance(model, type) and issubclass(model, BaseModel)
    }
    for component, schema in document.get("components", {}).get("schemas", {}).items():
        name, mode = _model_name_and_mode(component)
        if model := models.get(name):
            _copy_numbers(model.model_json_schema(mode=mode), schema)


def _model_name_and_mode(component: str) -> tuple[str, JsonSchemaMode]:
    for suffix, mode in MODE_SUFFIXES.items():
        if component.endswith(suffix):
            return component.removesuffix(suffix), mode
    return component, "validation"


def _copy_numbers(exact: Any, generated: Any) -> None:
    """Copy the integer bounds of `exact` onto `generated`, a schema of the same shape."""
    if isinstance(exact, dict) and isinstance(generated, dict):
        for key, value in exact.items():
            if key in NUMERIC_KEYWORDS and type(value) is int:
                generated[key] = value
            elif key in generated:
                _copy_numbers(value, generated[key])
    elif isinstance(exact, list) and isinstance(generated, list):
        for exact_item, generated_item in zip(exact, generated, strict=False):
            _copy_numbers(exact_item, generated_item)
