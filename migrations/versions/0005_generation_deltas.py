"""Streamed text: each flush of a running attempt is one `generation_deltas` row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Deltas take their ids from the log's sequence: one job's events and text then share one
# order, which is what an SSE `id:` (and `Last-Event-ID`) needs. Both are written under the
# job row's lock, so ids commit in order per job.
SECURITY = """
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    RETURN;
  END IF;
  REVOKE ALL ON generation_deltas FROM anon, authenticated;
  GRANT SELECT ON generation_deltas TO authenticated;
  GRANT ALL ON generation_deltas TO service_role;
  CREATE POLICY generation_deltas_select_own ON generation_deltas
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
END
$$;
"""


def upgrade() -> None:
    """Additive: a new table the Edge Functions never read."""
    op.create_table(
        "generation_deltas",
        sa.Column(
            "id",
            sa.BigInteger(),
            server_default=sa.text("nextval('generation_logs_id_seq'::regclass)"),
            primary_key=True,
        ),
        sa.Column(
            "generation_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("generations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.UniqueConstraint(
            "generation_id", "attempt", "seq", name="generation_deltas_attempt_seq"
        ),
    )
    op.create_index("generation_deltas_generation", "generation_deltas", ["generation_id", "id"])
    op.execute("ALTER TABLE generation_deltas ENABLE ROW LEVEL SECURITY")
    op.execute(SECURITY)


def downgrade() -> None:
    """Drop the table (its policy and grants go with it)."""
    op.drop_table("generation_deltas")
