"""Supabase's API roles keep only what they need: no id sequence, read-only metrics.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Supabase's default privileges grant every new sequence in `public` to anon and
# authenticated: they could burn or reset generation_logs ids. Inserts need no sequence
# privilege (identity column), so the backend keeps working without it. The same defaults
# gave service_role write privileges on the metrics views (one is auto-updatable): the
# views are for reading.
NARROW = """
DO $$
DECLARE log_ids text := pg_get_serial_sequence('generation_logs', 'id');
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    RETURN;
  END IF;
  EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM anon, authenticated, service_role', log_ids);
  EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO service_role', log_ids);
  REVOKE ALL ON generation_daily_metrics, generation_error_codes, generation_job_facts
    FROM service_role;
  GRANT SELECT ON generation_daily_metrics, generation_error_codes, generation_job_facts
    TO service_role;
END
$$;
"""


def upgrade() -> None:
    """Additive: privileges only; the Edge Functions touch neither the sequence nor the views."""
    op.execute(NARROW)


def downgrade() -> None:
    """Nothing to undo: no role needed what upgrade() revoked, so it is not given back."""
