# Alerts for what an operator acts on: failed jobs waiting for replay, jobs not being
# delivered, and functions answering 5xx.

resource "google_monitoring_alert_policy" "dead_letter_backlog" {
  for_each = local.replay_subscriptions

  display_name          = "genjobs ${var.environment}: dead-lettered jobs in ${each.key}"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "Undelivered messages on ${each.key} > 0"

    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${each.key}\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Jobs exhausted their delivery attempts and were marked failed by the dead_letter function. Read the cause in generation_logs, fix it, then replay with `genjobs replay` (it pulls from ${each.key})."
  }
}

resource "google_monitoring_alert_policy" "oldest_unacked_job" {
  display_name          = "genjobs ${var.environment}: jobs waiting in ${local.worker_subscription}"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.notification_channels

  conditions {
    display_name = "Oldest unacked message on ${local.worker_subscription} > ${var.oldest_unacked_alert_seconds}s"

    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${local.worker_subscription}\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.oldest_unacked_alert_seconds
      duration        = "300s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Job messages are not being acknowledged: the worker is failing (see its 5xx alert and logs), scaled to its limit, or unable to reach the database or the model."
  }
}

resource "google_monitoring_alert_policy" "function_errors" {
  display_name          = "genjobs ${var.environment}: function 5xx ratio"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "Share of 5xx responses per function > ${var.error_ratio_alert_threshold}"

    condition_threshold {
      filter             = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = starts_with(\"genjobs-\") AND metric.type = \"run.googleapis.com/request_count\" AND metric.labels.response_code_class = \"5xx\""
      denominator_filter = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = starts_with(\"genjobs-\") AND metric.type = \"run.googleapis.com/request_count\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.error_ratio_alert_threshold
      duration           = "300s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.labels.service_name"]
      }

      denominator_aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.labels.service_name"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A function answers 5xx to more than the threshold of its requests. The worker answers 5xx on purpose for transient failures (Pub/Sub retries them), so check the model provider's and the database's status first, then the function's logs."
  }
}
