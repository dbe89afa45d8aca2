-- Every statement on the job tables (generations, generation_logs and their views).
-- Each starts with `-- name: NAME` and a one-line description, and is loaded by that name
-- (genjobs/sql/__init__.py). A `-- fragment: NAME` is text shared by several statements,
-- written `{{NAME}}` where it is used. Values are always bound parameters (`:name`).
-- Each status change writes its generation_logs row in the same statement (a CTE), so the
-- change and its event are one atomic write; the transitions are listed in genjobs/statuses.py.

-- fragment: replayed_since
-- Whether job `g` was replayed at or after `replay_cutoff` (a message older than that is stale).
EXISTS (
  SELECT 1 FROM generation_logs l
  WHERE l.generation_id = g.id AND l.event = 'replayed' AND l.created_at >= replay_cutoff)

-- fragment: tokens_committed
-- The tokens user :user_id has committed against today's budget (the day is UTC's, whatever the session's TimeZone): what their jobs created today were charged (an ended job whose attempt never settled: its bound), plus the bound of every job an attempt may still spend on (unfinished, or ended while an attempt holds a live lease).
((SELECT coalesce(sum(
    coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)
    + coalesce(reserve_charged_tokens, 0)
    + CASE WHEN ai_status NOT IN ('queued', 'processing') AND lease_expires_at <= now()
           THEN coalesce(reserved_tokens, 0) ELSE 0 END), 0)
  FROM generations
  WHERE user_id = :user_id
    AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
 + (SELECT coalesce(sum(coalesce(reserved_tokens, 0)), 0)
    FROM generations
    WHERE user_id = :user_id
      AND (ai_status IN ('queued', 'processing') OR lease_expires_at > now())))

-- fragment: charge_dead_attempt
-- SET item for a statement that takes a job from an attempt whose lease expired: that attempt may have spent up to the job's bound and no usage reached us, so the bound is charged.
reserve_charged_tokens = coalesce(reserve_charged_tokens, 0)
  + CASE WHEN ai_status = 'processing' AND lease_expires_at < now()
         THEN coalesce(reserved_tokens, 0) ELSE 0 END


-- ===== Submit (api) =====

-- name: lock_user_submissions
-- Serialise one user's submits until commit (its own statement: the next one's snapshot must see what the lock holder committed; sent with that next one, in one round trip).
SELECT pg_advisory_xact_lock(hashtextextended(CAST(:user_id AS text), 7))

-- name: user_usage
-- The user's submits in the last minute, unfinished jobs, tokens committed today (charged and reserved), and the job with this idempotency key.
SELECT
  (SELECT count(*) FROM generations
    WHERE user_id = :user_id AND created_at > now() - interval '1 minute') AS recent,
  (SELECT count(*) FROM generations
    WHERE user_id = :user_id AND ai_status IN ('queued', 'processing')) AS active,
  {{tokens_committed}} AS tokens,
  (SELECT row_to_json(g) FROM generations g
    WHERE g.user_id = :user_id AND g.idempotency_key = :key) AS existing

-- name: insert_job
-- Insert a queued job with its reserved token bound and its `queued` event, already counted as published (its submit publishes right after; a failed publish clears `published_at`); no row when the idempotency key exists.
WITH job AS (
  INSERT INTO generations
    (user_id, task, input, metadata, idempotency_key, request_hash, trace_id, max_attempts,
     reserved_tokens, published_at)
  VALUES (:user_id, :task, CAST(:input AS jsonb), CAST(:metadata AS jsonb), :key, :hash,
          :trace_id, :max_attempts, :reserved_tokens, now())
  ON CONFLICT (user_id, idempotency_key) DO NOTHING
  RETURNING *
), log AS (
  INSERT INTO generation_logs (generation_id, user_id, event, ai_status, attempt)
  SELECT id, user_id, 'queued', 'queued', 0 FROM job
)
SELECT * FROM job

-- name: mark_published
-- Record that a message for the unfinished job reached Pub/Sub, with a `published` event.
WITH job AS (
  UPDATE generations SET published_at = now(), updated_at = now()
  WHERE id = :id AND ai_status IN ('queued', 'processing')
  RETURNING id, user_id, ai_status, attempts
)
INSERT INTO generation_logs (generation_id, user_id, event, ai_status, attempt, message_id)
SELECT id, user_id, 'published', ai_status, attempts, :message_id FROM job

