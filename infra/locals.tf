locals {
  # The Pub/Sub topology shared with the local emulator: topics, subscriptions, ack deadlines,
  # retry and dead-letter policies are defined there only.
  topology = yamldecode(file("${path.module}/pubsub.yaml"))

  project_number = data.google_project.this.number
  # From the resource that makes Google create the agent, so no grant can come before it.
  pubsub_agent = "serviceAccount:${google_project_service_identity.pubsub.email}"

  # Push endpoint name (as written in the topology) -> the push subscription's ack deadline.
  # Two subscriptions pushing to one function fail here on purpose (duplicate key).
  push_ack_deadline = {
    for name, sub in local.topology.subscriptions : sub.push_endpoint => sub.ack_deadline_seconds
    if try(sub.push_endpoint, null) != null
  }
  push_targets        = toset(keys(local.push_ack_deadline))
  worker_subscription = one([for name, sub in local.topology.subscriptions : name if try(sub.push_endpoint, null) == "worker"])
  jobs_topic          = local.topology.subscriptions[local.worker_subscription].topic
  dead_letter_topics  = toset(compact([for name, sub in local.topology.subscriptions : try(sub.dead_letter_policy.dead_letter_topic, "")]))
  dead_lettering_subscriptions = toset([
    for name, sub in local.topology.subscriptions : name if try(sub.dead_letter_policy, null) != null
  ])
  replay_subscriptions = toset([
    for name, sub in local.topology.subscriptions : name
    if try(sub.push_endpoint, null) == null && contains(local.dead_letter_topics, sub.topic)
  ])

  # The worker's push request lasts at most its subscription's ack deadline: the code derives
  # the job lease (ack - margin) and the longest task timeout (lease - margin) from it.
  ack_deadline_seconds = local.push_ack_deadline["worker"]
  # The worker defers a rate-limited job instead of nacking when Retry-After exceeds this.
  retry_min_backoff_seconds = tonumber(trimsuffix(local.topology.subscriptions[local.worker_subscription].retry_policy.minimum_backoff, "s"))

  # Keyed by the names the topology and the code use; `name` is the function (and Cloud Run
  # service) name, `entry_point` the function in functions/main.py.
  functions = {
    api = {
      name        = "genjobs-api"
      entry_point = "api"
      description = "Public HTTP api: submit, follow and cancel generations."
      public      = true
      timeout     = 60
    }
    worker = {
      name        = "genjobs-worker"
      entry_point = "worker"
      description = "Pub/Sub push endpoint of the jobs subscription: one model call per delivery."
      public      = false
      timeout     = local.push_ack_deadline["worker"]
    }
    dead_letter = {
      name        = "genjobs-dead-letter"
      entry_point = "dead_letter"
      description = "Pub/Sub push endpoint of the dead-letter subscription: marks the job failed."
      public      = false
      timeout     = local.push_ack_deadline["dead_letter"]
    }
    sweeper = {
      name        = "genjobs-sweeper"
      entry_point = "sweeper"
      description = "Called by Cloud Scheduler: republishes unpublished jobs, reclaims expired leases."
      public      = false
      timeout     = 60
    }
  }

  # Cloud Run's deterministic URL (https://SERVICE-PROJECT_NUMBER.REGION.run.app) is known before
  # the service exists, which breaks the cycle "a function's env holds its own URL" (PUSH_AUDIENCE).
  # A postcondition on the functions checks that each service got the expected name.
  function_urls = {
    for key, fn in local.functions : key => "https://${fn.name}-${local.project_number}.${var.region}.run.app"
  }

  # Every connection pool holds up to `concurrency` connections (DB_POOL_SIZE = concurrency,
  # max_overflow = 0), so this is the most connections the functions can open together.
  db_connections = sum([for name, s in var.scaling : s.max_instances * s.concurrency])

  # Behind Cloud Run's invoker check (no public binding, see iam.tf) a function gets tokens
  # whose signature Cloud Run removed after verifying them; this tells it to accept those.
  private_function_env = {
    for key, fn in local.functions : key => { PLATFORM_INVOKER_CHECK = !fn.public }
  }

  # Environment of every function; names are checked against genjobs.settings by the tests.
  # Values that are null are left out, so the code's defaults apply.
  common_env = {
    GENJOBS_ENV          = "cloud"
    GOOGLE_CLOUD_PROJECT = var.project_id
    LOG_LEVEL            = var.log_level
    ACK_DEADLINE_SECONDS = local.ack_deadline_seconds
    LEASE_MARGIN_SECONDS = var.lease_margin_seconds
  }
  function_env = {
    api = {
      THREADS               = var.scaling["api"].concurrency
      DB_POOL_SIZE          = var.scaling["api"].concurrency
      JOBS_TOPIC            = local.jobs_topic
      SUPABASE_URL          = var.supabase_url
      ALLOWED_ORIGINS       = join(",", var.allowed_origins)
      ALLOW_ANONYMOUS_USERS = var.allow_anonymous_users
      SUBMITS_PER_MINUTE    = var.api_limits.submits_per_minute
      MAX_ACTIVE_JOBS       = var.api_limits.max_active_jobs
      DAILY_TOKEN_BUDGET    = var.api_limits.daily_token_budget
    }
    worker = {
      THREADS                   = var.scaling["worker"].concurrency
      DB_POOL_SIZE              = var.scaling["worker"].concurrency
      PUSH_AUDIENCE             = local.function_urls["worker"]
      PUSH_SERVICE_ACCOUNTS     = google_service_account.push.email
      OPENAI_BASE_URL           = var.openai_base_url
      RETRY_MIN_BACKOFF_SECONDS = local.retry_min_backoff_seconds
    }
    dead_letter = {
      THREADS               = var.scaling["dead_letter"].concurrency
      DB_POOL_SIZE          = var.scaling["dead_letter"].concurrency
      PUSH_AUDIENCE         = local.function_urls["dead_letter"]
      PUSH_SERVICE_ACCOUNTS = google_service_account.push.email
    }
    sweeper = {
      THREADS               = var.scaling["sweeper"].concurrency
      DB_POOL_SIZE          = var.scaling["sweeper"].concurrency
      JOBS_TOPIC            = local.jobs_topic
      PUSH_AUDIENCE         = local.function_urls["sweeper"]
      PUSH_SERVICE_ACCOUNTS = google_service_account.scheduler.email
    }
  }

  # Secret Manager secrets (values are added outside Terraform, see README.md).
  secret_ids = ["openai-api-key", "database-url", "supabase-jwt-secret"]

  # Env var -> secret, per function: each function gets only what it reads.
  function_secrets = {
    api         = { DATABASE_URL = "database-url", SUPABASE_JWT_SECRET = "supabase-jwt-secret" }
    worker      = { DATABASE_URL = "database-url", OPENAI_API_KEY = "openai-api-key" }
    dead_letter = { DATABASE_URL = "database-url" }
    sweeper     = { DATABASE_URL = "database-url" }
  }

  # The JWT secret is mounted only on HS256 projects: a mounted secret without a version fails
  # the deploy.
  mounted_secrets = {
    for fn, secrets in local.function_secrets : fn => {
      for env_name, secret_id in secrets : env_name => secret_id
      if env_name != "SUPABASE_JWT_SECRET" || var.supabase_jwt_secret_enabled
    }
  }
  secret_access = merge([
    for fn, secrets in local.mounted_secrets : {
      for env_name, secret_id in secrets : "${fn}/${secret_id}" => { function = fn, secret = secret_id }
    }
  ]...)

  # The deployed source: functions/ (main.py and the genjobs package) plus the root
  # requirements.txt. A test fails when functions/ holds a file these patterns leave out.
  functions_dir   = "${path.module}/../functions"
  source_patterns = ["*.py", "**/*.py", "genjobs/sql/*.sql"]
  source_files    = sort(distinct(flatten([for pattern in local.source_patterns : tolist(fileset(local.functions_dir, pattern))])))
  source_hash = sha256(join("\n", concat(
    [for file in local.source_files : "${file}:${filesha256("${local.functions_dir}/${file}")}"],
    ["requirements.txt:${filesha256("${path.module}/../requirements.txt")}"],
  )))
}
