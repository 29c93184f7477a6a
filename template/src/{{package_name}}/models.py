"""The ORM models."""

from sqlalchemy import BigInteger, Index, MetaData, String
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Constraint names that are stable across databases, so that migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The largest id of an `Integer` primary key (PostgreSQL's `integer`).
ID_MAX = 2**31 - 1
NAME_MAX_LENGTH = 100
# Ten billion: above the world's population, and exact as the float of an OpenAPI bound.
POPULATION_MAX = 10_000_000_000


class Base(AsyncAttrs, DeclarativeBase):
    """Tables are declared without a schema: the engine maps them to `DB_SCHEMA`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class City(Base):
    __tablename__ = "cities"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), unique=True)
    population: Mapped[int] = mapped_column(BigInteger)


# Serves `GET /cities/biggest` (ORDER BY population DESC, id) without sorting the table.
Index("ix_cities_population_desc_id", City.population.desc(), City.id)