-- name: unmark_published
-- Forget a queued job's publish after a failed one, so the sweeper takes it after its grace period.
UPDATE generations SET published_at = NULL WHERE id = :id AND ai_status = 'queued'


-- ===== Reads (api, dead_letter) =====

-- name: get_job
-- The job by id.
SELECT * FROM generations WHERE id = :id

-- name: get_user_job
-- The job by id, only if it belongs to the user.
SELECT * FROM generations WHERE id = :id AND user_id = :user_id

-- name: find_job_by_key
-- The user's job created with this idempotency key.
SELECT * FROM generations WHERE user_id = :user_id AND idempotency_key = :key

-- name: list_user_jobs
-- The user's jobs newest first, optionally by status and task, after a keyset cursor (NULL: from the top).
SELECT * FROM generations
WHERE user_id = :user_id
  AND (CAST(:status AS text) IS NULL OR ai_status = :status)
  AND (CAST(:task AS text) IS NULL OR task = :task)
  AND (CAST(:cursor_created_at AS timestamptz) IS NULL
       OR (created_at, id) < (:cursor_created_at, :cursor_id))
ORDER BY created_at DESC, id DESC LIMIT :limit

-- name: replayed_since
-- Whether the job was replayed at or after :since (a dead-letter message older than that is stale).
SELECT {{replayed_since}}
FROM generations g CROSS JOIN (SELECT CAST(:since AS timestamptz) AS replay_cutoff) cutoff
WHERE g.id = :id


-- ===== Transitions of one job (api, worker, dead_letter) =====

-- name: cancel_job
-- queued|processing → cancelled for the user's job, with a `cancelled` event; no row if it has ended or is not theirs.
WITH job AS (
  UPDATE generations
  -- The lease is kept: until its attempt settles (charge_usage), the job's reservation counts.
  SET ai_status = 'cancelled', cancel_requested_at = now(), finished_at = now(),
      updated_at = now(),
      error = jsonb_build_object('code', 'cancelled', 'message', 'cancelled by the user')
  WHERE id = :id AND user_id = :user_id AND ai_status IN ('queued', 'processing')
  RETURNING *
), log AS (
  INSERT INTO generation_logs (generation_id, user_id, event, ai_status, attempt)
  SELECT id, user_id, 'cancelled', 'cancelled', attempts FROM job
)
SELECT * FROM job

-- name: claim_job
-- queued (or processing with an expired lease) → processing under a new lease and attempt number, with a `started` event; else the job as it is and why it was refused.
WITH claimed AS (
  UPDATE generations
  SET ai_status = 'processing', attempts = attempts + 1,
      lease_expires_at = now() + make_interval(secs => :lease_seconds),
      started_at = coalesce(started_at, now()), updated_at = now(),
      {{charge_dead_attempt}}
  WHERE id = :id AND attempts < max_attempts
    AND (not_before IS NULL OR not_before <= now())
    AND (ai_status = 'queued' OR (ai_status = 'processing' AND lease_expires_at < now()))
  RETURNING *
), log AS (
  INSERT INTO generation_logs
    (generation_id, user_id, event, ai_status, attempt, message_id, delivery_attempt)
  SELECT id, user_id, 'started', 'processing', attempts, :message_id, :delivery_attempt
  FROM claimed
)
SELECT NULL AS refused, * FROM claimed
UNION ALL
SELECT
  CASE
    WHEN ai_status = 'cancelled' THEN 'cancelled'
    WHEN ai_status IN ('succeeded', 'failed') THEN 'finished'
    WHEN ai_status = 'queued' AND not_before IS NOT NULL THEN 'deferred'
    WHEN ai_status = 'processing' AND lease_expires_at >= now() THEN 'lease_live'
    WHEN attempts >= max_attempts THEN 'attempts_spent'
    ELSE 'lease_live'
  END,
  *
FROM generations
WHERE id = :id AND NOT EXISTS (SELECT 1 FROM claimed)

