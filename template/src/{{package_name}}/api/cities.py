"""`/cities`: create, read, update and delete cities; list the biggest ones."""

from collections.abc import Sequence
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Path, Query, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.errors import (
    DATABASE_UNAVAILABLE,
    REQUEST_TOO_LARGE,
    ErrorMessage,
    Violation,
    violation,
)
from ..dependencies import ReadSessionDep, SessionDep
from ..models import ID_MAX, City
from ..schemas import CityCreate, CityRead, CityUpdate

router = APIRouter(prefix="/cities", tags=["cities"], responses=DATABASE_UNAVAILABLE)

CityId = Annotated[int, Path(ge=1, le=ID_MAX)]
NOT_FOUND: Final[dict[int | str, Any]] = {
    status.HTTP_404_NOT_FOUND: {"model": ErrorMessage, "description": "No city has this id"}
}
NAME_TAKEN: Final[dict[int | str, Any]] = {
    status.HTTP_409_CONFLICT: {"model": ErrorMessage, "description": "The name is taken"}
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CityRead,
    responses=NAME_TAKEN | REQUEST_TOO_LARGE,
)
async def create_city(city_in: CityCreate, session: SessionDep) -> City:
    city = City(**city_in.model_dump())
    session.add(city)
    await commit_unless_name_taken(session, city.name)
    return city


@router.get("/biggest", response_model=list[CityRead])
async def biggest_cities(
    session: ReadSessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> Sequence[City]:
    """The most populated cities, biggest first (ties: the oldest first)."""
    biggest = select(City).order_by(City.population.desc(), City.id).limit(limit)
    return (await session.scalars(biggest)).all()


@router.get("/{city_id}", response_model=CityRead, responses=NOT_FOUND)
async def get_city(city_id: CityId, session: ReadSessionDep) -> City:
    return await get_or_404(session, city_id)


@router.patch(
    "/{city_id}", response_model=CityRead, responses=NOT_FOUND | NAME_TAKEN | REQUEST_TOO_LARGE
)
async def update_city(city_id: CityId, changes: CityUpdate, session: SessionDep) -> City:
    city = await get_or_404(session, city_id, for_update=True)
    for field, value in changes.model_dump(exclude_unset=True).items():
        setattr(city, field, value)
    await commit_unless_name_taken(session, city.name)
    return city


@router.delete("/{city_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_city(city_id: CityId, session: SessionDep) -> None:
    city = await get_or_404(session, city_id, for_update=True)
    await session.delete(city)
    await session.commit()


async def get_or_404(session: AsyncSession, city_id: int, *, for_update: bool = False) -> City:
    """The city, or a `404`. `for_update` locks its row until the commit (on PostgreSQL): a
    concurrent update or delete of the same city waits, then sees this one's result."""
    city = await session.get(City, city_id, with_for_update=for_update)
    if city is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No city has id {city_id}")
    return city


async def commit_unless_name_taken(session: AsyncSession, name: str) -> None:
    """Commit, or roll back and answer `409` if another city has the name."""
    try:
        await session.commit()
    except IntegrityError as error:
        await session.rollback()
        if violation(error) is not Violation.UNIQUE:
            raise
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"A city named {name!r} already exists"
        ) from error
