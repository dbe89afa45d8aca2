"""One row per job with its figures, for stats by any dimension (day, task, model).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same definitions as generation_daily_metrics (0001): duration is what a user waits
# (created → finished), run time is started → finished. Percentiles cannot be summed across
# days or tasks, so figures for any grouping are computed from these rows.
JOB_FACTS = """
CREATE VIEW generation_job_facts WITH (security_invoker = true) AS
SELECT
  id,
  user_id,
  (date_trunc('day', created_at AT TIME ZONE 'UTC'))::date AS day,
  task,
  model,
  ai_status,
  CASE WHEN ai_status = 'failed' THEN coalesce(error ->> 'code', 'unknown') END AS error_code,
  attempts,
  extract(epoch FROM finished_at - created_at)::float8 AS duration_seconds,
  extract(epoch FROM finished_at - started_at)::float8 AS run_seconds,
  coalesce(prompt_tokens, 0) AS prompt_tokens,
  coalesce(completion_tokens, 0) AS completion_tokens,
  created_at,
  finished_at
FROM generations
"""

# As for 0001's views: only the backend reads metrics.
SECURITY = """
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    REVOKE ALL ON generation_job_facts FROM anon, authenticated;
    GRANT SELECT ON generation_job_facts TO service_role;
  END IF;
END
$$;
"""


def upgrade() -> None:
    """Additive: a view only."""
    op.execute(JOB_FACTS)
    op.execute(SECURITY)


def downgrade() -> None:
    """Drop the view."""
    op.execute("DROP VIEW IF EXISTS generation_job_facts")
