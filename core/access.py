"""Who may do what, in one place for every transport: API keys with roles, and the rule of each
endpoint. The HTTP gate (service/gate.py) and the media WebSocket both ask here.

Roles: `ingest` (packets, batches, completions, the media WebSocket), `supervisor` (every read),
`admin` (everything, replays included). Every socket is authorized at its handshake like any
request; only a feed whose protocol cannot send headers (a rule with `key_in_first_message`: the
Twilio media stream, whose key comes in `start`) may bring its key in its first message, within
WS_START_TIMEOUT_S. With no key configured at all, Callstream is open but serves this machine
only: a loopback peer, a `Host` naming loopback (a page that rebinds its DNS name to 127.0.0.1
sends its own name), and no cross-site writes. Keys are compared by their SHA-256 digests, each
presented key against every known one with hmac.compare_digest, so the time taken says nothing
about which keys exist; a key is never logged, only its short id (the first 8 hex digits of its
digest).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from core.errors import Forbidden, Unauthenticated
from settings import Settings


class Role(StrEnum):
    INGEST = "ingest"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


# What each role may do: admin everything.
GRANTS: dict[Role, frozenset[Role]] = {
    Role.INGEST: frozenset({Role.INGEST}),
    Role.SUPERVISOR: frozenset({Role.SUPERVISOR}),
    Role.ADMIN: frozenset(Role),
}
OPEN = None  # an endpoint anyone may call (the health checks)
KEY_VARIABLES = "INGEST_API_KEYS, SUPERVISOR_API_KEYS and ADMIN_API_KEYS (or *_API_KEYS_FILE)"


@dataclass(frozen=True, slots=True)
class Rule:
    methods: frozenset[str]  # HTTP methods, or {"WEBSOCKET"}
    path: re.Pattern[str]
    role: Role | None
    prefix: str  # what every matching path starts with: checked before the pattern (hot path)
    # The protocol cannot send headers (Twilio's <Stream>): a socket without a key is let in,
    # and must present one in its first message (start.customParameters.token) in time.
    key_in_first_message: bool = False
    # Held open (a socket, an event stream): counted against WS_MAX_SOCKETS_PER_KEY.
    long_lived: bool = False

    @property
    def websocket(self) -> bool:
        return "WEBSOCKET" in self.methods


def _literal_prefix(pattern: str) -> str:
    """What every path a (top-level alternation of) pattern(s) matches starts with."""
    starts = [re.match(r"[A-Za-z0-9/_-]*", alternative)[0] for alternative in pattern.split("|")]  # type: ignore[index]
    length = 0
    while all(len(s) > length and s[length] == starts[0][length] for s in starts):
        length += 1
    return starts[0][:length]


def _rule(methods: str, path: str, role: Role | None, **options: bool) -> Rule:
    methods_ = frozenset(methods.split())
    long_lived = options.pop("long_lived", "WEBSOCKET" in methods_)
    return Rule(methods_, re.compile(path), role, _literal_prefix(path), long_lived=long_lived,
                **options)  # fmt: skip


_ID = r"[^/]+"
# Every endpoint's rule; a test holds the app's routes to this table (a new route without a
# rule fails the suite). A path no rule matches needs a valid key of any role.
RULES = (
    _rule("GET HEAD", r"/healthz|/readyz", OPEN),
    # The dashboard's page and assets hold no data; what they read asks for a key.
    _rule(
        "GET HEAD",
        # Its script modules (service/routes/dashboard.py serves each file of the folder; any
        # other name is a 404 there).
        r"/dashboard|/dashboard/dashboard\.css|/dashboard/[a-z][a-z-]*\.js",
        OPEN,
    ),
    _rule("POST", rf"/v1/call/stream/{_ID}(/batch)?", Role.INGEST),
    _rule("POST", rf"/v1/call/complete/{_ID}", Role.INGEST),
    _rule("WEBSOCKET", r"/v1/call/media", Role.INGEST, key_in_first_message=True),
    # The PBX feeds (service/feeds/): Asterisk chan_websocket and Genesys AudioHook send their
    # key in the upgrade's headers; FreeSWITCH's mod_audio_stream cannot always (its metadata,
    # the first message, may bring it instead).
    _rule("WEBSOCKET", r"/v1/call/(asterisk|audiohook)", Role.INGEST),
    _rule("WEBSOCKET", r"/v1/call/freeswitch", Role.INGEST, key_in_first_message=True),
    _rule("GET HEAD", rf"/v1/calls(/{_ID}(/history|/audio|/transcript)?)?", Role.SUPERVISOR),
    _rule("POST", rf"/v1/calls/{_ID}/retry", Role.ADMIN),
    _rule("GET HEAD", r"/v1/webhooks/deliveries", Role.ADMIN),
    _rule("POST", r"/v1/webhooks/deliveries/[^/]+/retry", Role.ADMIN),
    _rule("DELETE", rf"/v1/calls/{_ID}", Role.ADMIN),
    _rule("GET HEAD", r"/v1/erasures", Role.ADMIN),
    _rule("GET HEAD", r"/v1/system", Role.SUPERVISOR),
    _rule("GET HEAD", r"/v1/events", Role.SUPERVISOR, long_lived=True),
    _rule("WEBSOCKET", r"/ws/supervisor", Role.SUPERVISOR),
    _rule("GET HEAD", r"/metrics", Role.SUPERVISOR),
    _rule("GET HEAD", r"/docs|/docs/oauth2-redirect|/redoc|/openapi\.json", Role.SUPERVISOR),
)
ANY_KEY = Role.SUPERVISOR  # what an unknown path asks for, once keys are on: some valid key


def rule_for(method: str, path: str) -> Rule | None:
    for rule in RULES:
        if method in rule.methods and path.startswith(rule.prefix) and rule.path.fullmatch(path):
            return rule
    return None


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str  # first 8 hex digits of the key's SHA-256: safe to log
    role: Role

    def may(self, needed: Role) -> bool:
        return needed in GRANTS[self.role]


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class KeyRing:
    def __init__(self, keys: Mapping[Role, Iterable[str]]) -> None:
        self._known: list[tuple[bytes, Principal]] = [
            (hashlib.sha256(k.encode()).digest(), Principal(key_id(k), role))
            for role, ks in keys.items()
            for k in ks
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._known)

    def identify(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, principal in self._known:  # every one, whatever matched: constant time
            if hmac.compare_digest(known, digest):
                found = principal
        return found

    def authorize(self, presented: str | None, needed: Role) -> Principal:
        """The principal behind a key allowed to act as `needed`; raises 401 or 403. Both say
        what is wrong without telling which keys exist."""
        principal = self.identify(presented)
        if principal is None:
            why = "no API key was sent" if not presented else "the API key is not valid"
            raise Unauthenticated(
                f"{why}: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`"
            )
        if not principal.may(needed):
            raise Forbidden(f"this API key's role ({principal.role}) may not do this: {needed}")
        return principal


def parse_keys(listed: str, file: Path | None) -> list[str]:
    """Comma-separated keys, plus one or more per line in `file` (for secrets mounted as files);
    blanks and lines starting with # are ignored."""
    keys = [k.strip() for k in listed.split(",")]
    if file is not None:
        for line in file.read_text().splitlines():
            if not line.strip().startswith("#"):
                keys += [k.strip() for k in line.split(",")]
    return [k for k in keys if k]


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key of `Authorization: Bearer <key>`, else the password of `Authorization: Basic`
    (what Asterisk's WebSocket client sends: any user name, the key as password), else of
    `X-API-Key: <key>`."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            if scheme.lower() == "basic" and (password := _basic_password(token.strip())):
                return password
        elif name == b"x-api-key":
            api_key = value.decode("latin-1").strip() or None
    return api_key


def _basic_password(token: str) -> str | None:
    try:
        decoded = base64.b64decode(token, validate=True).decode()
    except (binascii.Error, ValueError):
        return None
    _user, colon, password = decoded.partition(":")
    return password if colon and password else None


def refuse_open_non_loopback(keys: KeyRing, bind_host: str | None) -> None:
    """With no key configured Callstream serves loopback only: asked to listen on another
    address, it must not start. Raises RuntimeError saying which variables to set."""
    if not keys.enabled and bind_host is not None and not is_loopback(bind_host):
        raise RuntimeError(
            f"Callstream has no API keys configured and will not listen on {bind_host}: "
            f"set {KEY_VARIABLES}, or listen on 127.0.0.1"
        )


@functools.lru_cache(maxsize=4096)
def is_loopback(host: str | None) -> bool:
    """A client on this machine (or a Unix socket, which has no address)."""
    if host is None:
        return True
    return host == "localhost" or _is_loopback_address(host)


def host_is_loopback(host: str | None) -> bool:
    """Whether a `Host` header (or an Origin's authority) names this machine: `localhost`, a
    loopback address (`127.0.0.1`, `[::1]`...), with any port. No Host names nothing."""
    if not host:
        return False
    if host.startswith("["):  # [v6]:port
        name, bracket, _ = host[1:].partition("]")
        return bool(bracket) and _is_loopback_address(name)
    name = host.rpartition(":")[0] if ":" in host else host
    return name.lower() == "localhost" or _is_loopback_address(name)


# Cached: a keyless API asks it twice a request (its peer, its Host), and ipaddress parses in
# Python: 5% of a single packet's API CPU (BENCHMARKS.md, issue 27). Bounded, as a Host header
# is whatever the client writes.
@functools.lru_cache(maxsize=1024)
def _is_loopback_address(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site_write(method: str, origin: str | None, fetch_site: str | None) -> bool:
    """A browser's write from another site (a form or fetch on any web page): what a loopback
    API without keys must refuse, since such a POST needs no preflight. Browsers send
    `Sec-Fetch-Site`, and `Origin` on every cross-origin POST; programs send neither."""
    if method in SAFE_METHODS:
        return False
    if fetch_site is not None and fetch_site.lower() == "cross-site":
        return True
    return origin is not None and not origin_is_loopback(origin)


def origin_is_loopback(origin: str) -> bool:
    """`http://localhost:3000` yes; `https://evil.example` and `null` (a sandboxed page) no."""
    scheme, sep, authority = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and host_is_loopback(authority)


def key_ring(settings: Settings) -> KeyRing:
    """The keys of every role, from the settings (values and files)."""
    s = settings
    return KeyRing(
        {
            Role.INGEST: parse_keys(s.ingest_api_keys.get_secret_value(), s.ingest_api_keys_file),
            Role.SUPERVISOR: parse_keys(
                s.supervisor_api_keys.get_secret_value(), s.supervisor_api_keys_file
            ),
            Role.ADMIN: parse_keys(s.admin_api_keys.get_secret_value(), s.admin_api_keys_file),
        }
    )
