"""Supabase's Security Advisor lints, re-expressed from supabase/splinter (lints/*.sql, 55db5b1).

Each query keeps splinter's predicates (which objects, which roles, which schemas) and returns
`(lint, schema, name)` rows. Splinter reads the schemas PostgREST exposes from the
`pgrst.db_schemas` setting; `run_lints` sets it to Supabase's default for the transaction.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# Supabase's default Data API schemas (Dashboard > API settings > Exposed schemas).
EXPOSED_SCHEMAS = "public, graphql_public"

# Schemas splinter never reports on: Supabase's own and extensions'.
SYSTEM_SCHEMAS = (
    "'_timescaledb_cache', '_timescaledb_catalog', '_timescaledb_config', "
    "'_timescaledb_internal', 'auth', 'cron', 'extensions', 'graphql', 'graphql_public', "
    "'information_schema', 'net', 'pgmq', 'pgroonga', 'pgsodium', 'pgsodium_masks', 'pgtle', "
    "'pgbouncer', 'pg_catalog', 'realtime', 'repack', 'storage', 'supabase_functions', "
    "'supabase_migrations', 'tiger', 'topology', 'vault'"
)

EXPOSED = (
    "n.nspname = ANY (ARRAY(SELECT trim(unnest(string_to_array("
    "current_setting('pgrst.db_schemas', true), ',')))))"
)
API_CAN_SELECT = (
    "(has_table_privilege('anon', c.oid, 'SELECT') "
    "OR has_table_privilege('authenticated', c.oid, 'SELECT'))"
)
NOT_EXTENSION_MEMBER = (
    "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')"
)

LINTS: dict[str, str] = {
    # 0013, ERROR: a table the API roles can read, in an exposed schema, without RLS.
    "rls_disabled_in_public": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND NOT c.relrowsecurity AND {API_CAN_SELECT} AND {EXPOSED}
          AND n.nspname NOT IN ({SYSTEM_SCHEMAS})
    """,
    # 0007, ERROR: policies written but RLS left off, so none of them applies.
    "policy_exists_rls_disabled": f"""
        SELECT DISTINCT n.nspname, c.relname
        FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND NOT c.relrowsecurity AND n.nspname NOT IN ({SYSTEM_SCHEMAS})
          AND {NOT_EXTENSION_MEMBER.format(oid="c.oid")}
    """,
    # 0010, ERROR: a view the API roles can read that runs with its owner's rights (and RLS).
    "security_definer_view": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'v' AND {API_CAN_SELECT} AND {EXPOSED}
          AND n.nspname NOT IN ({SYSTEM_SCHEMAS}) AND {NOT_EXTENSION_MEMBER.format(oid="c.oid")}
          AND NOT (lower(coalesce(c.reloptions::text, '{{}}'))::text[] && ARRAY[
            'security_invoker=1', 'security_invoker=true', 'security_invoker=yes',
            'security_invoker=on'])
    """,
    # 0016, WARN: materialized views have no RLS; readable by the API roles they leak.
    "materialized_view_in_api": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'm' AND {API_CAN_SELECT} AND {EXPOSED}
          AND n.nspname NOT IN ({SYSTEM_SCHEMAS}) AND {NOT_EXTENSION_MEMBER.format(oid="c.oid")}
    """,
    # 0011, WARN: a function whose search_path the caller controls (any non-system schema).
    "function_search_path_mutable": f"""
        SELECT n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname NOT IN ({SYSTEM_SCHEMAS}) AND {NOT_EXTENSION_MEMBER.format(oid="p.oid")}
          AND NOT EXISTS (
            SELECT 1 FROM unnest(coalesce(p.proconfig, '{{}}')) AS setting
            WHERE setting LIKE 'search_path=%'
          )
    """,
    # 0028 / 0029, WARN: a SECURITY DEFINER function the API roles can call through /rpc.
    "security_definer_function_executable": f"""
        SELECT n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prosecdef AND {EXPOSED} AND n.nspname NOT IN ({SYSTEM_SCHEMAS})
          AND (has_function_privilege('anon', p.oid, 'EXECUTE')
               OR has_function_privilege('authenticated', p.oid, 'EXECUTE'))
    """,
    # 0003, WARN (performance): auth.<fn>() or current_setting() evaluated once per row
    # instead of once per statement as `(select auth.uid())`.
    "auth_rls_initplan": f"""
        SELECT pol.schemaname, pol.tablename FROM pg_policies pol
        JOIN pg_namespace n ON n.nspname = pol.schemaname
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pol.tablename
        CROSS JOIN LATERAL (VALUES (pol.qual), (pol.with_check)) AS expr(sql)
        CROSS JOIN LATERAL (VALUES
            ('%auth.uid()%', '%select auth.uid()%'),
            ('%auth.jwt()%', '%select auth.jwt()%'),
            ('%auth.role()%', '%select auth.role()%'),
            ('%auth.email()%', '%select auth.email()%'),
            ('%current\\_setting(%)%', '%select current\\_setting(%)%')
        ) AS call(bare, wrapped)
        WHERE c.relrowsecurity AND pol.schemaname NOT IN ({SYSTEM_SCHEMAS})
          AND expr.sql LIKE call.bare AND lower(expr.sql) NOT LIKE call.wrapped
    """,
}


def run_lints(conn: Connection) -> list[tuple[str, str, str]]:
    """Every finding of every lint, as Supabase's dashboard would list them."""
    conn.execute(text("SELECT set_config('pgrst.db_schemas', :s, true)"), {"s": EXPOSED_SCHEMAS})
    findings: list[tuple[str, str, str]] = []
    for lint, query in LINTS.items():
        for schema, name in conn.execute(text(query)):
            findings.append((lint, schema, name))
    return sorted(findings)
