"""The local demo page: a browser follows a generation as it streams (never deployed)."""
