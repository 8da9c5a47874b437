"""Planning: what a poll's entries give each room and each personal subscriber.

One pure step, the same for every recipient: a poll's decision (entries to post, posted
entries that changed) plus a snapshot of the settings (rooms, their languages and
filters, subscribers, how often each entry was edited) become outbox rows. Each entry is
rendered once per language, with its picture for rooms and subscribers alike. Nothing
here does I/O, so the poller runs it in a worker thread: a feed of heavy entries costs
that thread time, never the event loop's.

One entry that cannot be rendered is skipped with a warning naming it; the others go
out. The plan also stops at a time budget: what it did not reach is left unseen and
planned by the next poll.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from bot.config import FeedConfig
from bot.feeds.decide import Decision
from bot.filters import entry_text, wanted
from bot.model import Entry, Image, Message
from bot.render import html_to_text, render_entry
from bot.store.types import Correction, DigestItem, NewDelivery, RoomFeedSettings

log = logging.getLogger(__name__)

# An entry's HTML beyond this is cut before rendering: a message shows at most 40 KiB
# (then "read more"), and sanitising megabytes of one entry would only cost time.
MAX_ENTRY_HTML = 128 * 1024
# A poll's rendering stops after this much time; the rest waits for the next poll.
PLAN_BUDGET_SECONDS = 20.0

@dataclass(frozen=True, slots=True)
class Recipient:
    """A room a feed posts to, or a personal subscriber's conversation."""

    room: str                               # the outbox's room reference
    language: str
    settings: RoomFeedSettings | None = None    # a room's pause and filters
    digest_user: str | None = None          # a subscriber who takes digests: lines, not posts
    subscriber: str | None = None           # whose personal conversation this is


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What planning needs from the store, read before it starts."""

    feed: FeedConfig
    feed_title: str | None
    recipients: tuple[Recipient, ...]
    # Posted entries: id -> (fingerprint of what was posted or last edited, edits so far).
    posted: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(slots=True)
class Plan:
    deliveries: list[NewDelivery] = field(default_factory=list)
    digest: list[DigestItem] = field(default_factory=list)
    posted: list[tuple[str, str]] = field(default_factory=list)      # (entry id, fingerprint)
    changed: list[tuple[str, str]] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)        # entry ids skipped on an error
    unplanned: list[str] = field(default_factory=list)     # not reached within the budget
    corrections_cut: bool = False      # the budget ended before every entry was compared

    @property
    def complete(self) -> bool:
        return not self.unplanned and not self.corrections_cut


# Query parameters that only track readers: a link that gains or loses one is the same link.
_TRACKING = re.compile(
    r"(?<=[?&])(?:utm_[a-z_]+|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|_hsenc|_hsmi|"
    r"mkt_tok|yclid|igshid)=[^&\s\"'<>)]*&?", re.IGNORECASE)


def fingerprint(entry: Entry) -> str:
    """What an entry says, for noticing corrections: its title, text and link, with
    whitespace and tracking parameters ignored (those changes are not corrections)."""
    text = html_to_text(entry.content_html or entry.summary_html)
    parts = [entry.title, text, entry.link or ""]
    normalized = "\n".join(" ".join(_TRACKING.sub("", p).replace("?&", "?").split())
                           .rstrip("?&") for p in parts)
    return hashlib.sha256(normalized.encode()).hexdigest()


def bounded(entry: Entry) -> Entry:
    """The entry with its HTML cut to what a message can ever show."""
    if len(entry.content_html) <= MAX_ENTRY_HTML and len(entry.summary_html) <= MAX_ENTRY_HTML:
        return entry
    return replace(entry, content_html=entry.content_html[:MAX_ENTRY_HTML],
                   summary_html=entry.summary_html[:MAX_ENTRY_HTML])


class _Renderer:
    """Renders each entry once per language."""

    def __init__(self, feed: FeedConfig, feed_title: str | None) -> None:
        self._feed = feed
        self._feed_title = feed_title
        self._done: dict[tuple[str, str], Message] = {}

    def message(self, entry: Entry, language: str) -> Message:
        found = self._done.get((entry.entry_id, language))
        if found is None:
            feed = self._feed
            found = render_entry(entry, feed_title=self._feed_title, language=language,
                                 template=feed.template, content=feed.content,
                                 summary_chars=feed.summary_length,
                                 max_bytes=feed.max_message_bytes, feed=feed.name)
            self._done[(entry.entry_id, language)] = found
        return found


def _shown(feed: FeedConfig, entry: Entry, message: Message) -> Message:
    """An entry's message as a room shows it: a notice or a plain message as configured,
    with its picture in the text when so configured."""
    image = (Image(entry.image_url, "inline", entry.title[:200])
             if entry.image_url and feed.images == "inline" else None)
    return replace(message, notice=feed.notice, image=image)


def _rows_for(feed: FeedConfig, entry: Entry, message: Message, room: str,
              subscriber: str | None) -> list[NewDelivery]:
    """An entry's message in one room, and its separate picture when so configured."""
    rows = [NewDelivery(entry.entry_id, room, _shown(feed, entry, message),
                        subscriber=subscriber)]
    if entry.image_url and feed.images == "separate":
        # Its own picture message, right after the text (the outbox keeps the order);
        # resolved when it is first sent.
        alt = entry.title[:200]
        rows.append(NewDelivery(
            f"{entry.entry_id}#image", room,
            Message(alt or "image", "", image=Image(entry.image_url, "separate", alt)),
            kind="image", subject=entry.entry_id, subscriber=subscriber))
    return rows


