"""Nothing from an address becomes markup, every setting is reported rather than raised, and
each warning shows once per page: AppTest on the pages, one real server and Chromium."""

from __future__ import annotations

import zipfile
from dataclasses import replace

import pytest
from helpers import PAGES, open_app, train_run
from live_app import IDLE, LiveApp, launch_chromium

from vae.execution.states import RunState
from vae.present.text import SHOWN_CHARS, code_span, plain_text, shorten

LINK = "[Log in again](https://e.vil/x)"
IMAGE = "![](https://e.vil/p.png)"
NINES = "9" * 100_000


def messages(at) -> list[str]:
    """The Markdown bodies of every message element on the page."""
    kinds = (at.warning, at.error, at.info, at.success, at.markdown, at.caption)
    return [element.value for found in kinds for element in found]


@pytest.mark.parametrize("value", [LINK, IMAGE, NINES, "1e999999", "<img src=x onerror=alert(1)>"])
def test_an_address_value_is_shown_as_text_and_shortened(monkeypatch, tmp_path, value):
    at = open_app(monkeypatch, tmp_path / "runs", "pages/train.py", beta=value)
    assert not at.exception, at.exception
    shown = messages(at)
    (warning,) = [m for m in shown if "Ignored `beta`" in m]  # once
    assert code_span(value) in warning  # literal, inside a code span
    assert len(warning) < 200  # not 100,000 nines
    assert not [m for m in shown if "e.vil" in m and "Ignored `beta`" not in m]


def test_the_text_helpers():
    assert shorten(NINES) == "9" * (SHOWN_CHARS - 1) + "…"
    assert shorten("a\nb\x1b[31mc") == "a b[31mc"  # one line, no control characters
    assert code_span("a`b") == "``a`b``" and code_span("`x") == "`` `x ``"
    assert plain_text(LINK) == r"\[Log in again\]\(https\://e.vil/x\)"
    assert plain_text("see www.e.vil") == r"see www\.e.vil"


LINK_TOKEN = "[Log-in](https://e.vil/x)"  # one word: a list of numbers splits at spaces


def test_a_typed_sweep_value_is_echoed_as_text(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "runs", "pages/train.py")
    sweep = next(w for w in at.text_input if w.label.startswith("β values"))
    sweep.input(f"1 {LINK_TOKEN}").run()
    assert not at.exception, at.exception
    (error,) = [m for m in messages(at) if m.startswith("Sweep:")]
    assert plain_text(repr(LINK_TOKEN)) in error, error


def test_a_store_path_with_markup_is_shown_literally(monkeypatch, tmp_path):
    root = tmp_path / f"runs`{LINK_TOKEN}`"  # a backtick would close a plain code span early
    at = open_app(monkeypatch, root, "pages/train.py")
    assert not at.exception, at.exception
    (caption,) = [m for m in messages(at) if "run store" in m]
    assert code_span(root, 300) in caption, caption


def test_a_runs_end_reason_is_shown_as_text(monkeypatch, store, tiny_config):
    """A reason comes from status.json: an error's text, or whatever a damaged file holds."""
    run_id = store.create_run(tiny_config)
    store.update_status(run_id, RunState.FAILED, reason=f"data error in {LINK_TOKEN}")
    at = open_app(monkeypatch, store.root, "pages/train.py")
    assert not at.exception, at.exception
    (caption,) = [m for m in messages(at) if "data error in" in m]
    assert plain_text(LINK_TOKEN) in caption and LINK_TOKEN not in caption, caption


def test_a_hostile_name_inside_a_runs_checkpoint_is_shown_as_text(monkeypatch, store, tiny_config):
    """An archive entry's name reaches the gallery's warning through the refusal's text."""
    runs = [store.create_run(replace(tiny_config, beta=b), group="sweep-h") for b in (1.0, 2.0)]
    for run_id in runs:
        train_run(store, run_id)
    with zipfile.ZipFile(store.path(runs[1], "final.pt"), "w") as archive:
        archive.writestr("archive/data.pkl", b"x")
        archive.writestr(LINK_TOKEN, b"y" * 100, compress_type=zipfile.ZIP_DEFLATED)
    at = open_app(monkeypatch, store.root, "pages/gallery.py")
    assert not at.exception, at.exception
    (warning,) = [m for m in messages(at) if m.startswith("Cannot draw this run")]
    assert plain_text(LINK_TOKEN) in warning and LINK_TOKEN not in warning, warning


def test_a_broken_run_named_in_the_address_is_called_broken(monkeypatch, store, tiny_config):
    train_run(store, store.create_run(tiny_config))
    bad = store.create_run(tiny_config)
    store.path(bad, "config.json").write_text("{")
    at = open_app(monkeypatch, store.root, "pages/posterior.py", run=bad)
    assert not at.exception, at.exception
    text = " ".join(messages(at))
    assert "is broken" in text and "not found" not in text


@pytest.mark.parametrize(
    "env, words",
    [
        ({"VAE_BACKEND": "nonsense"}, "VAE_BACKEND='nonsense' is not valid"),
        ({"VAE_BACKEND": "ray", "VAE_RAY_ADDRESS": "http://e.vil"}, "VAE_RAY_ADDRESS="),
    ],
)
@pytest.mark.parametrize("page", PAGES)
def test_a_bad_backend_setting_is_reported_on_every_page_once(
    monkeypatch, tmp_path, env, words, page
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    at = open_app(monkeypatch, tmp_path / "runs", page)
    assert not at.exception, at.exception
    found = [w.value for w in at.warning if words.split("=")[0] in w.value]
    assert len(found) == 1, found  # once, however often the page asks for the job manager
    assert "Using local" in found[0]


@pytest.mark.browser
def test_hostile_addresses_make_no_link_and_no_image_in_chromium(tmp_path):
    """The browser's own view: no anchor and no image pointing at the address's host."""
    from playwright.sync_api import sync_playwright

    server = LiveApp(tmp_path / "runs", tmp_path / "streamlit.log")
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                page = browser.new_page()
                requested = []
                page.on("request", lambda request: requested.append(request.url))
                for value in (LINK, IMAGE):
                    page.goto(f"{server.url}/?beta={value}")
                    page.wait_for_selector(IDLE, timeout=90_000)
                    page.locator("[data-testid='stAlert']", has_text="Ignored").first.wait_for()
                    assert page.locator("a[href*='e.vil']").count() == 0
                    assert page.locator("img[src*='e.vil']").count() == 0
                    shown = page.locator("[data-testid='stAlert']", has_text="Ignored").first
                    assert "e.vil" in shown.inner_text()  # shown, as text
                assert not [url for url in requested if url.startswith("https://e.vil")]
            finally:
                browser.close()
    finally:
        server.stop()
