# The functions' source: functions/ plus requirements.txt, zipped by Terraform and uploaded
# under a name derived from the files' contents, so any change redeploys and nothing else does.

resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Holds only build inputs written by Terraform; Cloud Audit Logs record access, a second access-log bucket adds nothing.
  name                        = "${var.project_id}-genjobs-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }
}

# archive_file takes either source_dir or source blocks, not both; requirements.txt lives at the
# repository root, so every file is a source block (text files only: file() reads UTF-8).
data "archive_file" "source" {
  type        = "zip"
  output_path = "${path.module}/.terraform/build/functions-${local.source_hash}.zip"

  dynamic "source" {
    for_each = local.source_files
    content {
      filename = source.value
      content  = file("${local.functions_dir}/${source.value}")
    }
  }

  source {
    filename = "requirements.txt"
    content  = file("${path.module}/../requirements.txt")
  }
}

resource "google_storage_bucket_object" "source" {
  name   = "functions-${local.source_hash}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.source.output_path
}
