"""The details service: a book's bibliographic data, as Istio's Ruby details v1 answers it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from sample_apps.bookinfo.common import ListenAddress, new_app, run


def book_details(product_id: int) -> dict[str, Any]:
    """The fixed details record every product id gets."""
    return {
        "id": product_id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


async def get_details(request: web.Request) -> web.Response:
    try:
        product_id = int(request.match_info["id"])
    except ValueError:
        return web.json_response({"error": "please provide numeric product id"}, status=400)
    return web.json_response(book_details(product_id))


def create_app() -> web.Application:
    app = new_app("details")
    app.router.add_get("/details/{id}", get_details)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    run(create_app(), "details", ListenAddress.from_args("details", argv, os.environ))


if __name__ == "__main__":
    main()
