"""The demo page in headless Chromium against the real local stack: the page is loaded from
http://localhost:<demo port> and reaches the api at 127.0.0.1 cross-origin (a real CORS
preflight for every POST), through the real browser client."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from genjobs.auth.minting import DEMO_USER_ID
from tests.stack import Stack

# A whole stack: run through PgBouncer only, where that variant runs (tests/conftest.py).
pytestmark = [pytest.mark.e2e, pytest.mark.one_database_path]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TERMINAL = {"succeeded", "failed", "cancelled", "error"}


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Debian's headless Chromium through its own chromedriver (Selenium Manager never runs)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = (
            f"browser tests need {', '.join(missing)}: apt-get install chromium chromium-driver"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests; {reason}")
        pytest.skip(reason)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)  # no sandbox: CI runs as root
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser: WebDriver, stack: Stack) -> None:
    """Load the demo page from its own origin and wait until the tasks are listed."""
    origin = f"http://localhost:{stack.ports.demo}"
    browser.get(f"{origin}/")
    assert browser.execute_script("return location.origin") == origin
    WebDriverWait(browser, 15).until(lambda b: b.find_element(By.ID, "submit").is_enabled())


def submit(browser: WebDriver, task: str, text: str) -> None:
    Select(browser.find_element(By.ID, "task")).select_by_value(task)
    box = browser.find_element(By.ID, "input")
    box.clear()
    box.send_keys(f"{text} {uuid.uuid4().hex}")  # a fresh prompt: stub:cut counts per prompt
    browser.find_element(By.ID, "submit").click()


def text(browser: WebDriver, element_id: str) -> str:
    value: str = browser.find_element(By.ID, element_id).get_attribute("textContent") or ""
    return value


def wait_for_status(browser: WebDriver, timeout: float = 20) -> str:
    WebDriverWait(browser, timeout, poll_frequency=0.05).until(
        lambda b: text(b, "status") in TERMINAL
    )
    return text(browser, "status")


def check_against_api(browser: WebDriver, stack: Stack, status: str) -> dict[str, object]:
    """What the page shows is what the api holds for the job."""
    job_id = text(browser, "job-id")
    with stack.client(DEMO_USER_ID) as client:
        job: dict[str, object] = client.get(f"/v1/generations/{job_id}").json()
    assert job["status"] == status
    return job


def test_the_page_streams_a_generation(browser: WebDriver, stack: Stack, tmp_path: Path) -> None:
    open_page(browser, stack)
    submit(browser, "summarize", "stub:tokens=60 stub:pace=40")
    # The first text (a fresh stack's first job also waits for its cold start), then samples.
    WebDriverWait(browser, 20, poll_frequency=0.05).until(lambda b: text(b, "output") != "")
    lengths: list[int] = []
    started = time.monotonic()
    while text(browser, "status") not in TERMINAL and time.monotonic() - started < 20:
        lengths.append(len(text(browser, "output")))
        if len(lengths) == 8:
            browser.save_screenshot(str(tmp_path / "mid-stream.png"))
        time.sleep(0.1)
    assert wait_for_status(browser) == "succeeded", text(browser, "error")
    # 60 tokens at 40 ms: the text grew over several samples, not all at once at the end.
    assert len(set(lengths)) >= 4, lengths
    assert lengths == sorted(lengths), lengths
    job = check_against_api(browser, stack, "succeeded")
    assert text(browser, "output") == job["result"]["text"]  # type: ignore[index]
    assert len(text(browser, "output")) > lengths[0]
    assert "60 completion tokens" in text(browser, "usage")
    assert not browser.find_element(By.ID, "note").is_displayed()


def test_a_stream_cut_mid_answer_shows_a_reset_then_completes(
    browser: WebDriver, stack: Stack
) -> None:
    open_page(browser, stack)
    submit(browser, "summarize", "stub:cut=8 stub:tokens=30 stub:pace=20")
    WebDriverWait(browser, 20, poll_frequency=0.05).until(
        lambda b: "Retry: text reset" in text(b, "note")
    )
    assert "attempt 2 started" in text(browser, "note")
    assert wait_for_status(browser) == "succeeded", text(browser, "error")
    assert text(browser, "attempt") == "2"
    job = check_against_api(browser, stack, "succeeded")
    assert text(browser, "output") == job["result"]["text"]  # type: ignore[index]


def test_cancel_mid_stream_ends_cancelled(browser: WebDriver, stack: Stack) -> None:
    open_page(browser, stack)
    submit(browser, "chat", "stub:tokens=400 stub:pace=25")
    WebDriverWait(browser, 20, poll_frequency=0.05).until(lambda b: text(b, "output") != "")
    browser.find_element(By.ID, "cancel").click()
    assert wait_for_status(browser) == "cancelled", text(browser, "error")
    shown = text(browser, "output")
    time.sleep(0.5)
    assert text(browser, "output") == shown  # the stream ended with the job
    check_against_api(browser, stack, "cancelled")
    with stack.client(DEMO_USER_ID) as client:
        # Billed once the worker, at its next write, learns of the cancel and stops the model.
        job = stack.wait_for(client, text(browser, "job-id"), lambda j: bool(j["usage"]), 5)
    # Stopped well before the 400-token answer (10 s at 25 ms) was written; what ran is billed.
    usage = job["usage"]
    assert isinstance(usage, dict) and 0 < usage["completion_tokens"] < 400, usage
    # The page reads that usage too.
    WebDriverWait(browser, 5, poll_frequency=0.05).until(
        lambda b: f"{usage['completion_tokens']} completion tokens" in text(b, "usage")
    )
    assert "Cancelled" in text(browser, "note")
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert not browser.find_element(By.ID, "cancel").is_enabled()
    assert browser.find_element(By.ID, "submit").is_enabled()


def test_an_origin_the_api_does_not_allow_is_refused_by_the_browser(
    browser: WebDriver, stack: Stack
) -> None:
    # The same page from http://127.0.0.1:<port>, an origin not in ALLOWED_ORIGINS: the
    # browser's CORS check, not the page, stops it from reading the api.
    browser.get(f"http://127.0.0.1:{stack.ports.demo}/")
    WebDriverWait(browser, 15).until(lambda b: text(b, "error") != "")
    assert text(browser, "error").startswith("Could not load tasks")
    assert not browser.find_element(By.ID, "submit").is_enabled()
