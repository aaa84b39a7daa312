"""Delivery of journey messages: SMTP (smtplib), signed webhooks (HMAC-SHA256), signed link tokens,
and the Jinja2 rendering of templates.

Nothing here touches the database: the executor (`schedule.py`) decides what to send inside a
transaction, calls these outside any transaction (a slow SMTP server must not hold a database
lock), and records the outcome in the next one. Every outcome says whether a retry can help
(`transient`): connection errors, timeouts, 4xx SMTP replies and 5xx / 429 HTTP answers are retried
with exponential backoff by the executor; 5xx SMTP replies and 4xx HTTP answers are final.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate
from pathlib import Path
from typing import Any

import httpx
import orjson
from jinja2 import ChainableUndefined, Environment, FileSystemLoader, select_autoescape

from omnijourney.config import ENV_PREFIX

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).with_name("templates") / "email"
SIGNATURE_HEADER = "X-Omnijourney-Signature"
#: a webhook's signature is accepted for this long after its timestamp (replay window for receivers)
SIGNATURE_TOLERANCE_SECONDS = 300


def _env(name: str, default: str = "") -> str:
    return os.environ.get(ENV_PREFIX + name, default)


# ============================================================================ configuration


@dataclass(frozen=True)
class QuietHours:
    """Local times in which no message is sent (deferred to `end`); spans midnight when start > end."""

    start: dtime
    end: dtime
    timezone: str = "UTC"
    channels: tuple[str, ...] = ("email", "sms", "push", "chat")

    @classmethod
    def parse(cls, spec: str, timezone: str = "UTC") -> QuietHours | None:
        """`"21:00-08:00"` (empty: none)."""
        if not spec.strip():
            return None
        a, b = spec.split("-", 1)
        return cls(dtime.fromisoformat(a.strip()), dtime.fromisoformat(b.strip()), timezone)


@dataclass(frozen=True)
class DeliveryConfig:
    """Where and how messages go. From the environment (`from_env`) or built by tests and the demo."""

    secret: bytes
    public_url: str = "http://127.0.0.1:8000"
    shop_url: str = "https://shop.example"
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout: float = 10.0
    mail_from: str = "shop@omnijourney.local"
    mail_from_name: str = "omnijourney"
    #: channel -> the provider's webhook URL (sms, push, chat: how those providers are reached)
    providers: dict[str, str] = field(default_factory=dict)
    webhook_secret: bytes = b""
    webhook_timeout: float = 5.0
    quiet_hours: QuietHours | None = None
    #: channel -> (most messages, per this many days) from all journeys together
    frequency_caps: dict[str, tuple[int, float]] = field(default_factory=lambda: {"email": (3, 7.0), "sms": (2, 7.0)})
    #: purposes that need an explicit `granted` consent (others only need it not withdrawn / denied)
    opt_in_purposes: tuple[str, ...] = ("marketing",)
    #: delivery attempts of one step before it fails for good; backoff base (doubling) in seconds
    max_attempts: int = 5
    backoff_seconds: float = 30.0
    #: how long a claim is held; a step claimed longer ago (its worker crashed) is claimed again
    lease_seconds: float = 300.0
    #: due steps one executor decides, holds, sends and records together (one transaction each
    #: for holding and recording a wave instead of two per message); also how many messages a
    #: crash between SMTP acceptance and the outcome's commit can cause to be sent again
    wave_size: int = 25
    #: a send whose channel's last cap slot is held by another worker's send in flight waits this long
    #: and decides again (that send may still fail and free the slot)
    cap_recheck_seconds: float = 60.0

    @classmethod
    def from_env(cls, data_dir: Path | None = None) -> DeliveryConfig:
        providers = {
            ch: url for ch in ("sms", "push", "chat") if (url := _env(f"{ch.upper()}_WEBHOOK_URL")) and url.strip()
        }
        caps: dict[str, tuple[int, float]] = {}
        for part in _env("FREQUENCY_CAPS", "email:3/7,sms:2/7").split(","):
            if part.strip():
                ch, rest = part.split(":", 1)
                n, days = rest.split("/", 1)
                caps[ch.strip()] = (int(n), float(days))
        return cls(
            secret=secret_key(data_dir),
            public_url=_env("PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/"),
            shop_url=_env("SHOP_URL", "https://shop.example").rstrip("/"),
            smtp_host=_env("SMTP_HOST") or None,
            smtp_port=int(_env("SMTP_PORT", "25")),
            smtp_user=_env("SMTP_USER") or None,
            smtp_password=_env("SMTP_PASSWORD") or None,
            smtp_starttls=_env("SMTP_STARTTLS").lower() in {"1", "true", "yes"},
            mail_from=_env("MAIL_FROM", "shop@omnijourney.local"),
            mail_from_name=_env("MAIL_FROM_NAME", "omnijourney"),
            providers=providers,
            webhook_secret=_env("WEBHOOK_SECRET").encode(),
            quiet_hours=QuietHours.parse(_env("QUIET_HOURS"), _env("QUIET_HOURS_TZ", "UTC")),
            frequency_caps=caps,
            wave_size=max(1, int(_env("JOURNEY_WAVE_SIZE", "25"))),
        )


def secret_key(data_dir: Path | None) -> bytes:
    """`OMNIJOURNEY_SECRET_KEY`, else a random key kept in `<data dir>/secret_key` (created once, 0600),
    so the API process (which verifies link tokens) and the worker (which signs them) agree."""
    env = _env("SECRET_KEY")
    if env:
        return env.encode()
    path = (data_dir or Path(_env("DATA_DIR", "./omnijourney-data"))) / "secret_key"
    if not path.exists():
        # written aside and linked into place: the API process and the worker may start together,
        # and neither may ever read a half-written key (the first link wins, the other reads it)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


# ============================================================================ signed tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_token(secret: bytes, kind: str, payload: dict[str, Any]) -> str:
    """A URL-safe token: the payload and an HMAC-SHA256 over (kind, payload). The token is the
    credential of the public unsubscribe / open / click routes, so it is unforgeable but not secret
    about its content (a step id, a profile id)."""
    body = _b64(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
    mac = hmac.new(secret, f"{kind}.{body}".encode(), hashlib.sha256).digest()[:18]
    return f"{body}.{_b64(mac)}"


def verify_token(secret: bytes, kind: str, token: str) -> dict[str, Any] | None:
    try:
        body, mac = token.split(".", 1)
        want = hmac.new(secret, f"{kind}.{body}".encode(), hashlib.sha256).digest()[:18]
        if not hmac.compare_digest(_unb64(mac), want):
            return None
        data = orjson.loads(_unb64(body))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def webhook_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """`t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (what receivers verify)."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_webhook(secret: bytes, header: str, body: bytes, now: float | None = None) -> bool:
    """What a receiver does: recompute the signature and refuse an old timestamp (replays)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - ts) > SIGNATURE_TOLERANCE_SECONDS:
        return False
    return hmac.compare_digest(webhook_signature(secret, ts, body), header)


# ============================================================================ rendering


_env_cache: list[Environment] = []


def templates() -> Environment:
    if not _env_cache:
        _env_cache.append(
            Environment(
                loader=FileSystemLoader(TEMPLATE_DIR),
                autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
                # a value a profile lacks renders empty (a marketer's template must not fail on one)
                undefined=ChainableUndefined,
                trim_blocks=True,
                lstrip_blocks=True,
            )
        )
    return _env_cache[0]


class Links:
    """The tracked links of one message: open pixel, click redirects, unsubscribe (signed by step)."""

    def __init__(self, config: DeliveryConfig, step_id: int, profile_id: int, purpose: str, channel: str) -> None:
        self.config, self.step_id, self.profile_id, self.purpose, self.channel = (
            config,
            step_id,
            profile_id,
            purpose,
            channel,
        )

    def track(self, url: str) -> str:
        token = sign_token(self.config.secret, "click", {"s": self.step_id, "u": url})
        return f"{self.config.public_url}/e/c/{token}"

    @property
    def open_pixel_url(self) -> str:
        return f"{self.config.public_url}/e/o/{sign_token(self.config.secret, 'open', {'s': self.step_id})}.gif"

    @property
    def unsubscribe_url(self) -> str:
        payload = {"s": self.step_id, "p": self.profile_id, "pu": self.purpose, "c": self.channel}
        return f"{self.config.public_url}/e/u/{sign_token(self.config.secret, 'unsubscribe', payload)}"


def render(template: str, channel: str, context: dict[str, Any], links: Links) -> tuple[str, str | None]:
    """(text body, html body or None) of a template for a channel: e-mail renders `<name>.html` (and a
    plain-text part from `<name>.txt` when there is one); other channels render `<name>.txt`."""
    env = templates()
    ctx = {
        **context,
        "track": links.track,
        "open_pixel_url": links.open_pixel_url,
        "unsubscribe_url": links.unsubscribe_url,
        "shop_url": links.config.shop_url,
    }
    names = set(env.list_templates())
    text = env.get_template(f"{template}.txt").render(ctx).strip() if f"{template}.txt" in names else None
    if channel != "email":
        if text is None:
            raise LookupError(f"template {template!r} has no text version for {channel}")
        return text, None
    html = env.get_template(f"{template}.html").render(ctx)
    if text is None:
        text = f"Open this message in an HTML mail reader. Unsubscribe: {links.unsubscribe_url}"
    return text, html


# ============================================================================ SMTP


@dataclass(frozen=True)
class Outcome:
    ok: bool
    transient: bool = False
    detail: str = ""


class Mailer:
    """SMTP through smtplib, one connection kept open across a batch of sends (reconnects when dropped)."""

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        assert c.smtp_host
        smtp = smtplib.SMTP(c.smtp_host, c.smtp_port, timeout=c.smtp_timeout)
        if c.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
        if c.smtp_user:
            smtp.login(c.smtp_user, c.smtp_password or "")
        return smtp

    def message(
        self, *, to: str, subject: str, text: str, html: str | None, message_key: str, unsubscribe_url: str
    ) -> Message:
        """The MIME message (the compat32 API: building with `EmailMessage`'s header registry cost
        more CPU than the rest of a send)."""
        c = self.config
        msg: Message
        if html is None:
            msg = MIMEText(text, "plain", "utf-8")
        else:
            msg = MIMEMultipart("alternative")
            msg.attach(MIMEText(text, "plain", "utf-8"))
            msg.attach(MIMEText(html, "html", "utf-8"))
        msg["From"] = formataddr((c.mail_from_name, c.mail_from), "utf-8")
        msg["To"] = to
        msg["Subject"] = Header(subject, "utf-8")
        msg["Date"] = formatdate(localtime=False)
        # derived from (journey, step, profile, entry): a re-send after a crash carries the same id,
        # so a receiving system that deduplicates on Message-ID shows it once
        msg["Message-ID"] = f"<oj.{message_key}@{c.mail_from.split('@')[-1]}>"
        msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return msg

    def send(self, msg: Message) -> Outcome:
        if not self.config.smtp_host:
            return Outcome(False, False, "delivery failed: no SMTP configured (OMNIJOURNEY_SMTP_HOST)")
        for attempt in (1, 2):  # a kept connection may have been closed by the server: reconnect once
            try:
                if self._smtp is None:
                    self._smtp = self._connect()
                refused = self._smtp.send_message(msg)
                if refused:
                    return Outcome(False, False, f"recipient refused: {refused}")
                return Outcome(True)
            except smtplib.SMTPServerDisconnected as exc:
                self._smtp = None
                if attempt == 2:
                    return Outcome(False, True, f"SMTP disconnected: {exc}")
            except smtplib.SMTPRecipientsRefused as exc:
                code = min(v[0] for v in exc.recipients.values())
                return Outcome(False, 400 <= code < 500, f"recipient refused: {code}")
            except smtplib.SMTPResponseException as exc:
                self.close()
                return Outcome(False, 400 <= exc.smtp_code < 500, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}")
            except (TimeoutError, smtplib.SMTPException, OSError) as exc:
                self.close()
                return Outcome(False, True, f"SMTP unavailable: {exc}")
        return Outcome(False, True, "SMTP unavailable")

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._smtp = None


# ============================================================================ webhooks


class WebhookSender:
    """POSTs JSON signed with HMAC-SHA256 (`X-Omnijourney-Signature`), with an `Idempotency-Key`
    that stays the same for every retry of the same step, so a receiver can drop duplicates."""

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self._client = httpx.Client(timeout=config.webhook_timeout, follow_redirects=False)

    def post(self, *, url: str, secret: bytes, payload: dict[str, Any], idempotency_key: str) -> Outcome:
        body = orjson.dumps(payload)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            SIGNATURE_HEADER: webhook_signature(secret, int(time.time()), body),
            "User-Agent": "omnijourney-webhooks",
        }
        try:
            r = self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(False, True, f"webhook unreachable: {exc.__class__.__name__}")
        if r.status_code < 300:
            return Outcome(True, detail=str(r.status_code))
        return Outcome(False, r.status_code >= 500 or r.status_code in (408, 429), f"webhook answered {r.status_code}")

    def close(self) -> None:
        self._client.close()


def click_redirect_target(secret: bytes, token: str) -> tuple[int, str] | None:
    data = verify_token(secret, "click", token)
    if not data or not isinstance(data.get("u"), str) or not isinstance(data.get("s"), int):
        return None
    return data["s"], data["u"]


def local_time(now: datetime, tz: str) -> datetime:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return now.astimezone(ZoneInfo(tz))
    except (ZoneInfoNotFoundError, ValueError):
        return now
