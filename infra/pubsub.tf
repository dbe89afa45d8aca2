# Topics and subscriptions come from pubsub.yaml (the emulator reads the same file), keyed by name.

resource "google_pubsub_topic" "this" {
  #checkov:skip=CKV_GCP_83:Messages carry only a job id (the data stays in Postgres); Google-managed encryption at rest suffices, a CMEK key would protect nothing more.
  for_each = local.topology.topics

  name                       = each.key
  message_retention_duration = try(each.value.message_retention, null)
}

resource "google_pubsub_subscription" "this" {
  for_each = local.topology.subscriptions

  name                       = each.key
  topic                      = google_pubsub_topic.this[each.value.topic].id
  ack_deadline_seconds       = each.value.ack_deadline_seconds
  message_retention_duration = try(each.value.message_retention, null)

  # Never delete an idle subscription (the default is after 31 days without activity): a quiet
  # environment must not lose its worker or replay subscription.
  expiration_policy {
    ttl = ""
  }

  dynamic "retry_policy" {
    for_each = try([each.value.retry_policy], [])
    content {
      minimum_backoff = retry_policy.value.minimum_backoff
      maximum_backoff = retry_policy.value.maximum_backoff
    }
  }

  dynamic "dead_letter_policy" {
    for_each = try([each.value.dead_letter_policy], [])
    content {
      dead_letter_topic     = google_pubsub_topic.this[dead_letter_policy.value.dead_letter_topic].id
      max_delivery_attempts = dead_letter_policy.value.max_delivery_attempts
    }
  }

  # Push subscriptions deliver to the function named in the topology, signed with an OIDC token
  # of the push identity; the function checks audience and email (PUSH_AUDIENCE,
  # PUSH_SERVICE_ACCOUNTS), Cloud Run checks run.invoker.
  dynamic "push_config" {
    for_each = try([each.value.push_endpoint], [])
    content {
      push_endpoint = local.function_urls[push_config.value]

      oidc_token {
        service_account_email = google_service_account.push.email
        audience              = local.function_urls[push_config.value]
      }
    }
  }

  depends_on = [
    google_cloud_run_service_iam_member.push_invoker,
    google_service_account_iam_member.pubsub_token_creator,
  ]
}
