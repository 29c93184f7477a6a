"""The HTTP API: a module per resource, each with its router; the app includes `routers`."""

from fastapi import APIRouter

from . import cities

# Included in the app one by one: a router nested in another would cost every request one more
# lookup (FastAPI keeps included routers nested).
routers: list[APIRouter] = [cities.router]
