"""Token budgets: each job's reserved bound, and reservations charged for attempts that died.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


UNSETTLED = "ai_status IN ('queued', 'processing') OR lease_expires_at IS NOT NULL"


def upgrade() -> None:
    """Additive: two nullable columns the Edge Functions never read (NULL counts as 0), an index."""
    op.add_column("generations", sa.Column("reserved_tokens", sa.Integer(), nullable=True))
    op.add_column("generations", sa.Column("reserve_charged_tokens", sa.Integer(), nullable=True))
    # The submit check's reservations: a user's jobs that may still spend, without a scan of
    # their history.
    op.create_index(
        "generations_user_unsettled",
        "generations",
        ["user_id"],
        postgresql_where=sa.text(UNSETTLED),
    )


def downgrade() -> None:
    """Drop the index and both columns."""
    op.drop_index("generations_user_unsettled", table_name="generations")
    op.drop_column("generations", "reserve_charged_tokens")
    op.drop_column("generations", "reserved_tokens")
