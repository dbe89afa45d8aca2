# Cloud Run functions (2nd gen): api (public), worker, dead_letter and sweeper (internal ingress:
# only Pub/Sub and Cloud Scheduler of this project reach them, and only with run.invoker).

resource "google_cloudfunctions2_function" "this" {
  #checkov:skip=CKV_GCP_124:ALLOW_ALL is the browser-facing api only; worker, dead_letter and sweeper are ALLOW_INTERNAL_ONLY (asserted by tests/infra/test_terraform_wiring.py).
  for_each = local.functions

  name        = each.value.name
  location    = var.region
  description = each.value.description

  build_config {
    runtime         = var.python_runtime
    entry_point     = each.value.entry_point
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = var.scaling[each.key].memory
    available_cpu                    = var.scaling[each.key].cpu
    timeout_seconds                  = each.value.timeout
    min_instance_count               = var.scaling[each.key].min_instances
    max_instance_count               = var.scaling[each.key].max_instances
    max_instance_request_concurrency = var.scaling[each.key].concurrency
    ingress_settings                 = each.value.public ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.function[each.key].email
    environment_variables            = { for name, value in merge(local.common_env, local.private_function_env[each.key], local.function_env[each.key]) : name => tostring(value) if value != null }

    dynamic "secret_environment_variables" {
      for_each = local.mounted_secrets[each.key]
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = google_secret_manager_secret.this[secret_environment_variables.value].secret_id
        version    = "latest"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.db_connections <= var.db_connection_budget
      error_message = "The functions may open ${local.db_connections} database connections (sum of max_instances x concurrency) but db_connection_budget is ${var.db_connection_budget}: lower scaling or raise the budget."
    }
    precondition {
      condition     = length("${each.value.name}-${local.project_number}") <= 63
      error_message = "${each.value.name}-${local.project_number} is longer than 63 characters: Cloud Run gives no deterministic URL, so PUSH_AUDIENCE and the push endpoints would be wrong."
    }
    postcondition {
      condition     = can(regex("(^|/)${each.value.name}$", self.service_config[0].service))
      error_message = "The Cloud Run service is not named ${each.value.name}: its deterministic URL (PUSH_AUDIENCE, push endpoint, scheduler target) would not reach it."
    }
  }

  # A new project: the build and runtime identities must hold their grants (and IAM must have
  # propagated them) before the first build reads the source or a revision mounts a secret.
  depends_on = [time_sleep.iam_propagation]
}
