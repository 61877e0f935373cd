"""The two steps of an exception from an event in the HTML UI: the form asks for the review page
(`review`), whose hidden fields, sent back with a reason, save it (`save_reviewed`)."""

from __future__ import annotations

import html
import re
from typing import Any

from flask.testing import FlaskClient


def review(client: FlaskClient, csrf: str, event_id: int, **form: str) -> Any:
    """POST the event page's exception form: the page that shows the scope (nothing saved)."""
    return client.post(f"/events/{event_id}/exception", data={"csrf_token": csrf, **form})


def hidden_fields(page: str) -> dict[str, str]:
    return {
        m.group(1): html.unescape(m.group(2))
        for m in re.finditer(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page)
    }


def save_reviewed(client: FlaskClient, event_id: int, page: str, **form: str) -> Any:
    """Send the review page's form back (its hidden fields, plus `form`: reason, expires)."""
    return client.post(f"/events/{event_id}/exception", data={**hidden_fields(page), **form})


def add_exception(client: FlaskClient, csrf: str, event_id: int, reason: str, **form: str) -> Any:
    """Review, then save: the answer to the save."""
    page = review(client, csrf, event_id, **form)
    assert page.status_code == 200, page.get_data(as_text=True)[-500:]
    return save_reviewed(client, event_id, page.get_data(as_text=True), reason=reason,
                         expires=form.get("expires", ""))  # fmt: skip