-- name: finish_attempt
-- processing → succeeded | failed | queued (retry, possibly deferred) if this attempt still owns the job (fencing), with the outcome's event.
WITH job AS (
  UPDATE generations
  SET ai_status = :status,
      result = CASE WHEN :status = 'succeeded' THEN CAST(:result AS jsonb) ELSE result END,
      error = CASE WHEN CAST(:error_code AS text) IS NULL THEN NULL
              ELSE jsonb_build_object('code', CAST(:error_code AS text),
                                      'message', CAST(:error_message AS text)) END,
      model = coalesce(CAST(:model AS text), model),
      prompt_tokens = coalesce(prompt_tokens, 0) + coalesce(CAST(:prompt_tokens AS int), 0),
      completion_tokens = coalesce(completion_tokens, 0)
                          + coalesce(CAST(:completion_tokens AS int), 0),
      lease_expires_at = NULL,
      not_before = CASE WHEN CAST(:defer AS float8) IS NULL THEN NULL
                   ELSE now() + make_interval(secs => CAST(:defer AS float8)) END,
      max_attempts = max_attempts + CASE WHEN CAST(:defer AS float8) IS NULL THEN 0 ELSE 1 END,
      finished_at = CASE WHEN :status = 'queued' THEN NULL ELSE now() END,
      updated_at = now()
  WHERE id = :id AND ai_status = 'processing' AND attempts = :attempt
  RETURNING *
), ids AS (
  -- The stream's last text must come before the outcome's event in id (SSE) order, and
  -- data-modifying CTEs run in no set order: both ids are taken here, in order.
  SELECT nextval('generation_logs_id_seq') AS text_id,
         nextval('generation_logs_id_seq') AS event_id
  FROM job
), tail AS (
  -- The streamed text not yet written, if any (saves the attempt a transaction of its own).
  INSERT INTO generation_deltas (id, generation_id, user_id, attempt, seq, text)
  SELECT ids.text_id, job.id, job.user_id, job.attempts, CAST(:tail_seq AS int),
         CAST(:tail_text AS text)
  FROM job, ids
  WHERE CAST(:tail_text AS text) IS NOT NULL
), log AS (
  INSERT INTO generation_logs
    (id, generation_id, user_id, event, ai_status, attempt, message_id, delivery_attempt,
     model, prompt_tokens, completion_tokens, latency_ms, error_code, detail)
  OVERRIDING SYSTEM VALUE
  SELECT ids.event_id, job.id, job.user_id, :event, :status, job.attempts, :message_id,
         :delivery_attempt, :model, :prompt_tokens, :completion_tokens, :latency_ms,
         :error_code, :error_message
  FROM job, ids
)
SELECT * FROM job

-- name: renew_leases
-- Heartbeat: extend the lease of each running attempt (job id, attempt number) that still owns its job; returns those that do (one missing was cancelled, finished or taken over).
UPDATE generations g
SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS running(id, attempt)
WHERE g.id = running.id AND g.attempts = running.attempt AND g.ai_status = 'processing'
RETURNING g.id, g.attempts

-- name: fail_unfinished
-- queued|processing → failed when no attempt holds a live lease (dead letter, spent attempts), with the given event.
WITH job AS (
  UPDATE generations
  SET ai_status = 'failed', lease_expires_at = NULL, finished_at = now(), updated_at = now(),
      {{charge_dead_attempt}},
      error = jsonb_build_object('code', CAST(:error_code AS text),
                                 'message', CAST(:error_message AS text))
  WHERE id = :id AND ai_status IN ('queued', 'processing')
    AND (lease_expires_at IS NULL OR lease_expires_at < now())
  RETURNING *
), log AS (
  INSERT INTO generation_logs
    (generation_id, user_id, event, ai_status, attempt, message_id, delivery_attempt,
     error_code, detail)
  SELECT id, user_id, :event, 'failed', attempts, :message_id, :delivery_attempt,
         :error_code, :error_message
  FROM job
)
SELECT * FROM job


-- ===== Sweeper: each step locks its rows with SKIP LOCKED and moves them on in the same
-- statement, so sweepers running at once never take the same job, and running twice changes
-- nothing more. =====

