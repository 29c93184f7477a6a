"""`/cities`: creation, conflicts, validation and the biggest cities."""

from typing import Any

import pytest
from httpx import AsyncClient


async def create(client: AsyncClient, name: str, population: int) -> dict[str, Any]:
    response = await client.post("/cities", json={"name": name, "population": population})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_create_city(client: AsyncClient) -> None:
    response = await client.post("/cities", json={"name": "Lyon", "population": 522_250})

    assert response.status_code == 201
    body = response.json()
    assert isinstance(body["id"], int)
    assert (body["name"], body["population"]) == ("Lyon", 522_250)


async def test_duplicate_name_is_409_and_writes_nothing(client: AsyncClient) -> None:
    first = await create(client, "Lyon", 522_250)

    response = await client.post("/cities", json={"name": "Lyon", "population": 1})

    assert response.status_code == 409
    assert "Lyon" in response.json()["detail"]
    # The session was rolled back and stays usable; the first city is intact.
    assert (await client.get("/cities/biggest")).json() == [first]
    await create(client, "Nantes", 320_732)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "Lyon"},
        {"population": 1},
        {"name": "", "population": 1},
        {"name": "   ", "population": 1},
        {"name": "x" * 101, "population": 1},
        # The limits apply to the name as sent, as the OpenAPI document says, before it is
        # stripped of its surrounding whitespace.
        {"name": "x" * 100 + " ", "population": 1},
        {"name": "Lyon\n", "population": 1},
        {"name": "\u3000", "population": 1},
        {"name": "Ly\x00on", "population": 1},
        {"name": 42, "population": 1},
        {"name": "Lyon", "population": -1},
        {"name": "Lyon", "population": 2**63},
        {"name": "Lyon", "population": 1.5},
        {"name": "Lyon", "population": "12"},
        {"name": "Lyon", "population": 1, "not_a_field": "x"},
    ],
)
async def test_invalid_body_is_422_and_writes_nothing(
    client: AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post("/cities", json=body)

    assert response.status_code == 422
    assert (await client.get("/cities/biggest")).json() == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"name": "Lyon",', "application/json"),
        (b'{"name": "\\ud800", "population": 1}', "application/json"),
        (b"[1, 2]", "application/json"),
        # Not UTF-8, or nested too deep to decode: FastAPI alone answers an undocumented 400.
        (b"A$\xffK!S\x05\xfe", "application/json"),
        (b'{"name": "\xff", "population": 1}', "application/json"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "application/json", id="nested-too-deep"),
        (b'{"name": "Lyon", "population": 1}', "text/plain"),
        (b"name=Lyon&population=1", "application/x-www-form-urlencoded"),
    ],
)
async def test_malformed_or_mistyped_body_is_422(
    client: AsyncClient, content: bytes, content_type: str
) -> None:
    response = await client.post("/cities", content=content, headers={"content-type": content_type})

    assert response.status_code == 422
    assert response.json()["detail"]
    assert (await client.get("/cities/biggest")).json() == []


async def test_name_and_population_limits(client: AsyncClient) -> None:
    assert (await create(client, "x" * 100, 0))["name"] == "x" * 100
    assert (await create(client, "  São Paulo  ", 12_325_232))["name"] == "São Paulo"
    assert (await create(client, "東京都 🗼", 2**63 - 1))["population"] == 2**63 - 1


async def test_biggest_orders_by_population_then_id(client: AsyncClient) -> None:
    small = await create(client, "Small", 10)
    tied_first = await create(client, "Tied A", 500)
    big = await create(client, "Big", 1_000)
    tied_second = await create(client, "Tied B", 500)

    response = await client.get("/cities/biggest")

    assert response.status_code == 200
    assert response.json() == [big, tied_first, tied_second, small]


async def test_biggest_limit(client: AsyncClient) -> None:
    for population in range(25):
        await create(client, f"City {population}", population)

    default = (await client.get("/cities/biggest")).json()
    three = (await client.get("/cities/biggest", params={"limit": 3})).json()

    assert len(default) == 20
    assert [city["population"] for city in three] == [24, 23, 22]
    assert len((await client.get("/cities/biggest", params={"limit": 100})).json()) == 25


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten"])
async def test_biggest_limit_out_of_range_is_422(client: AsyncClient, limit: str) -> None:
    response = await client.get("/cities/biggest", params={"limit": limit})

    assert response.status_code == 422


async def test_openapi_documents_every_answer(client: AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]

    assert set(paths["/cities"]["post"]["responses"]) == {"201", "409", "422", "503"}
    assert set(paths["/cities/biggest"]["get"]["responses"]) == {"200", "422", "503"}
