# The sweeper runs every minute: it publishes jobs whose publish failed after the insert and
# puts back jobs whose lease expired. A missed run is retried by the next one.
resource "google_cloud_scheduler_job" "sweeper" {
  name             = "genjobs-sweeper"
  description      = "Calls the sweeper function every minute (OIDC)."
  region           = var.region
  schedule         = "* * * * *"
  time_zone        = "Etc/UTC"
  attempt_deadline = "${local.functions["sweeper"].timeout}s"

  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = local.function_urls["sweeper"]

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = local.function_urls["sweeper"]
    }
  }

  depends_on = [google_cloud_run_service_iam_member.scheduler_invoker]
}