-- name: sweep_expire_old
-- queued|processing → failed (`expired`) for jobs older than :max_age seconds since creation or their last replay, unless an attempt holds a live lease (it ends on its own); returns how many.
WITH old AS (
  SELECT id FROM generations g
  CROSS JOIN (SELECT now() - make_interval(secs => :max_age) AS replay_cutoff) cutoff
  WHERE g.ai_status IN ('queued', 'processing')
    AND g.created_at < replay_cutoff
    -- A running attempt renews its lease: it is expired once it stops (a crash).
    AND (g.lease_expires_at IS NULL OR g.lease_expires_at < now())
    -- A replayed job's age starts again at its replay (`genjobs replay`, days later).
    AND NOT {{replayed_since}}
  ORDER BY g.created_at LIMIT :batch
  FOR UPDATE OF g SKIP LOCKED
), failed AS (
  UPDATE generations g
  SET ai_status = 'failed', lease_expires_at = NULL, not_before = NULL,
      finished_at = now(), updated_at = now(), {{charge_dead_attempt}},
      error = jsonb_build_object('code', 'expired',
                                 'message', 'not finished within the maximum job age')
  FROM old WHERE g.id = old.id
  RETURNING g.*
), log AS (
  INSERT INTO generation_logs
    (generation_id, user_id, event, ai_status, attempt, error_code, detail)
  SELECT id, user_id, 'failed', 'failed', attempts,
         'expired', 'not finished within the maximum job age'
  FROM failed
)
SELECT count(*) FROM failed

-- name: sweep_expired_leases
-- processing with an expired lease → queued (`retry`, lease_expired), or failed (attempts_exhausted) when its attempts are spent.
WITH expired AS (
  SELECT id FROM generations
  WHERE ai_status = 'processing' AND lease_expires_at < now()
  ORDER BY lease_expires_at LIMIT :batch
  FOR UPDATE SKIP LOCKED
), moved AS (
  UPDATE generations g
  SET ai_status = CASE WHEN g.attempts >= g.max_attempts THEN 'failed' ELSE 'queued' END,
      finished_at = CASE WHEN g.attempts >= g.max_attempts THEN now() END,
      lease_expires_at = NULL, updated_at = now(), {{charge_dead_attempt}},
      error = jsonb_build_object(
        'code', CASE WHEN g.attempts >= g.max_attempts THEN 'attempts_exhausted'
                     ELSE 'lease_expired' END,
        'message', 'attempt ' || g.attempts || ' did not finish within its lease')
  FROM expired WHERE g.id = expired.id
  RETURNING g.*
), log AS (
  INSERT INTO generation_logs
    (generation_id, user_id, event, ai_status, attempt, error_code, detail)
  SELECT id, user_id, CASE WHEN ai_status = 'failed' THEN 'failed' ELSE 'retry' END,
         ai_status, attempts, error ->> 'code', error ->> 'message'
  FROM moved
)
SELECT id, task, trace_id, ai_status, published_at IS NOT NULL AS was_published FROM moved

-- name: sweep_due_for_publish
-- Queued jobs to publish: a failed publish (published_at cleared) :grace seconds ago, deferred and now due, or published :stale seconds ago and never started.
WITH due AS (
  SELECT id FROM generations
  WHERE ai_status = 'queued' AND (
    (not_before IS NOT NULL AND not_before <= now())
    OR (not_before IS NULL AND published_at IS NULL
        AND updated_at < now() - make_interval(secs => :grace))
    OR (not_before IS NULL AND published_at IS NOT NULL
        AND updated_at < now() - make_interval(secs => :stale))
  )
  ORDER BY updated_at LIMIT :batch
  FOR UPDATE SKIP LOCKED
)
UPDATE generations g SET not_before = NULL, updated_at = now()
FROM due WHERE g.id = due.id
RETURNING g.id, g.task, g.trace_id, g.ai_status, g.published_at IS NOT NULL AS was_published


-- ===== Replay (genjobs replay) =====

-- name: select_failed_jobs
-- Failed jobs matching the operator's filters (NULL or empty: any), oldest failure first.
SELECT id FROM generations
WHERE ai_status = 'failed'
  AND (CAST(:task AS text) IS NULL OR task = :task)
  AND (CAST(:error_code AS text) IS NULL OR error ->> 'code' = :error_code)
  AND (CAST(:since AS timestamptz) IS NULL OR finished_at >= :since)
  AND (CAST(:until AS timestamptz) IS NULL OR finished_at < :until)
  AND (CAST(:user_id AS uuid) IS NULL OR user_id = :user_id)
  AND (CAST(:any_job AS boolean) OR id = ANY(CAST(:job_ids AS uuid[])))
ORDER BY finished_at, id
LIMIT :limit

-- name: database_now
-- The database's clock (a replay run's selection time).
SELECT now()

-- name: replay_job
-- failed → queued with :budget more attempts and a `replayed` event, unless replayed since :since; else the job as it is.
-- Attempts are kept (they are the fencing numbers and must only grow); the budget is renewed
-- on top of them. FOR UPDATE makes concurrent replays queue here and re-check `failed`.
WITH target AS (
  SELECT g.id, g.error FROM generations g
  CROSS JOIN (SELECT CAST(:since AS timestamptz) AS replay_cutoff) cutoff
  WHERE g.id = :id AND g.ai_status = 'failed' AND NOT {{replayed_since}}
  FOR UPDATE OF g
), job AS (
  UPDATE generations g
  SET ai_status = 'queued', max_attempts = g.attempts + :budget, error = NULL,
      finished_at = NULL, lease_expires_at = NULL, published_at = NULL, not_before = NULL,
      updated_at = now()
  FROM target
  WHERE g.id = target.id AND g.ai_status = 'failed'
  RETURNING g.*, target.error AS previous_error
), log AS (
  INSERT INTO generation_logs
    (generation_id, user_id, event, ai_status, attempt, message_id, error_code, detail)
  SELECT id, user_id, 'replayed', 'queued', attempts, :message_id, previous_error ->> 'code',
         left(:source || '; previous error: ' || coalesce(previous_error ->> 'code', 'none')
              || ': ' || coalesce(previous_error ->> 'message', ''), 2000)
  FROM job
)
SELECT true AS replayed, false AS replayed_since, * FROM job
UNION ALL
SELECT false, {{replayed_since}}, g.*, g.error
FROM generations g CROSS JOIN (SELECT CAST(:since AS timestamptz) AS replay_cutoff) cutoff
WHERE g.id = :id AND NOT EXISTS (SELECT 1 FROM job)

-- name: preview_replay
-- What replay_job would find, changing nothing (a dry run).
SELECT false AS replayed, {{replayed_since}} AS replayed_since, g.*, g.error AS previous_error
FROM generations g CROSS JOIN (SELECT CAST(:since AS timestamptz) AS replay_cutoff) cutoff
WHERE g.id = :id


-- ===== Stats (genjobs stats), over the metrics views of migration 0001 =====

-- name: stats_figures
-- One pass over the facts view for every grouping the report shows; percentiles exact per group, never averaged.
SELECT
  GROUPING(day) AS by_day_off, GROUPING(task) AS by_task_off,
  GROUPING(model) AS by_model_off,
  day, task, model,
  count(*) AS jobs,
  count(*) FILTER (WHERE ai_status = 'succeeded') AS succeeded,
  count(*) FILTER (WHERE ai_status = 'failed') AS failed,
  count(*) FILTER (WHERE ai_status = 'cancelled') AS cancelled,
  count(*) FILTER (WHERE ai_status IN ('queued', 'processing')) AS unfinished,
  avg(duration_seconds) FILTER (WHERE ai_status = 'succeeded') AS avg_duration,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds)
    FILTER (WHERE ai_status = 'succeeded') AS p50_duration,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_seconds)
    FILTER (WHERE ai_status = 'succeeded') AS p95_duration,
  avg(run_seconds) FILTER (WHERE ai_status = 'succeeded') AS avg_run,
  avg(attempts) FILTER (WHERE ai_status IN ('succeeded', 'failed')) AS avg_attempts,
  sum(prompt_tokens) AS prompt_tokens,
  sum(completion_tokens) AS completion_tokens
FROM generation_job_facts
WHERE day BETWEEN :since AND :until AND (CAST(:task AS text) IS NULL OR task = :task)
GROUP BY GROUPING SETS ((), (day), (task), (model))

