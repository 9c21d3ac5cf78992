"""Delivering alert notifications: a Slack-compatible webhook and plain-text email.

Every notifier's ``send`` reports success as a boolean and does not raise for delivery
problems; :class:`Dispatcher` fans one notification out to all of them and logs what failed, so
an unreachable mail relay never stops the webhook (or the caller's loop).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from collections.abc import Awaitable, Callable, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

import httpx

from fogcoord.config import AlertingConfig
from fogcoord.stats.alerts import AlertView, Notification

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class Notifier(Protocol):
    async def send(self, notification: Notification) -> bool:
        """Deliver ``notification``; ``True`` once the receiver accepted it."""
        ...


def slack_payload(notification: Notification) -> dict[str, Any]:
    """Slack's incoming-webhook JSON: the title as text, one attachment per status."""
    attachments: list[dict[str, Any]] = []
    for color, label, views in (
        ("danger", "Firing", notification.firing),
        ("good", "Resolved", notification.resolved),
    ):
        if views:
            attachments.append(
                {
                    "color": color,
                    "title": f"{label}: {len(views)} in {notification.group}",
                    "fields": [_slack_field(v) for v in views],
                    "ts": int(notification.at),
                }
            )
    return {"text": notification.title(), "attachments": attachments}


def _slack_field(view: AlertView) -> dict[str, Any]:
    value = "no data" if view.value is None else f"{view.value:g}"
    lines = [f"{view.series} = {value} ({view.comparison.value} {view.threshold:g})"]
    if view.summary:
        lines.append(view.summary)
    if view.labels:
        lines.append(", ".join(f"{k}={v}" for k, v in sorted(view.labels.items())))
    return {"title": view.name, "value": "\n".join(lines), "short": False}


class WebhookNotifier:
    """POSTs :func:`slack_payload` to a webhook, retrying what may succeed later.

    Transport errors, 429 and 5xx are retried ``retries`` times with exponential back-off
    (``backoff_s``, doubling, capped at ``max_backoff_s``; a 429's numeric ``Retry-After`` is
    honoured up to the cap). Other statuses are final. Without ``client`` each send opens and
    closes its own, since alerts are too rare to keep a connection pool alive for.
    """

    def __init__(
        self,
        url: str,
        *,
        retries: int = 3,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("the webhook URL must be an http:// or https:// URL")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.url = url
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._client = client
        self._sleep = sleep
        # Slack webhook paths are secrets: logs name the host only.
        self._where = parsed.host

    async def send(self, notification: Notification) -> bool:
        payload = slack_payload(notification)
        if self._client is not None:
            return await self._post(self._client, payload)
        async with httpx.AsyncClient() as client:
            return await self._post(client, payload)

    async def _post(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> bool:
        attempts = self.retries + 1
        problem = ""
        for attempt in range(attempts):
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            try:
                response = await client.post(self.url, json=payload, timeout=self.timeout_s)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            except httpx.HTTPError as exc:
                log.warning("webhook to %s failed: %s", self._where, exc)
                return False
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return True
                if status != 429 and status < 500:
                    log.warning("webhook to %s refused the alert: HTTP %d", self._where, status)
                    return False
                problem = f"HTTP {status}"
                delay = min(self.max_backoff_s, max(delay, _retry_after(response)))
            if attempt + 1 < attempts:
                log.info(
                    "webhook to %s: %s; retry %d/%d in %.1f s",
                    self._where,
                    problem,
                    attempt + 1,
                    self.retries,
                    delay,
                )
                await self._sleep(delay)
        log.warning("webhook to %s failed after %d attempts: %s", self._where, attempts, problem)
        return False


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "0")))
    except ValueError:  # the HTTP-date form: fall back to our own back-off
        return 0.0


class EmailNotifier:
    """Sends :meth:`Notification.text` as a plain-text email through an SMTP relay.

    ``smtplib`` blocks, so each send runs in a worker thread. No authentication or TLS: the
    relay is expected to be local (or on a trusted network) and to take mail from this host.
    """

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: Sequence[str],
        *,
        timeout_s: float = 10.0,
        local_hostname: str | None = None,
    ) -> None:
        if not recipients:
            raise ValueError("an email notifier needs at least one recipient")
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = tuple(recipients)
        self.timeout_s = timeout_s
        self.local_hostname = local_hostname

    def message(self, notification: Notification) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = notification.title()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = formatdate(notification.at)
        # An explicit domain: the default looks up this host's FQDN, which can stall on DNS.
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or "localhost")
        msg.set_content(notification.text())
        return msg

    async def send(self, notification: Notification) -> bool:
        msg = self.message(notification)
        try:
            await asyncio.to_thread(self._deliver, msg)
        except OSError as exc:  # smtplib.SMTPException is an OSError too
            log.warning("email via %s:%d failed: %s", self.host, self.port, exc)
            return False
        return True

    def _deliver(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(
            self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout_s
        ) as smtp:
            refused = smtp.send_message(msg, from_addr=self.sender, to_addrs=self.recipients)
        if refused:
            log.warning("email: the relay refused %s", ", ".join(sorted(refused)))


class Dispatcher:
    """Sends each notification to every notifier at once; logs failures and never raises them."""

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = tuple(notifiers)

    async def send(self, notification: Notification) -> bool:
        """``True`` when every notifier delivered (vacuously so with none)."""
        results = await asyncio.gather(*(self._one(n, notification) for n in self.notifiers))
        return all(results)

    @staticmethod
    async def _one(notifier: Notifier, notification: Notification) -> bool:
        name = type(notifier).__name__
        try:
            ok = await notifier.send(notification)
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken notifier must not take the others or the caller down
            log.exception("%s raised sending %r", name, notification.title())
            return False
        if not ok:
            log.warning("%s could not deliver %r", name, notification.title())
        return ok


def notifiers_from_config(
    config: AlertingConfig, *, client: httpx.AsyncClient | None = None
) -> list[Notifier]:
    """The webhook when a URL is set; email when enabled and there are recipients."""
    out: list[Notifier] = []
    if config.slack_webhook_url:
        out.append(
            WebhookNotifier(
                config.slack_webhook_url,
                retries=config.webhook_retries,
                timeout_s=config.webhook_timeout_seconds,
                client=client,
            )
        )
    if config.email_notifications and config.email_to:
        out.append(
            EmailNotifier(config.smtp_host, config.smtp_port, config.email_from, config.email_to)
        )
    return out
