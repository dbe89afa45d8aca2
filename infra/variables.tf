variable "project_id" {
  description = "Google Cloud project id of this environment (one project per environment). Cloud Build passes its own PROJECT_ID."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id (6-30 lowercase letters, digits and hyphens)."
  }
}

variable "region" {
  description = "Region of the functions, the Cloud Scheduler job and the source bucket, e.g. europe-west1. Cloud Build passes _REGION."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1 or us-central1."
  }
}

variable "environment" {
  description = "Environment name, used in labels and alert titles: staging or prod."
  type        = string

  validation {
    condition     = contains(["staging", "prod"], var.environment)
    error_message = "environment must be staging or prod."
  }
}

variable "supabase_url" {
  description = "The Supabase project URL (https://<project-ref>.supabase.co or its custom domain): the api checks access tokens against it."
  type        = string

  validation {
    condition     = can(regex("^https://[A-Za-z0-9.-]+(:[0-9]+)?$", var.supabase_url))
    error_message = "supabase_url must be your Supabase project's https URL without a path, e.g. https://abcdefghijklmnop.supabase.co (set it in envs/<env>.tfvars)."
  }
}

variable "supabase_jwt_secret_enabled" {
  description = "True for Supabase projects that still sign access tokens with the legacy HS256 JWT secret: mounts the supabase-jwt-secret secret into the api. Leave false for asymmetric signing keys (JWKS)."
  type        = bool
  default     = false
}

variable "allowed_origins" {
  description = "Browser origins allowed by the api's CORS policy, e.g. [\"https://app.example.com\"]."
  type        = list(string)

  validation {
    condition     = length(var.allowed_origins) > 0 && alltrue([for origin in var.allowed_origins : can(regex("^https?://[A-Za-z0-9.-]+(:[0-9]+)?$", origin))])
    error_message = "allowed_origins must list at least one origin such as https://app.example.com (scheme and host, no path; set them in envs/<env>.tfvars)."
  }
}

variable "allow_anonymous_users" {
  description = "Whether Supabase anonymous sign-ins may submit generations."
  type        = bool
  default     = false
}

variable "api_limits" {
  description = "Per-user api limits; an unset attribute keeps the code's default (60 submits per minute, 20 unfinished jobs, 200000 tokens per day)."
  type = object({
    submits_per_minute = optional(number)
    max_active_jobs    = optional(number)
    daily_token_budget = optional(number)
  })
  default = {}
}

variable "openai_base_url" {
  description = "Base URL of an OpenAI-compatible endpoint; null uses OpenAI itself."
  type        = string
  default     = null
}

variable "log_level" {
  description = "Log level of every function."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "lease_margin_seconds" {
  description = "LEASE_MARGIN_SECONDS: a job's lease is the worker subscription's ack deadline minus this, and a task's timeout must end this much before the lease."
  type        = number
  default     = 30

  validation {
    condition     = var.lease_margin_seconds >= 5
    error_message = "lease_margin_seconds must be at least 5."
  }
}

variable "scaling" {
  description = "Per function (keys api, worker, dead_letter, sweeper): max and min instances, concurrent requests per instance (also THREADS and DB_POOL_SIZE), memory and vCPU. The worker's max_instances x concurrency is also the most generations in flight: keep it inside the OpenAI rate limit."
  type = map(object({
    max_instances = number
    concurrency   = number
    min_instances = optional(number, 0)
    memory        = optional(string, "512Mi")
    cpu           = optional(string, "1")
  }))

  validation {
    condition     = toset(keys(var.scaling)) == toset(["api", "worker", "dead_letter", "sweeper"])
    error_message = "scaling must have exactly the keys api, worker, dead_letter and sweeper."
  }

  validation {
    condition     = alltrue([for name, s in var.scaling : s.max_instances >= 1 && s.min_instances >= 0 && s.min_instances <= s.max_instances && s.concurrency >= 1 && s.concurrency <= 1000])
    error_message = "Each function needs 1 <= max_instances, 0 <= min_instances <= max_instances and 1 <= concurrency <= 1000."
  }

  validation {
    condition     = alltrue([for name, s in var.scaling : s.concurrency == 1 || tonumber(s.cpu) >= 1])
    error_message = "A function serving more than one request at a time needs at least 1 vCPU (cpu = \"1\")."
  }
}

variable "db_connection_budget" {
  description = "Client connections the database (Supabase's pooler) may receive from all functions together. Each instance's pool holds up to `concurrency` connections, so the sum of max_instances x concurrency must fit (checked at plan time)."
  type        = number

  validation {
    condition     = var.db_connection_budget >= 1
    error_message = "db_connection_budget must be at least 1."
  }
}

variable "python_runtime" {
  description = "Cloud Run functions runtime: the Python the code is tested with (pyproject.toml requires 3.11+)."
  type        = string
  default     = "python311"

  validation {
    condition     = can(regex("^python3[0-9]+$", var.python_runtime))
    error_message = "python_runtime must be a Python runtime id such as python311 or python312."
  }
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channel ids (projects/<p>/notificationChannels/<id>) for the alert policies; empty keeps the alerts in the console only."
  type        = list(string)
  default     = []
}

variable "oldest_unacked_alert_seconds" {
  description = "Alert when the oldest undelivered job message on the worker subscription is older than this. Retries with backoff make minutes normal; tens of minutes mean jobs are stuck."
  type        = number
  default     = 1800

  validation {
    condition     = var.oldest_unacked_alert_seconds >= 60
    error_message = "oldest_unacked_alert_seconds must be at least 60."
  }
}

variable "error_ratio_alert_threshold" {
  description = "Alert when a function's share of 5xx responses over 5 minutes exceeds this (0-1). The worker answers 5xx on purpose for transient failures, so a small share is expected during provider outages."
  type        = number
  default     = 0.05

  validation {
    condition     = var.error_ratio_alert_threshold > 0 && var.error_ratio_alert_threshold < 1
    error_message = "error_ratio_alert_threshold must be between 0 and 1."
  }
}
