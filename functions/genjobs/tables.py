"""The tables as SQLAlchemy rows: the schema Alembic migrates (never `create_all()` outside tests).

The code reads and writes them through genjobs/sql/queries.sql, never through these classes.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from genjobs.jobs import MAX_ATTEMPTS
from genjobs.statuses import Event, Status

STATUS_VALUES = ", ".join(f"'{s.value}'" for s in Status)
EVENT_VALUES = ", ".join(f"'{e.value}'" for e in Event)


class Base(DeclarativeBase):
    """Declarative base for the project's tables."""


class GenerationRow(Base):
    """One generation job; the database is the source of truth, messages carry only its id."""

    __tablename__ = "generations"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="generations_user_idempotency_key"),
        CheckConstraint(f"ai_status IN ({STATUS_VALUES})", name="generations_ai_status_valid"),
        CheckConstraint("attempts >= 0", name="generations_attempts_nonnegative"),
        Index("generations_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        Index(
            "generations_unfinished",
            "ai_status",
            "published_at",
            postgresql_where=text("ai_status IN ('queued', 'processing')"),
        ),
        Index("generations_finished_at", "finished_at"),
        Index(
            "generations_user_unsettled",
            "user_id",
            postgresql_where=text(
                "ai_status IN ('queued', 'processing') OR lease_expires_at IS NOT NULL"
            ),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    task: Mapped[str] = mapped_column(Text)
    input: Mapped[dict[str, Any]] = mapped_column(JSONB)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str | None] = mapped_column(Text)
    ai_status: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    result: Mapped[Any | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text(str(MAX_ATTEMPTS)))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when a model rate limit defers the job: it runs again no earlier than this.
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    model: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    # The bound on one attempt's tokens, reserved against the daily budget at submit.
    reserved_tokens: Mapped[int | None] = mapped_column(Integer)
    # Reservations charged for attempts that died without reporting their usage.
    reserve_charged_tokens: Mapped[int | None] = mapped_column(Integer)
    trace_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class GenerationLogRow(Base):
    """Append-only: one row per job event, the source of the metrics views."""

    __tablename__ = "generation_logs"
    __table_args__ = (
        CheckConstraint(f"event IN ({EVENT_VALUES})", name="generation_logs_event_valid"),
        Index("generation_logs_generation", "generation_id", "id"),
        Index("generation_logs_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    generation_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("generations.id", ondelete="CASCADE")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    event: Mapped[str] = mapped_column(Text)
    ai_status: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    message_id: Mapped[str | None] = mapped_column(Text)
    delivery_attempt: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )


class GenerationDeltaRow(Base):
    """Text a running attempt streamed; kept while a client may still resume, then swept."""

    __tablename__ = "generation_deltas"
    __table_args__ = (
        UniqueConstraint("generation_id", "attempt", "seq", name="generation_deltas_attempt_seq"),
        Index("generation_deltas_generation", "generation_id", "id"),
    )

    # From the log's sequence: a job's events and deltas share one order (its SSE ids).
    id: Mapped[int] = mapped_column(
        BigInteger,
        primary_key=True,
        server_default=text("nextval('generation_logs_id_seq'::regclass)"),
    )
    generation_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("generations.id", ondelete="CASCADE")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column("text", Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )
