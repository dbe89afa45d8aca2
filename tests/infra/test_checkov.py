"""checkov over infra/: no failed check, and every skip justified on its own line."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TIMEOUT_SECONDS = 120
# `#checkov:skip=CKV_GCP_62:why this check does not apply here` (a real sentence, not a tag).
SKIP = re.compile(r"#\s*checkov:skip=(?P<check>CKV2?_[A-Z0-9]+_\d+):(?P<reason>.*)$")
MIN_REASON_LENGTH = 30


def checkov_executable() -> str | None:
    """CHECKOV (as Cloud Build sets it), else .venv-checkov (make test), else PATH."""
    given = os.environ.get("CHECKOV")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"CHECKOV={given} does not exist")
        return given
    local = ROOT / ".venv-checkov" / "bin" / "checkov"
    if local.is_file():
        return str(local)
    return shutil.which("checkov")


@functools.cache
def run_checkov(executable: str) -> dict[str, Any]:
    """checkov's JSON report for infra/, offline (no platform download, no update check)."""
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    command = [
        executable,
        "--directory",
        str(INFRA),
        "--framework",
        "terraform",
        "--compact",
        "--skip-download",
        "--output",
        "json",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, env=env, check=False
    )
    if done.returncode not in (0, 1):  # 1 means "some check failed", reported below
        pytest.fail(f"checkov exited {done.returncode}:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    if isinstance(report, list):  # one entry per framework when several ran
        (report,) = [r for r in report if r.get("check_type") == "terraform"]
    assert isinstance(report, dict)
    return report


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """The checkov report, or a loud skip (a failure in CI) when checkov is not installed."""
    executable = checkov_executable()
    if executable is None:
        message = (
            "checkov is not installed: `make test` installs it in .venv-checkov "
            "(it cannot share .venv: it pins packaging<24)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return run_checkov(executable)


def results(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """passed_checks, failed_checks or skipped_checks."""
    found: list[dict[str, Any]] = report.get("results", {}).get(kind, [])
    return found


def test_checkov_has_no_failed_check(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Zero failed checks; the counts are printed into the test output."""
    summary = report["summary"]
    with capsys.disabled():
        print(
            f"\ncheckov {summary.get('checkov_version', '?')} over infra/: "
            f"passed={summary['passed']} failed={summary['failed']} "
            f"skipped={summary['skipped']} resources={summary['resource_count']}"
        )
    failures = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]}): "
        f"{c['check_name']}"
        for c in results(report, "failed_checks")
    ]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] > 0 and summary["passed"] > 0, "checkov scanned nothing"
    assert summary["failed"] == 0, "checkov failed:\n" + "\n".join(failures)


def skip_comments() -> set[tuple[str, str]]:
    """(file as checkov names it, check id) of every skip comment in infra/."""
    found: set[tuple[str, str]] = set()
    for path in sorted(INFRA.rglob("*.tf")):
        if ".terraform" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if "checkov:skip" not in line:
                continue
            match = SKIP.search(line)
            assert match, f"{path.name}:{number}: write #checkov:skip=CKV_...:reason"
            reason = match["reason"].strip()
            assert len(reason) >= MIN_REASON_LENGTH, f"{path.name}:{number}: explain the skip"
            found.add((f"/{path.relative_to(INFRA).as_posix()}", match["check"]))
    return found


def test_every_skip_comment_gives_its_reason() -> None:
    """Each `#checkov:skip=` names one check and says why on the same line."""
    assert skip_comments(), "expected the justified skips of infra/ (public api, CMEK, ...)"


def test_checkov_skips_are_exactly_the_commented_ones(report: dict[str, Any]) -> None:
    """checkov skipped only what a comment skips, and every comment skips a check that applies."""
    skipped = results(report, "skipped_checks")
    for check in skipped:
        comment = check["check_result"].get("suppress_comment", "")
        assert len(comment.strip()) >= MIN_REASON_LENGTH, f"{check['check_id']}: {comment!r}"
    reported = {(c["file_path"], c["check_id"]) for c in skipped}
    assert reported == skip_comments()


def test_no_check_is_skipped_globally() -> None:
    """No checkov config file turns checks off for the whole directory."""
    for folder in (ROOT, INFRA):
        for name in (".checkov.yaml", ".checkov.yml"):
            config = folder / name
            if config.exists():
                assert "skip-check" not in config.read_text(), f"{config}: skip on the line instead"
