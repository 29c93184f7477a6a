"""The HTTP API: a module per resource, each with its router, all included here."""

from fastapi import APIRouter

from . import cities

router = APIRouter()
router.include_router(cities.router)
