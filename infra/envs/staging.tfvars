# Staging. project_id and region come from Cloud Build (PROJECT_ID, _REGION) or -var.
environment = "staging"

# Replace both placeholders with your own values: planning fails on them on purpose.
supabase_url    = "https://<staging-project-ref>.supabase.co"
allowed_origins = ["https://<staging-app-origin>"]

# true only if the Supabase project signs tokens with the legacy HS256 secret.
supabase_jwt_secret_enabled = false

log_level = "DEBUG"

# Sum of max_instances x concurrency = 4x8 + 2x4 + 1x4 + 1x1 = 45 connections.
scaling = {
  api         = { max_instances = 4, concurrency = 8 }
  worker      = { max_instances = 2, concurrency = 4 }
  dead_letter = { max_instances = 1, concurrency = 4 }
  sweeper     = { max_instances = 1, concurrency = 1, cpu = "0.5", memory = "512Mi" }
}

# Client connections the staging database's pooler accepts from these functions.
db_connection_budget = 60
