"""Generations, their event log, row level security and the metrics views.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'queued', 'processing', 'succeeded', 'failed', 'cancelled'"
EVENTS = (
    "'queued', 'published', 'started', 'retry', 'succeeded', 'failed', "
    "'dead_lettered', 'cancelled', 'replayed'"
)
TIMESTAMP = sa.DateTime(timezone=True)

# Supabase's roles exist on Supabase (and under the test shim); elsewhere RLS stays
# enabled with no policy, which denies every non-owner: the safe default.
SECURITY = """
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    RAISE NOTICE 'no Supabase roles: row level security enabled without user policies';
    RETURN;
  END IF;
  REVOKE ALL ON generations, generation_logs FROM anon, authenticated;
  GRANT SELECT ON generations, generation_logs TO authenticated;
  GRANT ALL ON generations, generation_logs TO service_role;
  CREATE POLICY generations_select_own ON generations
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
  CREATE POLICY generation_logs_select_own ON generation_logs
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
  REVOKE ALL ON generation_daily_metrics, generation_error_codes FROM anon, authenticated;
  GRANT SELECT ON generation_daily_metrics, generation_error_codes TO service_role;
END
$$;
"""

# The browser watches its job through Supabase Realtime where the publication exists.
REALTIME_ADD = """
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime') THEN
    ALTER PUBLICATION supabase_realtime ADD TABLE generations;
  END IF;
END
$$;
"""
REALTIME_DROP = """
DO $$
BEGIN
  IF EXISTS (
    SELECT 1 FROM pg_publication_tables
    WHERE pubname = 'supabase_realtime' AND schemaname = 'public' AND tablename = 'generations'
  ) THEN
    ALTER PUBLICATION supabase_realtime DROP TABLE generations;
  END IF;
END
$$;
"""

# Time to terminal (created → finished) is what a user waits; run time is started → finished.
DAILY_METRICS = """
CREATE VIEW generation_daily_metrics WITH (security_invoker = true) AS
SELECT
  (date_trunc('day', created_at AT TIME ZONE 'UTC'))::date AS day,
  task,
  count(*) AS jobs,
  count(*) FILTER (WHERE ai_status = 'succeeded') AS succeeded,
  count(*) FILTER (WHERE ai_status = 'failed') AS failed,
  count(*) FILTER (WHERE ai_status = 'cancelled') AS cancelled,
  count(*) FILTER (WHERE ai_status IN ('queued', 'processing')) AS unfinished,
  round(
    count(*) FILTER (WHERE ai_status = 'succeeded')::numeric
    / nullif(count(*) FILTER (WHERE ai_status IN ('succeeded', 'failed')), 0),
    4
  ) AS success_rate,
  avg(extract(epoch FROM finished_at - created_at))
    FILTER (WHERE ai_status = 'succeeded') AS avg_duration_seconds,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
    FILTER (WHERE ai_status = 'succeeded') AS p50_duration_seconds,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
    FILTER (WHERE ai_status = 'succeeded') AS p95_duration_seconds,
  avg(extract(epoch FROM finished_at - started_at))
    FILTER (WHERE ai_status = 'succeeded') AS avg_run_seconds,
  avg(attempts) FILTER (WHERE ai_status IN ('succeeded', 'failed')) AS avg_attempts,
  coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
  coalesce(sum(completion_tokens), 0) AS completion_tokens
FROM generations
GROUP BY 1, 2
"""

ERROR_CODES = """
CREATE VIEW generation_error_codes WITH (security_invoker = true) AS
SELECT
  (date_trunc('day', created_at AT TIME ZONE 'UTC'))::date AS day,
  task,
  coalesce(error ->> 'code', 'unknown') AS error_code,
  count(*) AS jobs
FROM generations
WHERE ai_status = 'failed'
GROUP BY 1, 2, 3
"""


def upgrade() -> None:
    """Additive only: the Edge Functions still run on this database."""
    op.create_table(
        "generations",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            primary_key=True,
            server_default=sa.text("gen_random_uuid()"),
        ),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("input", postgresql.JSONB(), nullable=False),
        sa.Column(
            "metadata", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("request_hash", sa.Text(), nullable=True),
        sa.Column("ai_status", sa.Text(), nullable=False, server_default=sa.text("'queued'")),
        sa.Column("result", postgresql.JSONB(), nullable=True),
        sa.Column("error", postgresql.JSONB(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=sa.text("5")),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.Column("cancel_requested_at", TIMESTAMP, nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("trace_id", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", TIMESTAMP, nullable=False, server_default=sa.text("now()")),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.UniqueConstraint("user_id", "idempotency_key", name="generations_user_idempotency_key"),
        sa.CheckConstraint(f"ai_status IN ({STATUSES})", name="generations_ai_status_valid"),
        sa.CheckConstraint("attempts >= 0", name="generations_attempts_nonnegative"),
    )
    op.create_index(
        "generations_user_created",
        "generations",
        ["user_id", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "generations_unfinished",
        "generations",
        ["ai_status", "published_at"],
        postgresql_where=sa.text("ai_status IN ('queued', 'processing')"),
    )
    op.create_index("generations_finished_at", "generations", ["finished_at"])

    op.create_table(
        "generation_logs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column(
            "generation_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("generations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("ai_status", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("delivery_attempt", sa.Integer(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint(f"event IN ({EVENTS})", name="generation_logs_event_valid"),
    )
    op.create_index("generation_logs_generation", "generation_logs", ["generation_id", "id"])
    op.create_index("generation_logs_created_at", "generation_logs", ["created_at"])

    op.execute("ALTER TABLE generations ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE generation_logs ENABLE ROW LEVEL SECURITY")
    op.execute(DAILY_METRICS)
    op.execute(ERROR_CODES)
    op.execute(SECURITY)
    op.execute(REALTIME_ADD)


def downgrade() -> None:
    """Drop what upgrade() created; nothing that existed before is touched."""
    op.execute(REALTIME_DROP)
    op.execute("DROP VIEW IF EXISTS generation_error_codes")
    op.execute("DROP VIEW IF EXISTS generation_daily_metrics")
    op.drop_table("generation_logs")
    op.drop_table("generations")
