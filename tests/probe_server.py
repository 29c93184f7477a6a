"""Serve a rendered project's app under uvicorn, plus `GET /_probe/pool` for the tests.

Run with the rendered project's Python: `python probe_server.py <package> <port>`. The probe
reports how many connections the app's pool has checked out and, in the scoped style, how many
sessions its registry holds.
"""

import importlib
import sys

import uvicorn
from fastapi import Request


def main(package: str, port: int) -> None:
    app = importlib.import_module(f"{package}.main").create_app()

    @app.get("/_probe/pool")
    async def pool(request: Request) -> dict[str, int]:
        database = request.app.state.database
        scoped = getattr(database, "scoped_session", None)
        return {
            "checked_out": database.engine.pool.checkedout(),
            "scoped_sessions": len(scoped.registry.registry) if scoped else 0,
        }

    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
