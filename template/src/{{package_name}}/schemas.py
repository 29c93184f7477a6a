"""The HTTP API's request and response bodies."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .models import NAME_MAX_LENGTH

BIGINT_MAX = 2**63 - 1

CityName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        # No control characters: PostgreSQL refuses NUL in text, and none belongs in a name.
        pattern=r"^[^\x00-\x1f\x7f]+$",
    ),
]


class CityCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: CityName
    population: Annotated[int, Field(ge=0, le=BIGINT_MAX)]


class CityRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    population: int


class HealthStatus(BaseModel):
    status: str


class ErrorMessage(BaseModel):
    detail: str
