"""The HTTP API's request and response bodies."""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from .models import NAME_MAX_LENGTH

BIGINT_MAX = 2**63 - 1

# The constraints apply to the name as sent, so that the OpenAPI document states exactly what is
# accepted; the name is stored without its surrounding whitespace.
CityName = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        # Something besides whitespace, and no control characters: PostgreSQL refuses NUL in
        # text, and none belongs in a name.
        pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$",
    ),
    AfterValidator(str.strip),
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
