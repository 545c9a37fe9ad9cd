"""HTTP message signatures as Genesys AudioHook signs its WebSocket upgrade: hmac-sha256 over the
components `@request-target`, `@authority`, `audiohook-organization-id`, `audiohook-session-id`,
`audiohook-correlation-id` and `x-api-key`, keyed by the integration's client secret
(draft-ietf-httpbis-message-signatures, as the AudioHook protocol and its reference
implementation apply it: the `keyid` is the API key, a `nonce` is required, and the signature must
be fresh: `created` at most MAX_AGE_S old, and neither in the future nor expired beyond
CLOCK_SKEW_S).

Only what AudioHook sends is parsed: `Signature-Input: label=("c1" "c2" ...);name=value...` with
string or integer parameters, `Signature: label=:base64:`. The signature base is rebuilt from the
parsed fields, so a signer's padding cannot smuggle anything in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

REQUIRED = (
    "@request-target",
    "@authority",
    "audiohook-organization-id",
    "audiohook-session-id",
    "audiohook-correlation-id",
    "x-api-key",
)
MAX_AGE_S = 10  # what the reference implementation accepts
CLOCK_SKEW_S = 3
MIN_NONCE = 22  # characters: 128 bits of base64

_INPUT = re.compile(
    r'\s*([a-z*][a-z0-9_.*-]*)=\(((?:\s*"[^"\\]*")*)\s*\)'
    r'((?:;[a-z*][a-z0-9_.*-]*=(?:"[^"\\]*"|-?\d{1,15}))*)'
)
_COMPONENT = re.compile(r'"([^"\\]*)"')
_PARAMETER = re.compile(r';([a-z*][a-z0-9_.*-]*)=("[^"\\]*"|-?\d{1,15})')
_SIGNATURE = re.compile(r"\s*([a-z*][a-z0-9_.*-]*)=:([A-Za-z0-9+/=]*):\s*")


class BadSignature(Exception):
    """Why a signed upgrade is refused (401): said without telling the secret."""


@dataclass(frozen=True, slots=True)
class SignatureInput:
    label: str
    components: tuple[str, ...]
    parameters: tuple[tuple[str, str | int], ...]  # in the order given

    def parameter(self, name: str) -> str | int | None:
        return next((value for key, value in self.parameters if key == name), None)

    def serialized(self) -> str:
        """The inner list as `@signature-params` holds it."""
        listed = " ".join(f'"{c}"' for c in self.components)
        params = "".join(
            f';{k}="{v}"' if isinstance(v, str) else f";{k}={v}" for k, v in self.parameters
        )
        return f"({listed}){params}"


def parse_input(header: str) -> SignatureInput:
    """The first signature of a `Signature-Input` header."""
    match = _INPUT.match(header)
    rest = header[match.end() :].strip() if match is not None else ""
    if match is None or (rest and not rest.startswith(",")):
        raise BadSignature("the Signature-Input header cannot be read")
    label, listed, params = match.groups()
    parameters: list[tuple[str, str | int]] = []
    for name, value in _PARAMETER.findall(params):
        parameters.append((name, value[1:-1] if value.startswith('"') else int(value)))
    return SignatureInput(label, tuple(_COMPONENT.findall(listed)), tuple(parameters))


def parse_signature(header: str, label: str) -> bytes:
    for member in header.split(","):
        match = _SIGNATURE.fullmatch(member)
        if match is not None and match.group(1) == label:
            try:
                return base64.b64decode(match.group(2), validate=True)
            except (binascii.Error, ValueError):
                break
    raise BadSignature(f"the Signature header has no signature {label!r}")


def signature_base(signed: SignatureInput, component: Callable[[str], str | None]) -> str:
    lines = []
    for name in signed.components:
        value = component(name)
        if value is None:
            raise BadSignature(f"the signed component {name!r} is not in the request")
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {signed.serialized()}')
    return "\n".join(lines)


def check_parameters(signed: SignatureInput, api_key: str | None, now: float) -> None:
    """What AudioHook's signature must say beyond matching: its components, algorithm, nonce,
    key id, and that it is fresh."""
    missing = [name for name in REQUIRED if name not in signed.components]
    if missing:
        raise BadSignature(f"the signature does not cover {', '.join(missing)}")
    if signed.parameter("alg") not in (None, "hmac-sha256"):
        raise BadSignature("the signature's algorithm is not hmac-sha256")
    nonce = signed.parameter("nonce")
    if not isinstance(nonce, str) or len(nonce) < MIN_NONCE:
        raise BadSignature(f"the signature has no nonce of {MIN_NONCE} characters or more")
    if signed.parameter("keyid") != api_key:
        raise BadSignature("the signature's keyid is not the X-API-KEY")
    created, expires = signed.parameter("created"), signed.parameter("expires")
    if not isinstance(created, int) or created > now + CLOCK_SKEW_S:
        raise BadSignature("the signature's created time is missing or in the future")
    if created + MAX_AGE_S < now - CLOCK_SKEW_S or (
        isinstance(expires, int) and expires < now - CLOCK_SKEW_S
    ):
        raise BadSignature(f"the signature is stale (more than {MAX_AGE_S} s old, or expired)")


def verify(headers: Mapping[str, str], request_target: str, secret: bytes, now: float) -> None:
    """Raise BadSignature unless the upgrade's signature is AudioHook's, by `secret`, and
    fresh. `headers`: names lowercase, values as received."""
    if "signature-input" not in headers or "signature" not in headers:
        raise BadSignature("the upgrade is not signed (Signature, Signature-Input)")
    signed = parse_input(headers["signature-input"])
    check_parameters(signed, headers.get("x-api-key"), now)

    def component(name: str) -> str | None:
        if name == "@request-target":
            return request_target
        if name == "@authority":
            host = headers.get("host")
            return host.strip().lower() if host else None
        value = headers.get(name)
        return value.strip() if value is not None else None

    base = signature_base(signed, component)
    expected = hmac.new(secret, base.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, parse_signature(headers["signature"], signed.label)):
        raise BadSignature("the signature does not match")