def _wants(recipient: Recipient, entry: Entry, text: str | None) -> bool:
    if recipient.settings is None:
        return True          # a subscriber chose the whole feed
    return wanted(entry, recipient.settings, text=text)


def plan(decision: Decision, entries: Sequence[Entry], unseen: set[str],
         snapshot: Snapshot, *, budget: float = PLAN_BUDGET_SECONDS) -> Plan:
    """Outbox rows for a poll: new entries for every recipient that wants them, and
    corrections of posted entries that changed."""
    feed = snapshot.feed
    renderer = _Renderer(feed, snapshot.feed_title)
    result = Plan()
    deadline = time.monotonic() + budget
    filtered = any(r.settings is not None and (r.settings.include or r.settings.exclude)
                   for r in snapshot.recipients)
    for index, raw in enumerate(decision.to_post):
        if index and time.monotonic() > deadline:
            result.unplanned = [e.entry_id for e in decision.to_post[index:]]
            log.warning("feed %s: rendering took too long; %d entries wait for the next poll",
                        feed.name, len(result.unplanned))
            break
        entry = bounded(raw)
        try:
            rows, digest = _new_entry(entry, snapshot, renderer, filtered)
            result.posted.append((entry.entry_id, fingerprint(entry)))
        except Exception as exc:
            result.failed.append(entry.entry_id)
            log.warning("feed %s: entry %s cannot be shown and is skipped (%s: %s)",
                        feed.name, entry.entry_id[:200], type(exc).__name__, str(exc)[:200])
            log.debug("feed %s: entry %s", feed.name, entry.entry_id[:200], exc_info=True)
            continue
        result.deliveries += rows
        result.digest += digest
    if not result.unplanned:
        _corrections(entries, unseen, snapshot, renderer, result, deadline)
    return result


def _new_entry(entry: Entry, snapshot: Snapshot, renderer: _Renderer, filtered: bool,
               ) -> tuple[list[NewDelivery], list[DigestItem]]:
    feed = snapshot.feed
    text = entry_text(entry) if filtered else None
    rows: list[NewDelivery] = []
    digest: list[DigestItem] = []
    for recipient in snapshot.recipients:
        if recipient.digest_user is not None:
            date = entry.published or entry.updated
            digest.append(DigestItem(recipient.digest_user, feed.name, entry.entry_id,
                                     entry.title, entry.link,
                                     date.timestamp() if date else None))
        elif _wants(recipient, entry, text):
            rows += _rows_for(feed, entry, renderer.message(entry, recipient.language),
                              recipient.room, recipient.subscriber)
    return rows, digest


def _corrections(entries: Sequence[Entry], unseen: set[str], snapshot: Snapshot,
                 renderer: _Renderer, result: Plan, deadline: float) -> None:
    """Posted entries whose title, text or link changed: the corrected version replaces
    the pending message, or edits the posted one (at most ``max_edits`` times)."""
    feed = snapshot.feed
    for raw in entries:
        known = snapshot.posted.get(raw.entry_id)
        if raw.entry_id in unseen or known is None:
            continue
        stored, edits = known
        if time.monotonic() > deadline:
            result.corrections_cut = True       # the next poll compares the rest
            return
        entry = bounded(raw)
        try:
            fp = fingerprint(entry)
            if fp == stored:
                continue
            result.changed.append((entry.entry_id, fp))
            if feed.on_update != "edit":
                continue
            capped = edits >= feed.max_edits
            if capped:
                log.warning("feed %s: entry %s changed again after %d edits; its posted "
                            "messages are no longer edited (max_edits)", feed.name,
                            entry.entry_id[:200], edits)
            edit_id = f"{entry.entry_id}#edit#{edits + 1}"
            for recipient in snapshot.recipients:
                if recipient.digest_user is not None:
                    continue
                message = renderer.message(entry, recipient.language)
                # Past the cap a message not sent yet still goes out corrected; only
                # posted ones are left as they are.
                shown = _shown(feed, entry, message)
                result.corrections.append(Correction(
                    entry.entry_id, recipient.room, shown,
                    None if capped else NewDelivery(
                        edit_id, recipient.room, shown, kind="edit", subject=entry.entry_id,
                        subscriber=recipient.subscriber)))
        except Exception as exc:
            log.warning("feed %s: the new version of entry %s cannot be shown (%s: %s)",
                        feed.name, entry.entry_id[:200], type(exc).__name__, str(exc)[:200])
    if result.changed:
        log.info("feed %s: %d posted entr%s changed", feed.name, len(result.changed),
                 "y" if len(result.changed) == 1 else "ies")

