"""The dashboard in a real headless Chromium: click runs -> run -> action, watch live events arrive.

Against a real server, two real ``lessor worker`` processes and the UI on
uvicorn (conftest.py). Waits are Selenium's explicit waits on what the page
shows, never sleeps.
"""

from __future__ import annotations

import os

import anyio
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.scheduler.submit import submit_run
from lessor.scheduler.values import pack_value
from tests.browser.stack import NS, UiThread
from tests.conftest import make_backend

WAIT_S = 20


def css(driver, selector: str):
    return WebDriverWait(driver, WAIT_S).until(EC.presence_of_element_located((By.CSS_SELECTOR, selector)))


def shot(driver, shots: str, name: str, max_height: int = 2400) -> None:
    """A screenshot of the whole page (the window grown to the page's height, at most ``max_height``)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height + 20, 600), max_height))
    driver.save_screenshot(os.path.join(shots, f"{name}.png"))
    driver.set_window_size(1400, 1000)


def in_server(url: str, fn):
    """Run ``fn(backend)`` (async) on a fresh backend of the test's server, from this sync test."""
    async def go():
        backend = await make_backend(url)
        try:
            return await fn(backend)
        finally:
            await backend.redis.aclose()

    return anyio.run(go)


def test_click_through_runs_then_run_then_action(stack, browser, shots):
    base, _, story = stack
    browser.get(base + "/runs")
    css(browser, "table#runs")
    listed = [r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "tr.run-row")]
    assert story.failover in listed and story.failed in listed
    shot(browser, shots, "runs")

    browser.find_element(By.CSS_SELECTOR, f'tr.run-row[data-run="{story.failover}"] a.run-link').click()
    assert css(browser, "#run-id").text == story.failover
    timeline = css(browser, "#timeline svg")
    assert len(timeline.find_elements(By.CSS_SELECTOR, "g.lease")) == 2   # the stalled worker's lease, then the standby's
    assert timeline.find_elements(By.CSS_SELECTOR, ".mark-refused")      # the stalled worker's late report
    workers = {g.get_attribute("data-worker") for g in timeline.find_elements(By.CSS_SELECTOR, "g.lease")}
    assert workers == {"w-stalled", "w-standby"}
    shot(browser, shots, "run")

    browser.find_element(By.CSS_SELECTOR, 'tr.action-row[data-action="a0"] a.action-link').click()
    assert css(browser, "#action-id").text == "a0"
    attempts = browser.find_elements(By.CSS_SELECTOR, "#attempts tr.attempt-row")
    assert [a.find_elements(By.TAG_NAME, "td")[1].text for a in attempts] == ["w-stalled", "w-standby"]
    assert "lease expired → requeued" in attempts[0].text
    assert "action succeeded" in attempts[1].text
    shot(browser, shots, "action")


def test_a_fanout_run_shows_its_tree(stack, browser):
    base, _, story = stack
    browser.get(f"{base}/runs/{NS}/{story.fanout}")
    rows = WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#tree tr.action-row"))
    assert len(rows) == 4  # a0 and its three children
    assert all("succeeded" in r.text for r in rows)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline g.lease")) == 4


def test_filters_and_paging(stack, browser):
    base, _, story = stack
    browser.get(base + "/runs?phase=failed")
    css(browser, "table#runs")
    assert [r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "tr.run-row")] == [story.failed]

    browser.get(base + "/runs?limit=4")
    first = [r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "tr.run-row")]
    browser.find_element(By.ID, "next-page").click()
    css(browser, "table#runs")
    second = [r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "tr.run-row")]
    assert len(first) == 4 and second and not set(first) & set(second)


def test_a_submit_appears_in_the_live_tail(stack, browser, shots):
    base, url, _ = stack
    browser.get(base + "/tail")
    css(browser, '#tail[data-state="open"]')

    async def submit(backend):
        return (await submit_run(backend, "square", inputs=pack_value({"x": 12}), namespace=NS)).run_id

    run_id = in_server(url, submit)

    def types(d) -> set[str]:
        return {r.find_elements(By.TAG_NAME, "td")[1].text
                for r in d.find_elements(By.CSS_SELECTOR, f'#tail tr.tail-row[data-run="{run_id}"]')}

    # Its submit first, then a worker process runs it: its lease and its success arrive too.
    WebDriverWait(browser, WAIT_S).until(
        lambda d: {"run_created", "action_leased", "action_succeeded", "run_completed"} <= types(d))
    shot(browser, shots, "tail", max_height=900)


def test_a_run_page_follows_its_own_events(stack, browser):
    base, url, _ = stack

    async def submit(backend):
        return (await submit_run(backend, "square", inputs=pack_value({"x": 5}), namespace=NS, queue="manual")).run_id

    run_id = in_server(url, submit)
    browser.get(f"{base}/runs/{NS}/{run_id}")
    css(browser, '#tail[data-state="open"]')

    async def lease_and_finish(backend):
        client = LeaseClient(backend, "w-manual", LeaseConfig(ttl_ms=5000, grace_ms=1000))
        (lease,) = await client.acquire(NS, "manual")
        await client.complete(lease, pack_value(25))

    in_server(url, lease_and_finish)
    WebDriverWait(browser, WAIT_S).until(lambda d: {"action_leased", "action_succeeded"} <= {
        r.find_elements(By.TAG_NAME, "td")[1].text for r in d.find_elements(By.CSS_SELECTOR, "#tail tr.tail-row")})


def test_workers_queues_and_activity_pages(stack, browser, shots):
    base, _, story = stack
    browser.get(base + "/workers")
    rows = WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.worker-row"))
    holders = {r.get_attribute("data-worker") for r in rows}
    assert holders & {"w-alpha", "w-beta"}  # the long task's lease
    # Host, pid and version: from the workers' presence entries (scheduler/presence.py).
    import socket
    from importlib.metadata import version

    row = css(browser, f'tr.worker-row[data-worker="{sorted(holders & {"w-alpha", "w-beta"})[0]}"]').text
    assert socket.gethostname()[:20] in row and version("lessor") in row
    shot(browser, shots, "workers")

    browser.get(base + "/queues")
    backlog = css(browser, 'tr.queue-row[data-queue="backlog"]')
    assert backlog.find_element(By.CSS_SELECTOR, "td.depth").text == str(len(story.backlog))
    shot(browser, shots, "queues")

    browser.get(base + "/activity")
    chart = css(browser, "#chart svg")
    assert chart.find_elements(By.CSS_SELECTOR, "rect.bar-failover")
    assert chart.find_elements(By.CSS_SELECTOR, "rect.bar-retry")
    shot(browser, shots, "activity")


@pytest.fixture
def aborting_ui(stack):
    _, url, _ = stack
    with UiThread(url, allow_abort=True) as ui:
        yield ui.base


def test_abort_button_only_with_allow_abort(stack, aborting_ui, browser):
    base, url, story = stack
    browser.get(f"{base}/runs/{NS}/{story.long}")
    css(browser, "#tree")
    assert not browser.find_elements(By.CSS_SELECTOR, "button.abort")

    browser.get(f"{aborting_ui}/runs/{NS}/{story.long}")
    css(browser, "button.abort").click()
    WebDriverWait(browser, WAIT_S).until(EC.alert_is_present()).accept()   # "Abort run ...?"
    WebDriverWait(browser, WAIT_S).until(EC.alert_is_present()).accept()   # the outcome
    # The page is server-rendered: reload it until the worker has confirmed the abort (next renewal).
    WebDriverWait(browser, WAIT_S).until(lambda d: "aborted" in d.find_element(By.CSS_SELECTOR, "h1").text
                                         or d.refresh())
