"""The template's benchmark: the rendered service against raw asyncpg and the common seed pattern,
under wrk. Run it with `uv run python -m bench` (see README.md, "Benchmark")."""
