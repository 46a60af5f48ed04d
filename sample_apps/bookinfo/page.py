"""productpage's HTML: the index page and the product page, with stable CSS classes for tests."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from sample_apps.bookinfo.products import Outcome

MAX_STARS = 5
DETAIL_ROWS = (
    ("Type", "type"),
    ("Pages", "pages"),
    ("Publisher", "publisher"),
    ("Language", "language"),
    ("ISBN-10", "ISBN-10"),
    ("ISBN-13", "ISBN-13"),
)
STYLE = """
body { font-family: sans-serif; margin: 0; }
nav { background: #222; color: #eee; padding: 0.6em 1em; display: flex; gap: 1em;
      align-items: center; }
nav a { color: #eee; }
nav .login, nav .user { margin-left: auto; }
main { max-width: 60em; margin: 1em auto; padding: 0 1em; }
.columns { display: flex; gap: 2em; } .columns > section { flex: 1; }
table.details th { text-align: left; padding-right: 1em; }
.review { border-left: 4px solid #ccc; margin: 1em 0; padding-left: 1em; }
.error { color: red; }
"""


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def render_index() -> str:
    body = (
        "<main><h1>Bookinfo</h1><p>Istio's sample application, in Python.</p>"
        '<p><a href="/productpage">Normal user</a></p></main>'
    )
    return _document("Bookinfo", body)


def _nav(user: str | None) -> str:
    if user:
        account = (
            f'<span class="user">Signed in as {escape(user)}</span> '
            '<a class="logout" href="/logout">Sign out</a>'
        )
    else:
        account = (
            '<form class="login" method="post" action="/login">'
            '<input name="username" placeholder="User name" required> '
            '<button type="submit">Sign in</button></form>'
        )
    return f'<nav><span class="brand">BookInfo Sample</span>{account}</nav>'


def _error(heading: str, outcome: Outcome) -> str:
    return (
        f'<h4 class="error fetch-error">{escape(heading)}</h4>'
        f'<p class="error error-text">{escape(outcome.error or "")}</p>'
    )


def _details(outcome: Outcome) -> str:
    if outcome.error is not None:
        return _error("Error fetching product details", outcome)
    rows = "".join(
        f"<tr><th>{label}:</th><td>{escape(str(outcome.body.get(key, '')))}</td></tr>"
        for label, key in DETAIL_ROWS
    )
    return f'<table class="details">{rows}</table>'


def _rating(rating: Mapping[str, Any] | None) -> str:
    if not rating:
        return ""
    if "error" in rating:
        return f'<p class="rating-error" style="color: red">{escape(str(rating["error"]))}</p>'
    stars = max(0, min(MAX_STARS, int(rating.get("stars", 0))))
    color = escape(str(rating.get("color", "black")))
    return (
        f'<span class="stars" data-stars="{stars}" data-color="{color}" style="color: {color}">'
        f'<span class="stars-filled">{"★" * stars}</span>'
        f'<span class="stars-empty">{"☆" * (MAX_STARS - stars)}</span></span>'
    )


def _reviews(outcome: Outcome) -> str:
    if outcome.error is not None:
        return _error("Error fetching product reviews", outcome)
    items = "".join(
        '<blockquote class="review">'
        f'<p class="review-text">{escape(str(review.get("text", "")))}</p>'
        f'<small class="reviewer">{escape(str(review.get("reviewer", "")))}</small> '
        f"{_rating(review.get('rating'))}</blockquote>"
        for review in outcome.body.get("reviews", [])
    )
    podname = escape(str(outcome.body.get("podname", "")))
    return f'{items}<p class="served-by">Reviews served by: {podname}</p>'


def render_productpage(
    product: Mapping[str, Any], details: Outcome, reviews: Outcome, user: str | None
) -> str:
    """The page for one product; `descriptionHtml` is our own constant, so it is not escaped."""
    body = (
        f"{_nav(user)}<main>"
        f'<h1 class="title">{escape(str(product["title"]))}</h1>'
        f'<p class="summary">{product["descriptionHtml"]}</p>'
        '<div class="columns">'
        f'<section class="book-details"><h4>Book Details</h4>{_details(details)}</section>'
        f'<section class="book-reviews"><h4>Book Reviews</h4>{_reviews(reviews)}</section>'
        "</div></main>"
    )
    return _document("Simple Bookstore App", body)
