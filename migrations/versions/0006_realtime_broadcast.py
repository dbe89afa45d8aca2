"""Supabase Realtime: a job's events and streamed text broadcast on its private topic.

Each `generation_deltas` and `generation_logs` row is sent with `realtime.send` on the topic
`generation:<id>`, as the same events the SSE endpoint sends, and a policy on
`realtime.messages` admits only the job's owner to that topic. Broadcast, not Postgres Changes:
nothing rewrites a row per token, and Supabase recommends it for scale. Only where the `realtime`
schema exists (Supabase, or the local shim); elsewhere this migration does nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# In the genjobs schema, which the Data API does not expose; `search_path = ''` so nothing a
# caller puts first on its path can stand in for the tables named here.
UPGRADE = """
DO $do$
BEGIN
  IF to_regnamespace('realtime') IS NULL THEN
    RAISE NOTICE 'no realtime schema: jobs are not broadcast';
    RETURN;
  END IF;
  CREATE SCHEMA IF NOT EXISTS genjobs;

  -- The job as the HTTP API shows it (Job.view), for the terminal event.
  CREATE FUNCTION genjobs.job_view(job_id uuid) RETURNS jsonb
  LANGUAGE sql STABLE SET search_path = ''
  AS $$
    SELECT jsonb_build_object(
      'id', g.id, 'task', g.task, 'status', g.ai_status, 'input', g.input,
      'metadata', coalesce(g.metadata, '{}'::jsonb), 'result', g.result,
      'error', CASE WHEN g.error IS NULL THEN NULL ELSE jsonb_build_object(
        'code', coalesce(g.error ->> 'code', 'unknown'),
        'message', coalesce(g.error ->> 'message', '')) END,
      'usage', CASE WHEN g.model IS NULL THEN NULL ELSE jsonb_build_object(
        'model', g.model, 'prompt_tokens', coalesce(g.prompt_tokens, 0),
        'completion_tokens', coalesce(g.completion_tokens, 0)) END,
      'attempts', g.attempts,
      'created_at', g.created_at, 'started_at', g.started_at, 'finished_at', g.finished_at)
    FROM public.generations g WHERE g.id = job_id
  $$;

  CREATE FUNCTION genjobs.broadcast_delta() RETURNS trigger
  LANGUAGE plpgsql SET search_path = ''
  AS $$
  BEGIN
    PERFORM realtime.send(
      jsonb_build_object('id', NEW.id, 'attempt', NEW.attempt, 'seq', NEW.seq, 'text', NEW.text),
      'delta', 'generation:' || NEW.generation_id, true);
    RETURN NULL;
  END
  $$;

  -- The SSE endpoint's mapping (genjobs/api/events.py): usage, reset on a new attempt, and
  -- status, or the terminal event named after the final status with the job view.
  CREATE FUNCTION genjobs.broadcast_event() RETURNS trigger
  LANGUAGE plpgsql SET search_path = ''
  AS $$
  DECLARE
    topic text := 'generation:' || NEW.generation_id;
  BEGIN
    IF NEW.event = 'published' THEN
      RETURN NULL;
    END IF;
    IF NEW.prompt_tokens IS NOT NULL OR NEW.completion_tokens IS NOT NULL THEN
      PERFORM realtime.send(
        jsonb_build_object('id', NEW.id, 'attempt', NEW.attempt, 'model', NEW.model,
                           'prompt_tokens', coalesce(NEW.prompt_tokens, 0),
                           'completion_tokens', coalesce(NEW.completion_tokens, 0)),
        'usage', topic, true);
    END IF;
    IF NEW.event = 'started' THEN
      PERFORM realtime.send(
        jsonb_build_object('id', NEW.id, 'attempt', NEW.attempt), 'reset', topic, true);
    END IF;
    IF NEW.ai_status IN ('succeeded', 'failed', 'cancelled') THEN
      PERFORM realtime.send(
        genjobs.job_view(NEW.generation_id) || jsonb_build_object('event_id', NEW.id),
        NEW.ai_status, topic, true);
    ELSE
      PERFORM realtime.send(
        jsonb_strip_nulls(jsonb_build_object('id', NEW.id, 'status', NEW.ai_status,
                                             'attempt', NEW.attempt, 'error', NEW.error_code)),
        'status', topic, true);
    END IF;
    RETURN NULL;
  END
  $$;

  REVOKE ALL ON FUNCTION genjobs.job_view(uuid), genjobs.broadcast_delta(),
    genjobs.broadcast_event() FROM PUBLIC;

  CREATE TRIGGER generation_deltas_broadcast AFTER INSERT ON public.generation_deltas
    FOR EACH ROW EXECUTE FUNCTION genjobs.broadcast_delta();
  CREATE TRIGGER generation_logs_broadcast AFTER INSERT ON public.generation_logs
    FOR EACH ROW EXECUTE FUNCTION genjobs.broadcast_event();

  -- Joining `generation:<id>` (and so receiving its broadcasts) is for the job's owner only.
  CREATE POLICY generation_topic_owner ON realtime.messages
    FOR SELECT TO authenticated
    USING (
      realtime.messages.extension = 'broadcast'
      AND realtime.messages.topic = (SELECT realtime.topic())
      AND (SELECT realtime.topic()) LIKE 'generation:%'
      AND EXISTS (
        SELECT 1 FROM public.generations g
        WHERE g.id::text = split_part((SELECT realtime.topic()), ':', 2)
          AND g.user_id = (SELECT auth.uid())
      )
    );
END
$do$;
"""

DOWNGRADE = """
DO $do$
BEGIN
  IF to_regnamespace('realtime') IS NULL THEN
    RETURN;
  END IF;
  DROP POLICY IF EXISTS generation_topic_owner ON realtime.messages;
  DROP TRIGGER IF EXISTS generation_logs_broadcast ON public.generation_logs;
  DROP TRIGGER IF EXISTS generation_deltas_broadcast ON public.generation_deltas;
  DROP FUNCTION IF EXISTS genjobs.broadcast_event();
  DROP FUNCTION IF EXISTS genjobs.broadcast_delta();
  DROP FUNCTION IF EXISTS genjobs.job_view(uuid);
END
$do$;
"""


def upgrade() -> None:
    """Triggers, functions and the topic policy, where Supabase Realtime exists."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove them."""
    op.execute(DOWNGRADE)
