# Production. project_id and region come from Cloud Build (PROJECT_ID, _REGION) or -var.
environment = "prod"

# Replace both placeholders with your own values: planning fails on them on purpose.
supabase_url    = "https://<prod-project-ref>.supabase.co"
allowed_origins = ["https://<prod-app-origin>"]

# true only if the Supabase project signs tokens with the legacy HS256 secret.
supabase_jwt_secret_enabled = false

log_level = "INFO"

# Sum of max_instances x concurrency = 10x8 + 8x5 + 2x4 + 1x1 = 129 connections; the worker's
# 8x5 = 40 generations in flight must also fit the OpenAI rate limit.
scaling = {
  api         = { max_instances = 10, concurrency = 8, min_instances = 1 }
  worker      = { max_instances = 8, concurrency = 5, memory = "1Gi" }
  dead_letter = { max_instances = 2, concurrency = 4 }
  sweeper     = { max_instances = 1, concurrency = 1, cpu = "0.5", memory = "512Mi" }
}

# Client connections the production database's pooler accepts from these functions.
db_connection_budget = 150

# Notification channels for the alert policies, e.g.
# ["projects/<project-id>/notificationChannels/<channel-id>"].
notification_channels = []
