"""The `cities` table and the API's bodies, as the ORM reference apps declare them (the rendered
variants have their own, which `init-db` creates for every app: the same DDL for all)."""

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class City(Base):
    __tablename__ = "cities"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    population: Mapped[int] = mapped_column(BigInteger)


class CityCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    population: int = Field(ge=0)


class CityRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    population: int
