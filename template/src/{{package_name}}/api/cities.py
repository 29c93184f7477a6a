"""`/cities`: create a city, list the biggest ones."""

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import RowMapping, bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from ..dependencies import ReadConnectionDep, SessionDep
from ..errors import DATABASE_UNAVAILABLE
from ..models import City
from ..schemas import CityCreate, CityRead, ErrorMessage

router = APIRouter(prefix="/cities", tags=["cities"], responses=DATABASE_UNAVAILABLE)

CITIES = City.metadata.tables[City.__tablename__]

# The statements are built once: building and hashing one costs more than running it.
# A Core INSERT ... RETURNING on the table: one statement, no flush, no refresh, and none of
# the work of the ORM's bulk insert (where an ORM `insert(City)` would send a parameter dict).
# Both read every column of the table: a field added to `City` (models.py), to `CityCreate`
# and `CityRead` (schemas.py) and to the database (a migration) flows through, untouched here.
INSERT_CITY = insert(CITIES).returning(*CITIES.columns)
BIGGEST_CITIES = (
    select(CITIES).order_by(CITIES.c.population.desc(), CITIES.c.id).limit(bindparam("limit"))
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CityRead,
    responses={status.HTTP_409_CONFLICT: {"model": ErrorMessage, "description": "Name taken"}},
)
async def create_city(city_in: CityCreate, session: SessionDep) -> RowMapping:
    try:
        city = (await session.execute(INSERT_CITY, city_in.model_dump())).mappings().one()
        await session.commit()
    except IntegrityError as error:
        # The name is the only constraint that valid input can violate.
        await session.rollback()
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"A city named {city_in.name!r} already exists"
        ) from error
    return city


# The rows go out as they come: FastAPI validates and serializes them once, as `CityRead`.
@router.get("/biggest", response_model=list[CityRead])
async def biggest_cities(
    connection: ReadConnectionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> Sequence[RowMapping]:
    """The most populated cities, biggest first (ties: the oldest first)."""
    rows = await connection.execute(BIGGEST_CITIES, {"limit": limit})
    return rows.mappings().all()
