"""productpage's header in headless Chromium: what demo.md tells a newcomer to click is there,
readable, where the demo's banner says ("log in as jason: top right")."""

from __future__ import annotations

from pathlib import Path

from sample_apps.bookinfo.page import render_productpage
from sample_apps.bookinfo.products import PRODUCTS, Outcome
from tests.test_dashboard_browser import Page, page  # noqa: F401  (the chromium fixture)

WIDTH = 1400  # the fixture's --window-size
DETAILS = Outcome(200, {"type": "paperback", "pages": 200})
REVIEWS = Outcome(200, {"podname": "reviews-v1", "reviews": []})

# Relative luminance contrast of two computed `rgb(...)` colours (WCAG 2), in the page.
CONTRAST = """(() => {
  const lum = c => { const v = c.match(/[\\d.]+/g).slice(0, 3).map(x => {
      x = x / 255; return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  const s = getComputedStyle(document.querySelector(SEL));
  const [a, b] = [lum(s.color), lum(s.backgroundColor)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
})()"""


async def load(tab: Page, tmp_path: Path, user: str | None) -> None:
    html = tmp_path / f"productpage-{user}.html"
    html.write_text(render_productpage(PRODUCTS[0], DETAILS, REVIEWS, user))
    await tab.call("Page.enable")
    await tab.call("Page.navigate", url=html.as_uri())
    await tab.wait_for("document.readyState === 'complete' && !!document.querySelector('nav')",
                        10, "the product page did not load")


async def left_edge(tab: Page, selector: str) -> float:
    value = await tab.evaluate(
        f"document.querySelector({selector!r}).getBoundingClientRect().left")
    assert isinstance(value, (int, float)), selector
    return float(value)


async def test_sign_in_is_readable_and_top_right(page: Page, tmp_path: Path) -> None:  # noqa: F811
    """Signed out: the Sign in button's text contrasts with the button (it was #eee on the
    browser's light-grey button: invisible), and the form sits in the right half of the bar."""
    await load(page, tmp_path, None)
    assert await page.evaluate("document.querySelector('nav button').innerText") == "Sign in"
    contrast = await page.evaluate(CONTRAST.replace("SEL", repr("nav button")))
    assert contrast >= 4.5, f"Sign in button text contrast {contrast:.2f}:1, below 4.5:1"
    assert await left_edge(page, "nav .login") > WIDTH / 2


async def test_signed_in_user_and_sign_out_top_right(page: Page,  # noqa: F811
                                                      tmp_path: Path) -> None:
    """Signed in: "Signed in as jason" and "Sign out" sit in the right half, readable on the
    dark bar."""
    await load(page, tmp_path, "jason")
    assert await page.evaluate("document.querySelector('nav .user').innerText") == \
        "Signed in as jason"
    assert await left_edge(page, "nav .user") > WIDTH / 2
    assert await left_edge(page, "nav .logout") > WIDTH / 2
    contrast = await page.evaluate(CONTRAST.replace("SEL", repr("nav")))
    assert contrast >= 4.5, f"nav text contrast {contrast:.2f}:1"
