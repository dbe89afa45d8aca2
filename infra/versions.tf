terraform {
  # Preconditions, optional() object attributes and endswith() need 1.3+; 1.5 for import blocks.
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4, < 3.0"
    }
  }

  # Partial configuration: `terraform init -backend-config=envs/<env>.backend.hcl
  # -backend-config=bucket=<state bucket>` (see README.md).
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = {
    app         = "genjobs"
    environment = var.environment
    managed-by  = "terraform"
  }
}

data "google_project" "this" {
  project_id = var.project_id
}
