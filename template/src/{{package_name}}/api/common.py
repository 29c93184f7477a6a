"""What the routers share: a row's id in a path, the row, or a `404`."""

from typing import Annotated, TypeVar

from fastapi import HTTPException, Path, status
from sqlalchemy.ext.asyncio import AsyncSession

from ..models import ID_MAX, Base

Model = TypeVar("Model", bound=Base)

# An id in a path: out of the column's range, a `422` (rather than an error of the driver's).
RowId = Annotated[int, Path(ge=1, le=ID_MAX)]


async def get_or_404(
    session: AsyncSession, model: type[Model], primary_key: int, *, for_update: bool = False
) -> Model:
    """The row of `model` with that primary key, or a `404`.

    `for_update` locks the row until the commit (on PostgreSQL): a concurrent update or delete
    of the same row waits, then sees this one's result.
    """
    found = await session.get(model, primary_key, with_for_update=for_update)
    if found is None:
        name = model.__name__.lower()
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No {name} has id {primary_key}")
    return found
