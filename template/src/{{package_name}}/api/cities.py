"""`/cities`: create a city, list the biggest ones."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..dependencies import SessionDep
from ..errors import DATABASE_UNAVAILABLE
from ..models import City
from ..schemas import CityCreate, CityRead, ErrorMessage

router = APIRouter(prefix="/cities", tags=["cities"], responses=DATABASE_UNAVAILABLE)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={status.HTTP_409_CONFLICT: {"model": ErrorMessage, "description": "Name taken"}},
)
async def create_city(city_in: CityCreate, session: SessionDep) -> CityRead:
    city = City(name=city_in.name, population=city_in.population)
    session.add(city)
    try:
        await session.commit()
    except IntegrityError as error:
        # The name is the only constraint that valid input can violate.
        await session.rollback()
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"A city named {city_in.name!r} already exists"
        ) from error
    return CityRead.model_validate(city)


@router.get("/biggest")
async def biggest_cities(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[CityRead]:
    """The most populated cities, biggest first (ties: the oldest first)."""
    rows = await session.execute(
        select(City.id, City.name, City.population)
        .order_by(City.population.desc(), City.id)
        .limit(limit)
    )
    return [CityRead.model_validate(row) for row in rows]
