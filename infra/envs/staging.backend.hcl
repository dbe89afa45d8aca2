# Remote state of staging. The bucket is given with -backend-config=bucket=<project-id>-tfstate
# (Cloud Build: _STATE_BUCKET); see README.md.
prefix = "genjobs/staging"