-- name: stats_error_codes
-- The :top most frequent error codes of failed jobs in the range.
SELECT error_code, sum(jobs) AS jobs
FROM generation_error_codes
WHERE day BETWEEN :since AND :until AND (CAST(:task AS text) IS NULL OR task = :task)
GROUP BY error_code ORDER BY jobs DESC, error_code LIMIT :top

-- name: stats_duration_histogram
-- Succeeded jobs per duration bucket (width_bucket over :bounds seconds).
SELECT width_bucket(duration_seconds, CAST(:bounds AS float8[])) AS bucket, count(*) AS jobs
FROM generation_job_facts
WHERE ai_status = 'succeeded' AND day BETWEEN :since AND :until
  AND (CAST(:task AS text) IS NULL OR task = :task)
GROUP BY bucket

-- name: stats_events_by_day
-- Attempts, retries, dead letters and replays logged per UTC day.
SELECT (date_trunc('day', l.created_at AT TIME ZONE 'UTC'))::date AS day, l.event,
       count(*) AS events
FROM generation_logs l JOIN generations g ON g.id = l.generation_id
WHERE l.created_at >= CAST(:since AS date) AT TIME ZONE 'UTC'
  AND l.created_at < (CAST(:until AS date) + 1) AT TIME ZONE 'UTC'
  AND l.event IN ('started', 'retry', 'dead_lettered', 'replayed')
  AND (CAST(:task AS text) IS NULL OR g.task = :task)
GROUP BY 1, 2


-- ===== Streaming (worker writes, api SSE reads, sweeper cleans) =====

-- name: append_delta
-- Append text the running attempt streamed and renew its lease, only while that attempt still owns the unfinished job (no row: cancelled, finished or taken over).
WITH job AS (
  UPDATE generations
  SET lease_expires_at = now() + make_interval(secs => :lease_seconds), updated_at = now()
  WHERE id = :id AND attempts = :attempt AND ai_status = 'processing'
  RETURNING id, user_id, attempts
)
INSERT INTO generation_deltas (generation_id, user_id, attempt, seq, text)
SELECT id, user_id, attempts, :seq, :text FROM job
RETURNING id

-- name: charge_usage
-- Add the tokens of a model call whose outcome was not written (cancelled, taken over, cut mid-stream) to the job's totals, whatever its status: every call is billed to its user; once the job has ended, attempt :attempt's lease is settled (its reservation stops counting).
UPDATE generations
SET prompt_tokens = coalesce(prompt_tokens, 0) + :prompt_tokens,
    completion_tokens = coalesce(completion_tokens, 0) + :completion_tokens,
    model = coalesce(model, CAST(:model AS text)),
    lease_expires_at = CASE WHEN ai_status IN ('queued', 'processing') OR attempts <> :attempt
                            THEN lease_expires_at END,
    updated_at = now()
WHERE id = :id

-- name: attempt_within_budget
-- Whether user :user_id's committed tokens (tokens_committed: the running job's own bound included) fit in :budget; checked before a retry attempt calls the model.
SELECT {{tokens_committed}} <= :budget

-- name: job_events_since
-- A job's events and streamed text with an id above `after`, in id order (deltas share the log's id sequence, so one SSE id orders both).
SELECT id, event, ai_status, attempt, CAST(NULL AS int) AS seq, CAST(NULL AS text) AS text,
       prompt_tokens, completion_tokens, model, error_code
FROM generation_logs
WHERE generation_id = :id AND id > :after
UNION ALL
SELECT id, NULL, NULL, attempt, seq, text, NULL, NULL, NULL, NULL
FROM generation_deltas
WHERE generation_id = :id AND id > :after
ORDER BY id
LIMIT :limit

-- name: sweep_stream_text
-- Delete streamed text no client can resume any more: that of jobs which ended over `retention_seconds` ago.
DELETE FROM generation_deltas d
USING generations g
WHERE d.generation_id = g.id
  AND g.finished_at < now() - make_interval(secs => :retention_seconds)

-- name: last_event_id
-- The SSE id of a job's newest event (its terminal event, once it has ended).
SELECT coalesce(max(id), 0) FROM generation_logs WHERE generation_id = :id
