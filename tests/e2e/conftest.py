"""Fixtures for browser tests: a real `streamlit run app.py` on a temporary store, and Chromium.

The server and its workers are stopped after each test (see tests/live_app.py).
"""

from __future__ import annotations

import contextlib

import pytest
from live_app import LiveApp, launch_chromium, stop_workers


@pytest.fixture
def app_server(tmp_path):
    """`streamlit run app.py` with VAE_STORE=<tmp_path>/runs; three runs train side by side."""
    server = LiveApp(tmp_path / "runs", tmp_path / "streamlit.log", max_jobs=3)
    try:
        yield server
    finally:
        server.stop()
        stop_workers(server.store_root)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, tmp_path, request):
    """A 1400×1000 page with downloads enabled; on failure a screenshot lands in tmp_path."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        with contextlib.suppress(Exception):
            shot = tmp_path / "failure.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failing page: {shot}")
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report
