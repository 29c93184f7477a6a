"""Reference apps the rendered service is measured against, with the same endpoints and answers.

Each module is standalone (it imports nothing from `bench`): the benchmark serves it with uvicorn
from the virtualenv of a rendered project, which has FastAPI, SQLAlchemy and asyncpg, and
configures it with environment variables.
"""
