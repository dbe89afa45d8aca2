"""The emulator's topology loading, fault settings and command line."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from devstack.pubsub_emulator.cli import build_parser, config_from_args
from devstack.pubsub_emulator.errors import TopologyError
from devstack.pubsub_emulator.faults import FaultConfig, FaultInjector
from devstack.pubsub_emulator.model import RetryPolicy
from devstack.pubsub_emulator.topology import DEFAULT_TOPOLOGY_PATH, Topology, parse_duration

ROOT = Path(__file__).resolve().parents[2]
ENDPOINTS = {"worker": "http://127.0.0.1:8081/", "dead_letter": "http://127.0.0.1:8082/"}


def parse(text: str) -> Topology:
    return Topology.parse(textwrap.dedent(text))


# -- the repository's topology ------------------------------------------------------------


def test_default_topology_is_the_repository_file() -> None:
    assert DEFAULT_TOPOLOGY_PATH == ROOT / "infra" / "pubsub.yaml"


def test_repository_topology_resolves_to_the_documented_resources() -> None:
    topics, subscriptions = Topology.load(DEFAULT_TOPOLOGY_PATH).resolve(
        "local-project", ENDPOINTS, service_account_email="push@example.iam.gserviceaccount.com"
    )
    assert [t.name for t in topics] == [
        "projects/local-project/topics/generation-jobs",
        "projects/local-project/topics/generation-jobs-dead-letter",
    ]
    by_name = {s.name.rsplit("/", 1)[-1]: s for s in subscriptions}
    worker = by_name["generation-jobs-worker"]
    assert worker.push is not None
    assert worker.push.endpoint == ENDPOINTS["worker"]
    assert worker.push.service_account_email == "push@example.iam.gserviceaccount.com"
    assert worker.ack_deadline_seconds == 300
    assert worker.retry_policy == RetryPolicy(minimum_backoff=10.0, maximum_backoff=600.0)
    assert worker.dead_letter_policy is not None
    assert worker.dead_letter_policy.dead_letter_topic == topics[1].name
    assert worker.dead_letter_policy.max_delivery_attempts == 5
    handler = by_name["generation-jobs-dead-letter-handler"]
    assert handler.push is not None and handler.push.endpoint == ENDPOINTS["dead_letter"]
    assert handler.dead_letter_policy is None
    replay = by_name["generation-jobs-dead-letter-replay"]
    assert replay.push is None
    assert replay.message_retention == 604800.0


def test_unresolved_push_endpoint_names_the_missing_flag() -> None:
    topology = Topology.load(DEFAULT_TOPOLOGY_PATH)
    with pytest.raises(TopologyError, match="--endpoint dead_letter=URL"):
        topology.resolve("p", {"worker": "http://w/"}, service_account_email="a@b")


def test_push_endpoint_may_be_a_literal_url() -> None:
    topology = parse(
        """
        topics: {t: {}}
        subscriptions:
          s: {topic: t, push_endpoint: "http://127.0.0.1:9999/push"}
        """
    )
    _, (sub,) = topology.resolve("p", {}, service_account_email="a@b")
    assert sub.push is not None and sub.push.endpoint == "http://127.0.0.1:9999/push"


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("10s", 10.0), ("604800s", 604800.0), ("3.5s", 3.5), (" 0s ", 0.0), (12, 12.0)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value, "x") == seconds


@pytest.mark.parametrize("value", ["10", "10m", "-1s", "s", True, None, "1.5.5s"])
def test_invalid_durations(value: object) -> None:
    with pytest.raises(TopologyError, match="duration"):
        parse_duration(value, "x")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("subscriptions: {s: {topic: nope}}", "undeclared topic 'nope'"),
        ("topics: {t: {}}\nsubscriptions: {s: {}}", "topic: required"),
        ("topics: {t: {}}\nsubscriptions: {s: {topic: t, ack_deadline_seconds: 5}}", "10 to 600"),
        (
            "topics: {t: {}}\nsubscriptions: {s: {topic: t, ack_deadline_seconds: 601}}",
            "between 0 and 600",
        ),
        (
            "topics: {t: {}}\nsubscriptions: {s: {topic: t, dead_letter_policy: "
            "{dead_letter_topic: t, max_delivery_attempts: 3}}}",
            "5 to 100",
        ),
        (
            "topics: {t: {}}\nsubscriptions: {s: {topic: t, dead_letter_policy: "
            "{dead_letter_topic: gone}}}",
            "undeclared topic 'gone'",
        ),
        (
            "topics: {t: {}}\nsubscriptions: {s: {topic: t, retry_policy: "
            "{minimum_backoff: 20s, maximum_backoff: 10s}}}",
            "minimum_backoff <= maximum_backoff",
        ),
        ("topics: {t: {message_retention: 60s}}", "between 600s"),
        ("topics: [a, b]", "expected a mapping"),
        ("topics: {t: {}\n", "invalid YAML"),
    ],
)
def test_invalid_topologies_are_refused_with_a_reason(body: str, message: str) -> None:
    with pytest.raises(TopologyError, match=re.escape(message)):
        Topology.parse(body)


def test_defaults_follow_pubsub() -> None:
    topology = parse(
        """
        topics: {t: {}}
        subscriptions:
          s:
            topic: t
            ack_deadline_seconds: 0
            retry_policy: {}
            dead_letter_policy: {dead_letter_topic: t, max_delivery_attempts: 0}
        """
    )
    (sub,) = topology.subscriptions
    assert sub.ack_deadline_seconds == 10
    assert sub.retry_policy == RetryPolicy(10.0, 600.0)
    assert sub.max_delivery_attempts == 5


def test_unknown_keys_are_warned_about_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        topology = parse(
            """
            topics: {t: {}}
            subscriptions:
              s: {topic: t, enable_exactly_once_delivery: true}
            """
        )
    assert len(topology.subscriptions) == 1
    assert "'enable_exactly_once_delivery' is not emulated" in caplog.text


def test_retry_policy_backoff_doubles_up_to_the_maximum() -> None:
    policy = RetryPolicy(minimum_backoff=10.0, maximum_backoff=600.0)
    assert [policy.backoff(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 600, 600]


# -- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"duplicate_rate": 1.5},
        {"delay_rate": -0.1},
        {"backoff_scale": 0.0},
        {"ack_deadline_scale": -1.0},
        {"max_delay": -1.0},
        {"publish_failure_code": "OK"},
    ],
)
def test_invalid_fault_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultConfig(**settings)


def test_fault_dice_are_reproducible_with_a_seed() -> None:
    config = FaultConfig(duplicate_rate=0.5, delay_rate=0.5, max_delay=1.0, seed=42)
    first, second = FaultInjector(config), FaultInjector(config)
    rolls = [(first.duplicate_delay(), first.first_delivery_delay()) for _ in range(50)]
    assert rolls == [(second.duplicate_delay(), second.first_delivery_delay()) for _ in range(50)]
    assert any(d is None for d, _ in rolls) and any(d is not None for d, _ in rolls)


def test_without_faults_nothing_is_injected() -> None:
    faults = FaultInjector(FaultConfig())
    assert faults.duplicate_delay() is None
    assert faults.first_delivery_delay() == 0.0
    assert not faults.fail_publish()
    assert faults.scale_backoff(10.0) == 10.0


# -- command line -------------------------------------------------------------------------


def test_flags_default_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PUBSUB_EMULATOR_") or name == "GOOGLE_CLOUD_PROJECT":
            monkeypatch.delenv(name)
    monkeypatch.setenv("PUBSUB_EMULATOR_PORT", "9185")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    monkeypatch.setenv("PUBSUB_EMULATOR_DUPLICATE_RATE", "0.25")
    monkeypatch.setenv("PUBSUB_EMULATOR_DELAY_RATE", "0.5")
    monkeypatch.setenv("PUBSUB_EMULATOR_MAX_DELAY", "2")
    monkeypatch.setenv("PUBSUB_EMULATOR_BACKOFF_SCALE", "0.01")
    monkeypatch.setenv("PUBSUB_EMULATOR_SEED", "7")
    args = build_parser().parse_args(
        ["--endpoint", "worker=http://127.0.0.1:1/", "--endpoint", "dead_letter=http://h:2/"]
    )
    config = config_from_args(args)
    assert (config.host, config.port, config.http_port) == ("127.0.0.1", 9185, 8086)
    assert config.project == "env-project"
    assert config.endpoints == {"worker": "http://127.0.0.1:1/", "dead_letter": "http://h:2/"}
    assert config.faults == FaultConfig(
        duplicate_rate=0.25, delay_rate=0.5, max_delay=2.0, backoff_scale=0.01, seed=7
    )
    assert len(config.topology.subscriptions) == 3  # the repository topology by default


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_BACKOFF_SCALE", "0.01")
    args = build_parser().parse_args(["--backoff-scale", "0.5", "--port", "0"])
    assert args.backoff_scale == 0.5
    assert args.port == 0


def test_an_invalid_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_DUPLICATE_RATE", "often")
    with pytest.raises(SystemExit, match="PUBSUB_EMULATOR_DUPLICATE_RATE"):
        build_parser()


def test_endpoint_flag_needs_name_and_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--endpoint", "worker"])
    assert "NAME=http(s)://" in capsys.readouterr().err


def run_cli(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBSUB_EMULATOR_")}
    return subprocess.Popen(
        [sys.executable, "-m", "devstack.pubsub_emulator", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_prints_a_ready_line_and_stops_cleanly_on_sigterm() -> None:
    process = run_cli(
        "--port",
        "0",
        "--http-port",
        "0",
        "--endpoint",
        "worker=http://127.0.0.1:9/",
        "--endpoint",
        "dead_letter=http://127.0.0.1:9/",
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert re.fullmatch(
            r"pubsub emulator listening on 127\.0\.0\.1:\d+ "
            r"\(push auth certs at http://127\.0\.0\.1:\d+/oauth2/v3/certs\)\n",
            line,
        ), line
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - stopped < 3
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_reports_a_bad_topology_and_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "pubsub.yaml"
    bad.write_text("subscriptions: {s: {topic: missing}}\n")
    process = run_cli("--port", "0", "--http-port", "0", "--topology", str(bad))
    _, err = process.communicate(timeout=20)
    assert process.returncode == 2
    assert "undeclared topic 'missing'" in err
