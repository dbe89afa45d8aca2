"""The genjobs console script."""

from __future__ import annotations

import subprocess
import sys
import uuid

from devstack.supervisor import ROOT
from genjobs.auth import UserTokenVerifier
from genjobs.settings import LOCAL_JWT_SECRET, LOCAL_SUPABASE_URL


def test_token_prints_only_a_valid_token_for_the_given_user() -> None:
    user = uuid.uuid4()
    result = subprocess.run(
        [sys.executable, "-m", "genjobs.ops.cli", "token", "--sub", str(user)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT / 'functions'}:{ROOT}"},
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    verifier = UserTokenVerifier(supabase_url=LOCAL_SUPABASE_URL, jwt_secret=LOCAL_JWT_SECRET)
    assert verifier.verify(f"Bearer {lines[0]}").id == user


def test_bad_arguments_exit_with_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "genjobs.ops.cli", "token", "--sub", "not-a-uuid"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT / 'functions'}:{ROOT}"},
    )
    assert result.returncode == 2 and "usage:" in result.stderr
