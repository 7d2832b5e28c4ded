"""After-commit publishing: emits staged during a transaction, sent in order when it
commits, dropped when it rolls back. Helpers tie a batch to Django's and SQLAlchemy's
transactions (:mod:`roomcast.integrations`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import PublishFailed

if TYPE_CHECKING:
    from .aio import AsyncPublisher
    from .publisher import Message, Publisher


class _Staged:
    def __init__(self) -> None:
        self._messages: list[Message] = []
        self._closed = False

    def add(self, message: Message) -> None:
        """Stages ``message`` (built and validated by ``Emit.stage``)."""
        if self._closed:
            raise PublishFailed("this batch was already committed or rolled back")
        self._messages.append(message)

    def rollback(self) -> None:
        """Drops everything staged: nothing is sent."""
        self._messages.clear()
        self._closed = True

    def __len__(self) -> int:
        return len(self._messages)

    def _take(self) -> list[Message]:
        if self._closed:
            return []
        self._closed = True
        taken, self._messages = self._messages, []
        return taken


class Batch(_Staged):
    """Staged emits of a blocking :class:`~roomcast.Publisher`."""

    def __init__(self, publisher: Publisher) -> None:
        super().__init__()
        self._p = publisher

    def commit(self) -> list[str]:
        """Sends every staged message in order; their ids. Stops at the first failure and
        raises it (``PublishFailed.sent`` lists the ids sent before it)."""
        sent: list[str] = []
        for m in self._take():
            try:
                sent.append(str(self._p.send(m)))
            except PublishFailed as e:
                e.sent = sent  # type: ignore[attr-defined]
                raise
        return sent


class AsyncBatch(_Staged):
    """Staged emits of an :class:`~roomcast.aio.AsyncPublisher`."""

    def __init__(self, publisher: AsyncPublisher) -> None:
        super().__init__()
        self._p = publisher

    async def commit(self) -> list[str]:
        """Sends every staged message in order; their ids (see :meth:`Batch.commit`)."""
        sent: list[str] = []
        for m in self._take():
            try:
                answer: Any = await self._p.send(m)
                sent.append(str(answer))
            except PublishFailed as e:
                e.sent = sent  # type: ignore[attr-defined]
                raise
        return sent
