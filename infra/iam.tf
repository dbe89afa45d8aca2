# One identity per function plus the push, scheduler and build identities; every grant is on
# the single resource it is needed for.

resource "google_service_account" "function" {
  for_each = local.functions

  account_id   = each.value.name
  display_name = "genjobs ${each.key} function"
  description  = "Runtime identity of the ${each.value.name} function."
}

resource "google_service_account" "push" {
  account_id   = "genjobs-pubsub-push"
  display_name = "genjobs Pub/Sub push"
  description  = "Signs Pub/Sub push requests to the worker and dead_letter functions (OIDC)."
}

resource "google_service_account" "scheduler" {
  account_id   = "genjobs-scheduler"
  display_name = "genjobs Cloud Scheduler"
  description  = "Signs Cloud Scheduler calls to the sweeper function (OIDC)."
}

resource "google_service_account" "build" {
  account_id   = "genjobs-build"
  display_name = "genjobs function builds"
  description  = "Builds the functions' containers from the source archive."
}

# Publishing jobs: the api (after the insert) and the sweeper (jobs left unpublished).
resource "google_pubsub_topic_iam_member" "jobs_publisher" {
  for_each = toset(["api", "sweeper"])

  topic  = google_pubsub_topic.this[local.jobs_topic].name
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.function[each.key].email}"
}

# Secret Manager: accessor on exactly the secrets mounted into each function.
resource "google_secret_manager_secret_iam_member" "access" {
  for_each = local.secret_access

  secret_id = google_secret_manager_secret.this[each.value.secret].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

# The Pub/Sub service agent is created lazily by Google; on a new project a grant to it fails
# with "service account does not exist" unless it is provisioned first.
resource "google_project_service_identity" "pubsub" {
  provider = google-beta

  project = var.project_id
  service = "pubsub.googleapis.com"

  depends_on = [google_project_service.this]
}

# Dead-lettering: the Pub/Sub service agent forwards undeliverable messages, so it publishes to
# each dead-letter topic and acknowledges on each subscription that has a dead-letter policy.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.dead_letter_topics

  topic  = google_pubsub_topic.this[each.key].name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.dead_lettering_subscriptions

  subscription = google_pubsub_subscription.this[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# The Pub/Sub service agent mints the push identity's OIDC tokens (projects created before
# April 2021 lack this grant; it is given here on this one account, not on the project).
resource "google_service_account_iam_member" "pubsub_token_creator" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# Invokers. The push identity may call only the topology's push endpoints (worker and
# dead_letter), the scheduler identity only the sweeper; only the api is public.
resource "google_cloud_run_service_iam_member" "push_invoker" {
  for_each = local.push_targets

  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.this[each.key].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push.email}"
}

resource "google_cloud_run_service_iam_member" "scheduler_invoker" {
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.this["sweeper"].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

resource "google_cloud_run_service_iam_member" "api_public" {
  #checkov:skip=CKV_GCP_102:The api is the browser-facing endpoint (Supabase access tokens are checked in the code); worker, dead_letter and sweeper have no public binding.
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.this["api"].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# Function builds: the documented role for a user-specified Cloud Run functions build account,
# plus read access to the source bucket only.
resource "google_project_iam_member" "build" {
  for_each = toset(["roles/run.builder"])

  project = var.project_id
  role    = each.key
  member  = "serviceAccount:${google_service_account.build.email}"
}

resource "google_storage_bucket_iam_member" "build_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.build.email}"
}

# IAM is eventually consistent: a grant can take a minute or more to be honoured. The first
# build (source bucket, builder role) and the first revision (secrets) wait for the grants
# they need, so a first `terraform apply` on a new project succeeds in one go.
resource "time_sleep" "iam_propagation" {
  create_duration = "90s"

  triggers = {
    build         = join(",", [for m in google_project_iam_member.build : m.id])
    build_source  = google_storage_bucket_iam_member.build_source.id
    secret_access = join(",", [for m in google_secret_manager_secret_iam_member.access : m.id])
  }
}
