"""Notifiers against real receivers: an HTTP server and an SMTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from fogcoord.clock import FakeClock
from fogcoord.config import AlertingConfig
from fogcoord.contracts.stats import AlertConfig, Comparison
from fogcoord.stats.alerts import AlertEngine, Notification
from fogcoord.stats.notify import (
    Dispatcher,
    EmailNotifier,
    WebhookNotifier,
    notifiers_from_config,
    slack_payload,
)

# --- receivers ------------------------------------------------------------------------------


@dataclass
class Recorded:
    path: str
    content_type: str
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    """Answers each POST with the next scripted status (200 once the script runs out)."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    requests: list[Recorded] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    state = WebhookReceiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.requests.append(
                    Recorded(self.path, self.headers.get("Content-Type", ""), json.loads(body))
                )
                status = state.statuses.pop(0) if state.statuses else 200
            if state.delay_s:
                time.sleep(state.delay_s)
            reply = b"ok" if status < 300 else b"error"
            try:
                self.send_response(status)
                for name, value in state.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:  # the client timed out and hung up first
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/B000/secret"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class MailHandler:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def smtp_server() -> Iterator[tuple[MailHandler, int]]:
    handler = MailHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


# --- notifications to send -------------------------------------------------------------------


def notification(*, resolve: bool = False) -> Notification:
    """A real notification from the engine: two alerts firing in ``host`` (or one resolved)."""
    engine = AlertEngine(FakeClock(), 900)
    engine.add_rule(
        AlertConfig(
            name="cpu_high",
            series="host.cpu_percent",
            comparison=Comparison.GT,
            threshold=80,
            group="host",
            summary="CPU is saturated",
            labels={"severity": "page"},
        )
    )
    engine.add_rule(
        AlertConfig(
            name="memory_high",
            series="host.memory_percent",
            comparison=Comparison.GE,
            threshold=85,
            group="host",
        )
    )
    engine.evaluate({"host.cpu_percent": 97.5, "host.memory_percent": 90})
    [note] = engine.due_notifications()
    if not resolve:
        return note
    engine.evaluate({"host.cpu_percent": 97.5, "host.memory_percent": 20})
    [note] = engine.due_notifications()
    return note


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/hook"


# --- webhook --------------------------------------------------------------------------------


async def test_webhook_posts_slack_compatible_json(receiver: WebhookReceiver) -> None:
    note = notification()
    assert await WebhookNotifier(receiver.url).send(note) is True
    [request] = receiver.requests
    assert request.path == "/hooks/T000/B000/secret"
    assert request.content_type == "application/json"
    body = request.body
    assert body["text"] == "[FIRING:2] host: cpu_high, memory_high"
    [attachment] = body["attachments"]
    assert attachment["color"] == "danger"
    assert attachment["title"] == "Firing: 2 in host"
    assert attachment["ts"] == int(note.at)
    assert [f["title"] for f in attachment["fields"]] == ["cpu_high", "memory_high"]
    assert attachment["fields"][0]["value"] == (
        "host.cpu_percent = 97.5 (> 80)\nCPU is saturated\nseverity=page"
    )
    assert attachment["fields"][1]["value"] == "host.memory_percent = 90 (>= 85)"
    assert all(f["short"] is False for f in attachment["fields"])


async def test_resolved_alerts_are_a_good_coloured_attachment(receiver: WebhookReceiver) -> None:
    note = notification(resolve=True)
    assert await WebhookNotifier(receiver.url).send(note) is True
    body = receiver.requests[0].body
    assert body["text"] == "[FIRING:1] host: cpu_high, memory_high"
    assert [(a["color"], [f["title"] for f in a["fields"]]) for a in body["attachments"]] == [
        ("danger", ["cpu_high"]),
        ("good", ["memory_high"]),
    ]
    assert body == slack_payload(note)


async def test_webhook_retries_after_two_server_errors_then_succeeds(
    receiver: WebhookReceiver,
) -> None:
    receiver.statuses = [500, 503]
    sleeps = Sleeps()
    notifier = WebhookNotifier(receiver.url, retries=3, sleep=sleeps)
    assert await notifier.send(notification()) is True
    assert len(receiver.requests) == 3
    assert receiver.requests[0].body == receiver.requests[2].body
    assert sleeps.calls == [0.5, 1.0]


async def test_webhook_gives_up_after_its_retries(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500] * 10
    sleeps = Sleeps()
    notifier = WebhookNotifier(
        receiver.url, retries=2, sleep=sleeps, backoff_s=1, max_backoff_s=1.5
    )
    with caplog.at_level(logging.WARNING, logger="fogcoord.stats.notify"):
        assert await notifier.send(notification()) is False
    assert len(receiver.requests) == 3
    assert sleeps.calls == [1.0, 1.5]
    assert "failed after 3 attempts: HTTP 500" in caplog.text
    assert "secret" not in caplog.text


async def test_a_client_error_is_not_retried(receiver: WebhookReceiver) -> None:
    receiver.statuses = [404]
    sleeps = Sleeps()
    assert await WebhookNotifier(receiver.url, sleep=sleeps).send(notification()) is False
    assert len(receiver.requests) == 1
    assert sleeps.calls == []


async def test_too_many_requests_waits_as_long_as_retry_after_says(
    receiver: WebhookReceiver,
) -> None:
    receiver.statuses = [429]
    receiver.headers = {"Retry-After": "7"}
    sleeps = Sleeps()
    assert await WebhookNotifier(receiver.url, sleep=sleeps).send(notification()) is True
    assert len(receiver.requests) == 2
    assert sleeps.calls == [7.0]


async def test_connection_errors_are_retried_then_reported() -> None:
    sleeps = Sleeps()
    notifier = WebhookNotifier(dead_url(), retries=3, sleep=sleeps)
    assert await notifier.send(notification()) is False
    assert sleeps.calls == [0.5, 1.0, 2.0]


