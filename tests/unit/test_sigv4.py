"""storage.sigv4 against AWS's published example and against botocore's signer."""

import hashlib

import pytest

from chunkrepo.storage.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Credentials, canonical_query, sign, uri_encode

AWS_EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
T0 = 1369353600.0           # 2013-05-24T00:00:00Z


def test_aws_documented_get_object_example():
    """AWS's SigV4 documentation, "GET Object" (examplebucket, test.txt, Range bytes=0-9)."""
    h = sign("GET", "/test.txt", [], {"Host": "examplebucket.s3.amazonaws.com", "Range": "bytes=0-9"},
             EMPTY_SHA256, AWS_EXAMPLE, "us-east-1", now=T0)
    assert h["x-amz-date"] == "20130524T000000Z"
    assert h["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


CASES = [
    ("GET", "/bucket/repo/packs/ab/ab01", [], {"range": "bytes=100-199"}, b"", False, None),
    ("PUT", "/bucket/repo/lock", [], {"if-none-match": "*", "content-length": "4"}, b"mine", False, "tok/en+="),
    ("PUT", "/bucket/repo/packs/cd/cd02", [], {"content-length": "3"}, b"abc", True, None),
    ("GET", "/bucket", [("list-type", "2"), ("prefix", "repo/packs/"), ("continuation-token", "1/a+b=c d")],
     {}, b"", False, None),
    ("HEAD", "/bucket/" + uri_encode("dir/a b+c~(x)*ü.txt"), [], {}, b"", False, None),
    ("DELETE", "/bucket/repo/backups/x", [], {}, b"", False, None),
]


@pytest.mark.parametrize("method,path,query,headers,body,unsigned,token", CASES)
def test_same_signature_as_botocore(monkeypatch, method, path, query, headers, body, unsigned, token):
    auth_mod = pytest.importorskip("botocore.auth")
    import datetime

    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials as BotoCredentials

    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    host = "127.0.0.1:7480"
    url = f"http://{host}{path}" + (f"?{canonical_query(query)}" if query else "")
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    req.context["client_config"] = Config(s3={"payload_signing_enabled": not unsigned})
    monkeypatch.setattr(auth_mod, "get_current_datetime",
                        lambda: datetime.datetime(2026, 11, 21, 22, 30, 5))
    auth_mod.S3SigV4Auth(BotoCredentials(creds.key, creds.secret, token), "s3", "eu-central-1").add_auth(req)

    payload = UNSIGNED_PAYLOAD if unsigned else hashlib.sha256(body).hexdigest()
    ours = sign(method, path, query, dict(headers, host=host), payload, creds, "eu-central-1",
                now=datetime.datetime(2026, 11, 21, 22, 30, 5, tzinfo=datetime.timezone.utc).timestamp())
    assert ours["x-amz-content-sha256"] == req.headers["X-Amz-Content-SHA256"]
    assert ours.get("x-amz-security-token") == req.headers.get("X-Amz-Security-Token")
    assert ours["Authorization"] == req.headers["Authorization"]
