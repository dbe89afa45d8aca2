output "api_url" {
  description = "HTTPS URL of the public api (the frontend's base URL; Cloud Build smoke-tests its /healthz)."
  value       = google_cloudfunctions2_function.this["api"].service_config[0].uri
}

output "cloud_run_services" {
  description = "The Cloud Run service of each function, space-separated (Cloud Build turns on their startup CPU boost, which google_cloudfunctions2_function cannot set)."
  value       = join(" ", sort([for function in google_cloudfunctions2_function.this : function.name]))
}

output "function_urls" {
  description = "Deterministic Cloud Run URL of each function, as used for push endpoints, OIDC audiences and PUSH_AUDIENCE."
  value       = local.function_urls
}

output "function_service_accounts" {
  description = "Runtime service account email of each function."
  value       = { for key, account in google_service_account.function : key => account.email }
}

output "push_service_account" {
  description = "Service account whose OIDC tokens sign Pub/Sub push requests (PUSH_SERVICE_ACCOUNTS of worker and dead_letter)."
  value       = google_service_account.push.email
}

output "jobs_topic" {
  description = "Pub/Sub topic the api and the sweeper publish job ids to."
  value       = google_pubsub_topic.this[local.jobs_topic].name
}

output "replay_subscriptions" {
  description = "Pull subscriptions keeping dead-lettered messages for `genjobs replay`."
  value       = sort(tolist(local.replay_subscriptions))
}

output "secret_ids" {
  description = "Secret Manager secrets whose values are set with `gcloud secrets versions add` (README.md)."
  value       = [for id in local.secret_ids : google_secret_manager_secret.this[id].secret_id]
}

output "source_bucket" {
  description = "Bucket holding the functions' source archives."
  value       = google_storage_bucket.source.name
}