async def test_a_slow_receiver_times_out_and_is_retried(receiver: WebhookReceiver) -> None:
    receiver.delay_s = 0.5
    sleeps = Sleeps()
    notifier = WebhookNotifier(receiver.url, retries=1, timeout_s=0.05, sleep=sleeps)
    assert await notifier.send(notification()) is False
    assert len(sleeps.calls) == 1


async def test_an_injected_client_is_used_and_left_open(receiver: WebhookReceiver) -> None:
    async with httpx.AsyncClient(headers={"X-Test": "yes"}) as client:
        notifier = WebhookNotifier(receiver.url, client=client)
        assert await notifier.send(notification()) is True
        assert await notifier.send(notification()) is True
        assert not client.is_closed
    assert len(receiver.requests) == 2


@pytest.mark.parametrize("url", ["ftp://example.com/x", "not a url", "http://"])
def test_a_webhook_needs_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookNotifier(url)


# --- email ----------------------------------------------------------------------------------


def parse(envelope: Envelope) -> Message:
    content = envelope.original_content or envelope.content
    assert isinstance(content, bytes)
    return message_from_bytes(content)


async def test_email_arrives_with_the_alert_names(smtp_server: tuple[MailHandler, int]) -> None:
    handler, port = smtp_server
    notifier = EmailNotifier("127.0.0.1", port, "fog@example.org", ["ops@example.org", "b@x.io"])
    assert await notifier.send(notification()) is True
    [envelope] = handler.envelopes
    assert envelope.mail_from == "fog@example.org"
    assert envelope.rcpt_tos == ["ops@example.org", "b@x.io"]
    message = parse(envelope)
    assert message["Subject"] == "[FIRING:2] host: cpu_high, memory_high"
    assert message["From"] == "fog@example.org"
    assert message["To"] == "ops@example.org, b@x.io"
    assert message["Message-ID"].endswith("@example.org>")
    assert message.get_content_type() == "text/plain"
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    text = body.decode()
    assert "Firing:" in text
    assert "- cpu_high: host.cpu_percent = 97.5 (> 80) - CPU is saturated" in text
    assert "- memory_high: host.memory_percent = 90 (>= 85)" in text


async def test_a_resolved_email_lists_both_sections(smtp_server: tuple[MailHandler, int]) -> None:
    handler, port = smtp_server
    notifier = EmailNotifier("127.0.0.1", port, "fog@example.org", ["ops@example.org"])
    assert await notifier.send(notification(resolve=True)) is True
    body = parse(handler.envelopes[0]).get_payload(decode=True)
    assert isinstance(body, bytes)
    lines = body.decode().splitlines()
    firing, resolved = lines.index("Firing:"), lines.index("Resolved:")
    assert lines[firing + 1].startswith("- cpu_high: ")
    assert lines[resolved + 1] == "- memory_high: host.memory_percent = 20 (>= 85)"


async def test_an_unreachable_relay_is_reported_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = EmailNotifier("127.0.0.1", free_port(), "fog@example.org", ["ops@example.org"])
    with caplog.at_level(logging.WARNING, logger="fogcoord.stats.notify"):
        assert await notifier.send(notification()) is False
    assert "email via 127.0.0.1" in caplog.text


def test_an_email_notifier_needs_recipients() -> None:
    with pytest.raises(ValueError, match="recipient"):
        EmailNotifier("127.0.0.1", 25, "fog@example.org", [])


# --- dispatch -------------------------------------------------------------------------------


class Fake:
    def __init__(self, result: bool | Exception) -> None:
        self.result = result
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> bool:
        self.sent.append(notification)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


async def test_the_dispatcher_sends_to_all_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, refusing, fine = Fake(RuntimeError("boom")), Fake(False), Fake(True)
    note = notification()
    with caplog.at_level(logging.WARNING, logger="fogcoord.stats.notify"):
        assert await Dispatcher([broken, refusing, fine]).send(note) is False
    assert broken.sent == refusing.sent == fine.sent == [note]
    assert "Fake raised sending" in caplog.text
    assert "boom" in caplog.text
    assert "Fake could not deliver" in caplog.text


async def test_the_dispatcher_reports_success_when_all_deliver(
    receiver: WebhookReceiver, smtp_server: tuple[MailHandler, int]
) -> None:
    handler, port = smtp_server
    dispatcher = Dispatcher(
        [
            WebhookNotifier(receiver.url),
            EmailNotifier("127.0.0.1", port, "fog@example.org", ["ops@example.org"]),
        ]
    )
    assert await dispatcher.send(notification()) is True
    assert len(receiver.requests) == 1
    assert len(handler.envelopes) == 1
    assert await Dispatcher([]).send(notification()) is True


def test_notifiers_from_config() -> None:
    hook = "https://hooks.example.com/services/x"
    assert notifiers_from_config(AlertingConfig()) == []
    assert (
        notifiers_from_config(AlertingConfig(email_to=["a@b.c"], email_notifications=False)) == []
    )
    both = notifiers_from_config(
        AlertingConfig(
            slack_webhook_url=hook,
            email_to=["a@b.c"],
            smtp_host="mail.local",
            smtp_port=2525,
            email_from="fog@b.c",
            webhook_retries=5,
            webhook_timeout_seconds=2,
        )
    )
    webhook, email = both
    assert isinstance(webhook, WebhookNotifier)
    assert (webhook.url, webhook.retries, webhook.timeout_s) == (hook, 5, 2)
    assert isinstance(email, EmailNotifier)
    assert (email.host, email.port, email.sender, email.recipients) == (
        "mail.local",
        2525,
        "fog@b.c",
        ("a@b.c",),
    )
