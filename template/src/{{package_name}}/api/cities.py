"""`/cities`: create, read, update and delete cities; list the biggest ones."""

from collections.abc import Sequence
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import Row, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.errors import DATABASE_UNAVAILABLE, ErrorMessage, Violation, violation
from ..dependencies import ReadSessionDep, SessionDep
from ..models import City
from ..schemas import CityCreate, CityRead, CityUpdate
from .common import RowId, get_or_404

router = APIRouter(prefix="/cities", tags=["cities"], responses=DATABASE_UNAVAILABLE)

# The demo's one Core path, for its busiest read: rows of `City`'s columns, not entities. Loading
# 20 entities cost 5.5% more instructions per request (`python -m bench.instructions`); routes
# that change what they read, or read relationships, take entities. Built once, its limit a
# parameter: building it and its cache key again for each request cost 13% of the throughput.
BIGGEST = (
    select(*City.__table__.columns)
    .order_by(City.population.desc(), City.id)
    .limit(bindparam("limit"))
)
NOT_FOUND: Final[dict[int | str, Any]] = {
    status.HTTP_404_NOT_FOUND: {"model": ErrorMessage, "description": "No city has this id"}
}
NAME_TAKEN: Final[dict[int | str, Any]] = {
    status.HTTP_409_CONFLICT: {"model": ErrorMessage, "description": "The name is taken"}
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CityRead, responses=NAME_TAKEN)
async def create_city(city_in: CityCreate, session: SessionDep) -> City:
    city = City(**city_in.model_dump())
    session.add(city)
    await commit_unless_name_taken(session, city.name)
    return city


@router.get("/biggest", response_model=list[CityRead])
async def biggest_cities(
    session: ReadSessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> Sequence[Row[Any]]:
    """The most populated cities, biggest first (ties: the oldest first)."""
    return (await session.execute(BIGGEST, {"limit": limit})).all()


@router.get("/{city_id}", response_model=CityRead, responses=NOT_FOUND)
async def get_city(city_id: RowId, session: ReadSessionDep) -> City:
    return await get_or_404(session, City, city_id)


@router.patch("/{city_id}", response_model=CityRead, responses=NOT_FOUND | NAME_TAKEN)
async def update_city(city_id: RowId, changes: CityUpdate, session: SessionDep) -> City:
    city = await get_or_404(session, City, city_id, for_update=True)
    for field, value in changes.model_dump(exclude_unset=True).items():
        setattr(city, field, value)
    await commit_unless_name_taken(session, city.name)
    return city


@router.delete("/{city_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_city(city_id: RowId, session: SessionDep) -> None:
    city = await get_or_404(session, City, city_id, for_update=True)
    await session.delete(city)
    await session.commit()


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
