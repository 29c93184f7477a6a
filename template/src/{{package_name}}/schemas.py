"""The HTTP API's request and response bodies."""

from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from .models import NAME_MAX_LENGTH, POPULATION_MAX

# The constraints apply to the name as sent, so that the OpenAPI document states exactly what is
# accepted; the name is stored without its surrounding whitespace.
Name = Annotated[
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
Population = Annotated[int, Field(ge=0, le=POPULATION_MAX)]


class CityCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name
    population: Population


class CityUpdate(BaseModel):
    """The fields to change; those left out keep their value."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name | None = None
    population: Population | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> Self:
        if nulls := [field for field in self.model_fields_set if getattr(self, field) is None]:
            msg = f"{', '.join(sorted(nulls))}: leave a field out to keep it, null is no value"
            raise ValueError(msg)
        return self


class CityRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    population: int
