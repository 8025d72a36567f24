"""The database, behind a narrow interface (``interface.py``), one module per concern.

``Store`` bundles the parts over one engine: ``subscriptions`` (the
commands), ``polls`` (the poller), ``outbox`` (delivery), ``channel_settings``
(each channel's choices), ``history`` (what watches came to), ``digests``
(one daily digest per channel), ``archives`` (the exceptions archive),
``batches`` (several imports, one card) and ``channel_posts`` (alerts, notices).
"""

from __future__ import annotations

from sqlalchemy import Engine

from bot.store.archives import Archives
from bot.store.batches import Batches
from bot.store.channel_posts import ChannelPosts
from bot.store.channel_settings import ChannelSettingsTable
from bot.store.digests import Digests
from bot.store.history import History
from bot.store.outbox import Outbox
from bot.store.polls import Polls
from bot.store.subscriptions import Subscriptions


class Store:
    """Every part of the store, sharing one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.subscriptions = Subscriptions(engine)
        self.polls = Polls(engine)
        self.outbox = Outbox(engine)
        self.channel_settings = ChannelSettingsTable(engine)
        self.history = History(engine)
        self.digests = Digests(engine)
        self.archives = Archives(engine)
        self.batches = Batches(engine)
        self.channel_posts = ChannelPosts(engine)

    def release_leases(self, owner: str) -> None:
        """Give back every lease this replica holds (graceful shutdown)."""
        self.polls.release_leases(owner)
        self.outbox.release_leases(owner)
        self.digests.release_leases(owner)
        self.archives.release_leases(owner)
        self.batches.release_leases(owner)
        self.channel_posts.release_leases(owner)
