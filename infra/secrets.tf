# The secrets exist in Terraform; their values never do (no secret in state or plan). Add them
# with `gcloud secrets versions add` (README.md) before the functions are first deployed.
resource "google_secret_manager_secret" "this" {
  for_each = toset(local.secret_ids)

  secret_id = each.key

  replication {
    auto {}
  }
}
