"""The demo page in a real browser (headless Chromium driven by Playwright) against a real daphne."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.clients import open_client, receive, register_confirmed, send_once
from tests.servers import Daphne, require_program

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = require_program("chromium", install_hint="install Debian's chromium package (apt install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def open_page(browser: Browser, url: str, *, status: str = "connected") -> Page:
    page = await browser.new_page()
    await page.goto(url)
    await expect(page.locator("#status")).to_have_text(status)
    return page


async def confirm_registered(page: Page, recipient: str) -> None:
    """The page sends itself a probe through its own form and waits until it shows."""
    await page.fill("#to", recipient)
    await page.fill("#message", "probe")
    await page.click("#send-form button")
    await expect(page.locator("#log li").last).to_have_text("probe")


async def test_a_page_registered_by_its_hash_receives_exactly_the_text_sent(browser: Browser, daphne: Daphne) -> None:
    page = await open_page(browser, f"{daphne.http_url}/#page-uuid", status="registered as page-uuid")
    await confirm_registered(page, "page-uuid")
    await send_once(daphne.url, "page-uuid", '<img src=x onerror="window.pwned=1"> & done')
    await expect(page.locator("#log li").last).to_have_text('<img src=x onerror="window.pwned=1"> & done')
    assert await page.locator("#log img").count() == 0
    assert await page.evaluate("window.pwned") is None


async def test_a_malformed_hash_still_registers_as_typed(browser: Browser, daphne: Daphne) -> None:
    page = await open_page(browser, f"{daphne.http_url}/#%E0-id", status="registered as %E0-id")
    await confirm_registered(page, "%E0-id")


async def test_the_forms_work_only_while_the_socket_is_open(browser: Browser, daphne: Daphne) -> None:
    page = await open_page(browser, f"{daphne.http_url}/")
    await expect(page.locator("#send-form button")).to_be_enabled()
    await asyncio.to_thread(daphne.stop)
    await expect(page.locator("#status")).to_have_text("disconnected")
    await expect(page.locator("#send-form button")).to_be_disabled()
    await expect(page.locator("#register-form button")).to_be_disabled()


async def test_a_page_sends_to_a_python_client(browser: Browser, daphne: Daphne) -> None:
    listener = await open_client(daphne.url)
    await register_confirmed(listener, "python-side")
    page = await open_page(browser, f"{daphne.http_url}/")
    await page.fill("#to", "python-side")
    await page.fill("#message", "from the browser")
    await page.click("#send-form button")
    assert await receive(listener) == "from the browser"
    await listener.close()


async def test_the_page_and_its_script_are_served_by_daphne(browser: Browser, daphne: Daphne) -> None:
    page = await browser.new_page()
    response = await page.goto(f"{daphne.http_url}/static/notifications/demo.js")
    assert response is not None and response.status == 200
    admin_css = await page.goto(f"{daphne.http_url}/static/admin/css/base.css")
    assert admin_css is not None and admin_css.status == 200
