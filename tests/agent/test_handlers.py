from __future__ import annotations

import pytest

from fogcoord.agent.handlers import Handlers, Message


async def _echo(message: Message) -> Message | None:
    return {"type": "ack", "of": message.get("id")}


def test_register_get_and_remove() -> None:
    handlers = Handlers()
    handlers.register("task", _echo)
    assert "task" in handlers
    assert handlers.get("task") is _echo
    assert list(handlers) == ["task"]
    handlers.unregister("task")
    assert handlers.get("task") is None
    assert len(handlers) == 0


def test_decorator_form() -> None:
    handlers = Handlers()

    @handlers.on("bid")
    async def bid(message: Message) -> Message | None:
        return None

    assert handlers.get("bid") is bid


@pytest.mark.parametrize("kind", ["heartbeat", "health", "error"])
def test_the_agent_s_own_types_cannot_be_taken(kind: str) -> None:
    with pytest.raises(ValueError, match="handled by the agent"):
        Handlers().register(kind, _echo)
