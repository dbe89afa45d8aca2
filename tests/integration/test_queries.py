"""Every named statement in genjobs/sql/queries.sql parses and plans on the migrated schema."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from genjobs.db import Database
from genjobs.sql import QUERIES, parse

# PREPARE needs a type for each parameter Postgres cannot infer from its use alone.
_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def test_every_query_has_a_description_and_no_unfilled_fragment() -> None:
    assert len(QUERIES) >= 20
    for name, query in QUERIES.items():
        assert query.description and not query.description.startswith("-"), name
        assert "{{" not in query.sql, name


def test_unknown_fragment_and_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fragment"):
        parse("-- name: a\n-- uses a missing fragment\nSELECT {{nope}}\n")
    with pytest.raises(ValueError, match="defined twice"):
        parse("-- name: a\n-- one\nSELECT 1\n\n-- name: a\n-- two\nSELECT 2\n")


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_query_prepares_on_postgres(db: Database, name: str) -> None:
    """PREPARE parses, resolves every table and column and types every parameter; nothing runs."""
    sql = QUERIES[name].sql
    params = list(dict.fromkeys(_PARAM.findall(sql)))
    numbered = _PARAM.sub(lambda m: f"${params.index(m.group(1)) + 1}", sql)
    with db.transaction() as conn:
        conn.execute(text(f"PREPARE q_{name} AS {numbered}".replace(":", r"\:")))
        conn.execute(text(f"DEALLOCATE q_{name}"))
