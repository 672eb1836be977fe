"""Pages of ListVolumes and ListSnapshots.

A token names the last id of the page before it, so a page boundary survives
that volume or snapshot being deleted in between; ids are listed in order.
"""

from .errors import CsiError, aborted, invalid
from .ids import check_id

TOKEN_PREFIX = "after:"


def _start(token: str) -> str:
    """The id a page starts after; ABORTED for a token dfs-csi did not issue."""
    if not token:
        return ""
    after = token[len(TOKEN_PREFIX):] if token.startswith(TOKEN_PREFIX) else ""
    try:
        return check_id(after, "starting_token")
    except CsiError:
        raise aborted(f"starting_token {token[:64]!r} was not issued by dfs-csi; "
                      "list again from the start") from None


def page(request, ids, load) -> tuple[list, str]:
    """What `load` makes of the sorted `ids` after the request's starting_token
    (None: skip that id), at most max_entries of it, and the next page's token
    ("" after the last page)."""
    if request.max_entries < 0:
        raise invalid("max_entries must not be negative")
    after = _start(request.starting_token)
    found, last = [], ""
    for item_id in ids:
        if item_id <= after:
            continue
        if request.max_entries and len(found) == request.max_entries:
            return found, TOKEN_PREFIX + last
        item = load(item_id)
        if item is not None:
            found.append(item)
            last = item_id
    return found, ""
