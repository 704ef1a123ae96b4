"""Schemathesis hooks for icbt-gateway: each request carries the role's real token, and a
fresh DPoP proof (RFC 9449) when the token is DPoP-bound, made with the key
`icbt-gateway dev token` wrote beside it.

Environment: ICBT_TOKEN_FILE, and ICBT_DPOP_KEY_FILE (PKCS#8 DER, P-256) for bound tokens.
"""

import base64
import hashlib
import json
import os
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import schemathesis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


TOKEN = open(os.environ["ICBT_TOKEN_FILE"]).read().strip()
KEY = None
if os.environ.get("ICBT_DPOP_KEY_FILE"):
    with open(os.environ["ICBT_DPOP_KEY_FILE"], "rb") as f:
        KEY = serialization.load_der_private_key(f.read(), password=None)


def dpop_proof(method: str, url: str) -> str:
    numbers = KEY.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}
    parts = urlsplit(url)
    claims = {
        "jti": str(uuid.uuid4()),
        "htm": method,
        "htu": urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
        "iat": int(time.time()),
        "ath": b64url(hashlib.sha256(TOKEN.encode()).digest()),
    }
    encode = lambda value: b64url(json.dumps(value, separators=(",", ":")).encode())
    signing_input = f"{encode(header)}.{encode(claims)}"
    r, s = decode_dss_signature(KEY.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


@schemathesis.auth()
class GatewayAuth:
    """The role's token, and for a DPoP-bound one a proof for this request's method and
    URL. As an auth provider (not a plain hook), schemathesis can also leave it off to
    check that the gateway refuses a request without it."""

    def get(self, case, context):
        return TOKEN

    def set(self, case, data, context):
        if case.headers is None:
            case.headers = {}
        if KEY is None:
            case.headers["Authorization"] = f"Bearer {data}"
            return
        case.headers["Authorization"] = f"DPoP {data}"
        base = os.environ["ICBT_GATEWAY"].rstrip("/")
        case.headers["DPoP"] = dpop_proof(case.method.upper(), base + case.formatted_path)
