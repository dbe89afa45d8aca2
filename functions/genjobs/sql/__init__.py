"""The job tables' SQL: named statements read once from `queries.sql`, fetched by name."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from sqlalchemy import TextClause, text

_HEADER = re.compile(r"^-- (name|fragment): (\w+)\n-- (.+)\n", re.MULTILINE)
_INCLUDE = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class Query:
    """One named statement: what it does, its SQL, and the clause SQLAlchemy executes."""

    name: str
    description: str
    sql: str
    clause: TextClause


def parse(source: str) -> dict[str, Query]:
    """Every `-- name:` statement of `source`, with its `{{fragment}}` includes filled in."""
    headers = list(_HEADER.finditer(source))
    fragments: dict[str, str] = {}
    statements: list[tuple[str, str, str]] = []
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(source)
        body = _strip(source[header.end() : end])
        kind, name, description = header.groups()
        if kind == "fragment":
            fragments[name] = body
        else:
            statements.append((name, description, body))
    queries: dict[str, Query] = {}
    for name, description, body in statements:
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        sql = _INCLUDE.sub(functools.partial(_fragment, fragments, name), body)
        queries[name] = Query(name, description, sql, text(sql))
    return queries


def _fragment(fragments: dict[str, str], user: str, include: re.Match[str]) -> str:
    name = include.group(1)
    if name not in fragments:
        raise ValueError(f"query {user!r} includes unknown fragment {name!r}")
    return fragments[name]


def _strip(body: str) -> str:
    """The statement without the blank lines and section comments that follow it."""
    lines = body.rstrip().splitlines()
    while lines and (not lines[-1].strip() or lines[-1].startswith("--")):
        lines.pop()
    return "\n".join(lines).strip()


QUERIES = parse(resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8"))


def query(name: str) -> TextClause:
    """The executable statement called `name` in queries.sql."""
    return QUERIES[name].clause
