"""service/feeds/signature.py against the AudioHook protocol's published signature example."""

from __future__ import annotations

import base64

import pytest

from service.feeds.signature import BadSignature, verify

# The AudioHook documentation's example (also in purecloudlabs/audiohook-reference-implementation,
# test/httpsignature/signature-verifier.test.ts, "Verify AudioHook documentation example").
SECRET = base64.b64decode("TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=")
TARGET = "/api/v1/voicebiometrics/ws"
CREATED = 1641013200
HEADERS = {
    "host": "audiohook.example.com",
    "audiohook-organization-id": "d7934305-0972-4844-938e-9060eef73d05",
    "audiohook-session-id": "30b0e395-84d3-4570-ac13-9a62d8f514c0",
    "audiohook-correlation-id": "e160e428-53e2-487c-977d-96989bf5c99d",
    "x-api-key": "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh",
    "signature": "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:",
    "signature-input": 'sig1=("@request-target" "@authority" "audiohook-organization-id" '
    '"audiohook-session-id" "audiohook-correlation-id" "x-api-key");'
    'keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";'
    'alg="hmac-sha256";created=1641013200;expires=3282026430',
}


def test_the_published_example_verifies():
    verify(HEADERS, TARGET, SECRET, now=CREATED + 1)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"audiohook-session-id": "30b0e395-84d3-4570-ac13-9a62d8f514c1"}, "does not match"),
        ({"host": "evil.example.com"}, "does not match"),
        ({"x-api-key": "another-key"}, "keyid is not the X-API-KEY"),
        ({"signature": "sig1=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:"}, "does not match"),
        (
            {"signature-input": HEADERS["signature-input"].replace(' "x-api-key"', "")},
            "does not cover x-api-key",
        ),
        (
            {
                "signature-input": HEADERS["signature-input"].replace(
                    'nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";', ""
                )
            },
            "no nonce",
        ),
        ({"signature-input": "sig1=nonsense"}, "cannot be read"),
    ],
)
def test_a_changed_request_is_refused(change: dict[str, str], why: str):
    with pytest.raises(BadSignature, match=why):
        verify(HEADERS | change, TARGET, SECRET, now=CREATED + 1)


def test_another_target_or_secret_is_refused():
    with pytest.raises(BadSignature, match="does not match"):
        verify(HEADERS, "/v1/call/audiohook", SECRET, now=CREATED + 1)
    with pytest.raises(BadSignature, match="does not match"):
        verify(HEADERS, TARGET, b"another secret", now=CREATED + 1)


def test_a_stale_or_future_signature_is_refused():
    with pytest.raises(BadSignature, match="stale"):
        verify(HEADERS, TARGET, SECRET, now=CREATED + 60)
    with pytest.raises(BadSignature, match="in the future"):
        verify(HEADERS, TARGET, SECRET, now=CREATED - 60)


def test_an_unsigned_upgrade_is_refused():
    unsigned = {k: v for k, v in HEADERS.items() if not k.startswith("signature")}
    with pytest.raises(BadSignature, match="not signed"):
        verify(unsigned, TARGET, SECRET, now=CREATED)
