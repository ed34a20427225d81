"""AWS Signature Version 4 for S3 requests, with hashlib and hmac only.

The signature covers the method, the path, the query, the headers given (the
caller passes those it sends: host, range, if-none-match, content-length) and the
`x-amz-*` headers added here, among them `x-amz-content-sha256`: the SHA-256 of
the body in hex, or UNSIGNED-PAYLOAD.

    headers = sign("GET", "/bucket/key", [], {"host": "h:9000"}, EMPTY_SHA256, creds, "us-east-1")
"""

import hashlib
import hmac
import time
from typing import List, NamedTuple, Optional, Tuple
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class Credentials(NamedTuple):
    key: str
    secret: str
    token: Optional[str] = None


def uri_encode(s: str, safe: str = "/") -> str:
    """RFC 3986 encoding as SigV4 wants it: everything but A-Z a-z 0-9 - . _ ~ (and `safe`)."""
    return quote(s, safe=safe)


def canonical_query(query: List[Tuple[str, str]]) -> str:
    """name=value pairs, encoded, sorted (as the signature and the request line both want them)."""
    return "&".join(f"{k}={v}" for k, v in sorted((uri_encode(k, ""), uri_encode(v, "")) for k, v in query))


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


_keys: dict = {}      # (secret, date, region, service) -> signing key; one per day and region


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = _keys.get((secret, date, region, service))
    if k is None:
        k = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), date), region), service), "aws4_request")
        _keys[(secret, date, region, service)] = k
    return k


def sign(method: str, path: str, query: List[Tuple[str, str]], headers: dict, payload_hash: str,
         creds: Credentials, region: str, service: str = "s3", now: Optional[float] = None) -> dict:
    """The headers to add to a request so that S3 accepts it (x-amz-date, x-amz-content-sha256,
    x-amz-security-token with a session token, Authorization).

    path: the request path, already URI-encoded (as it goes on the wire); query: the
    (name, value) pairs unencoded; headers: those sent, `host` among them."""
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    added = {"x-amz-date": amz_date, "x-amz-content-sha256": payload_hash}
    if creds.token:
        added["x-amz-security-token"] = creds.token
    signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed.update(added)
    names = sorted(signed)
    canonical = "\n".join([
        method,
        path,
        canonical_query(query),
        "".join(f"{n}:{signed[n]}\n" for n in names),
        ";".join(names),
        payload_hash,
    ])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(_signing_key(creds.secret, amz_date[:8], region, service), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    added["Authorization"] = (f"{ALGORITHM} Credential={creds.key}/{scope}, "
                              f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return added
