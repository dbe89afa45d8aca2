"""On a database with Supabase's default privileges, the migrations leave the advisor clean.

The shim grants every new table, sequence and function in `public` to the API roles, as
Supabase does; whatever the migrations create must end up with exactly the privileges below.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import ProgrammingError

from devstack.database import admin_execute, with_database
from genjobs.db import pg8000_url
from tests.conftest import ROOT, SHIM, server_url
from tests.integration.advisor_lints import run_lints

API_ROLES = ("anon", "authenticated", "service_role")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
CHECKED = {
    "table": ("has_table_privilege", TABLE_PRIVILEGES),
    "view": ("has_table_privilege", TABLE_PRIVILEGES),
    "materialized view": ("has_table_privilege", TABLE_PRIVILEGES),
    "sequence": ("has_sequence_privilege", ("USAGE", "SELECT", "UPDATE")),
    "function": ("has_function_privilege", ("EXECUTE",)),
    "schema": ("has_schema_privilege", ("USAGE", "CREATE")),
}
NONE: frozenset[str] = frozenset()
USER_READS = {"anon": NONE, "authenticated": frozenset({"SELECT"})}
BACKEND_ONLY_VIEW = {"anon": NONE, "authenticated": NONE, "service_role": frozenset({"SELECT"})}
UNREACHABLE = dict.fromkeys(API_ROLES, NONE)

# Every object the migrations create, with what each API role may do to it.
NO_ONE = {"anon": NONE, "authenticated": NONE, "service_role": NONE}

EXPECTED: dict[tuple[str, str], dict[str, frozenset[str]]] = {
    ("table", "public.generations"): {**USER_READS, "service_role": frozenset(TABLE_PRIVILEGES)},
    ("table", "public.generation_logs"): {
        **USER_READS,
        "service_role": frozenset(TABLE_PRIVILEGES),
    },
    ("table", "public.generation_deltas"): {
        **USER_READS,
        "service_role": frozenset(TABLE_PRIVILEGES),
    },
    ("view", "public.generation_daily_metrics"): BACKEND_ONLY_VIEW,
    ("view", "public.generation_error_codes"): BACKEND_ONLY_VIEW,
    ("view", "public.generation_job_facts"): BACKEND_ONLY_VIEW,
    ("sequence", "public.generation_logs_id_seq"): {
        "anon": NONE,
        "authenticated": NONE,
        "service_role": frozenset({"USAGE", "SELECT"}),
    },
    # Realtime's broadcast triggers (migration 0006): nobody calls them but the triggers.
    ("function", "genjobs.job_view(uuid)"): NO_ONE,
    ("function", "genjobs.broadcast_delta()"): NO_ONE,
    ("function", "genjobs.broadcast_event()"): NO_ONE,
    ("schema", "genjobs"): UNREACHABLE,
    ("table", "genjobs.alembic_version"): UNREACHABLE,
}

OBJECTS = """
SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
         WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'table' ELSE 'sequence' END,
       format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'function', p.oid::regprocedure::text
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'schema', nspname FROM pg_namespace
"""


@dataclass(frozen=True)
class Migrated:
    engine: Engine
    created: frozenset[tuple[str, str]]


def catalog(conn: Connection) -> set[tuple[str, str]]:
    """Every relation, function and schema in the database, by kind and qualified name."""
    return {(kind, name) for kind, name in conn.execute(text(OBJECTS))}


@pytest.fixture(scope="module")
def migrated() -> Iterator[Migrated]:
    """A database as Supabase sets it up, migrated to head; with what the migrations created."""
    base = server_url()
    name = f"genjobs_advisor_{uuid.uuid4().hex[:8]}"
    admin_execute(base, f'CREATE DATABASE "{name}"')
    url, args = pg8000_url(with_database(base, name))
    engine = create_engine(url, connect_args=args)
    config = Config(str(ROOT / "alembic.ini"))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(SHIM.read_text())
            before = catalog(conn)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        with engine.begin() as conn:
            created = frozenset(catalog(conn) - before)
        yield Migrated(engine, created)
    finally:
        engine.dispose()
        admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def privileges(conn: Connection, kind: str, name: str, role: str) -> frozenset[str]:
    """What `role` may do to the object, as Postgres itself answers."""
    function, candidates = CHECKED[kind]
    return frozenset(
        privilege
        for privilege in candidates
        if conn.execute(
            text(f"SELECT {function}(:role, :name, :privilege)"),
            {"role": role, "name": name, "privilege": privilege},
        ).scalar_one()
    )


def test_every_created_object_has_exactly_the_expected_privileges(migrated: Migrated) -> None:
    """A new object fails here until its row in EXPECTED says who may use it."""
    with migrated.engine.connect() as conn:
        actual = {
            obj: {role: privileges(conn, *obj, role) for role in API_ROLES}
            for obj in sorted(migrated.created)
        }
    assert actual == EXPECTED


def test_the_advisor_reports_nothing(migrated: Migrated) -> None:
    with migrated.engine.begin() as conn:
        assert run_lints(conn) == []


def test_every_view_runs_with_the_callers_rights(migrated: Migrated) -> None:
    """Stricter than the lint (which skips views the API roles cannot read): all views invoke."""
    views = [name for kind, name in migrated.created if kind == "view"]
    with migrated.engine.connect() as conn:
        definer = [
            view
            for view in views
            if not conn.execute(
                text(
                    "SELECT coalesce(reloptions::text[] && ARRAY['security_invoker=true', "
                    "'security_invoker=on', 'security_invoker=1', 'security_invoker=yes'], false) "
                    "FROM pg_class WHERE oid = to_regclass(:v)"
                ),
                {"v": view},
            ).scalar_one()
        ]
    assert views
    assert definer == []


def act_as_api(conn: Connection, role: str) -> None:
    """What PostgREST does for a request: switch to the API role with its search_path."""
    conn.execute(text(f"SET LOCAL ROLE {role}"))
    conn.execute(text("SET LOCAL search_path = public"))


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM alembic_version",
        "DELETE FROM alembic_version",
        "SELECT * FROM genjobs.alembic_version",
        "DELETE FROM genjobs.alembic_version",
        "SELECT nextval(pg_get_serial_sequence('generation_logs', 'id'))",
        "SELECT setval(pg_get_serial_sequence('generation_logs', 'id'), 1)",
    ],
)
def test_api_roles_reach_neither_the_version_table_nor_the_sequence(
    migrated: Migrated, role: str, statement: str
) -> None:
    with (
        pytest.raises(ProgrammingError, match=r"permission denied|does not exist"),
        migrated.engine.begin() as conn,
    ):
        act_as_api(conn, role)
        conn.execute(text(statement))


def test_inserts_draw_event_ids_without_any_sequence_privilege(migrated: Migrated) -> None:
    """Why 0004 may revoke the sequence: identity columns need no privilege on it."""
    with migrated.engine.connect() as conn:
        conn.execute(text("REVOKE ALL ON SEQUENCE generation_logs_id_seq FROM service_role"))
        conn.execute(text("SET LOCAL ROLE service_role"))
        job = conn.execute(
            text(
                "INSERT INTO generations (user_id, task, input) VALUES (:u, 't', '{}') RETURNING id"
            ),
            {"u": uuid.uuid4()},
        ).scalar_one()
        event = conn.execute(
            text(
                "INSERT INTO generation_logs (generation_id, user_id, event, ai_status) "
                "SELECT id, user_id, 'queued', 'queued' FROM generations WHERE id = :j RETURNING id"
            ),
            {"j": job},
        ).scalar_one()
        conn.rollback()
    assert event >= 1


BAD_OBJECTS = {
    "rls_disabled_in_public": "CREATE TABLE public.lint_no_rls (id int)",
    "policy_exists_rls_disabled": (
        "CREATE TABLE public.lint_policy_off (id int);"
        "CREATE POLICY p ON public.lint_policy_off FOR SELECT USING (true)"
    ),
    "security_definer_view": "CREATE VIEW public.lint_definer AS SELECT 1 AS one",
    "materialized_view_in_api": "CREATE MATERIALIZED VIEW public.lint_mat AS SELECT 1 AS one",
    "function_search_path_mutable": (
        "CREATE FUNCTION public.lint_mutable() RETURNS int LANGUAGE sql AS 'SELECT 1'"
    ),
    "security_definer_function_executable": (
        "CREATE FUNCTION public.lint_definer_fn() RETURNS int LANGUAGE sql SECURITY DEFINER "
        "SET search_path = '' AS 'SELECT 1'"
    ),
    "auth_rls_initplan": (
        "CREATE TABLE public.lint_initplan (user_id uuid);"
        "ALTER TABLE public.lint_initplan ENABLE ROW LEVEL SECURITY;"
        "CREATE POLICY p ON public.lint_initplan USING (user_id = auth.uid())"
    ),
}


@pytest.mark.parametrize("lint", sorted(BAD_OBJECTS))
def test_each_lint_catches_what_it_is_for(migrated: Migrated, lint: str) -> None:
    """The lints are not vacuous: each flags the mistake it exists for (then rolled back)."""
    with migrated.engine.connect() as conn:
        conn.exec_driver_sql(BAD_OBJECTS[lint])
        flagged = {found for found, _, _ in run_lints(conn)}
        conn.rollback()
    assert lint in flagged
