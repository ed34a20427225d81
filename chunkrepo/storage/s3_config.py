"""Where and as whom the native S3 client (storage.s3_storage) connects, from the storage
options and the usual AWS sources, read the way botocore reads them; or why it cannot.

    endpoint     endpoint_url or client_kwargs.endpoint_url; $AWS_ENDPOINT_URL_S3,
                 $AWS_ENDPOINT_URL; endpoint_url of the profile in the config file;
                 else AWS itself (https://s3.REGION.amazonaws.com)
    credentials  key/secret/token (or client_kwargs.aws_access_key_id, ...); then, unless a
                 `profile` option names one, $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY/
                 $AWS_SESSION_TOKEN; then the profile (`profile`, $AWS_PROFILE, "default")
                 in ~/.aws/credentials ($AWS_SHARED_CREDENTIALS_FILE), then in ~/.aws/config
                 ($AWS_CONFIG_FILE)
    region       client_kwargs.region_name, $AWS_REGION, $AWS_DEFAULT_REGION, the profile's
                 region, us-east-1
    timeouts     config_kwargs.connect_timeout / read_timeout (seconds; default 60 each)
    https        verified with the system's CAs, or $AWS_CA_BUNDLE / the profile's ca_bundle

Anything else (another option, a profile that assumes a role or runs a credential
process, web identity, no static credentials at all: instance roles and the like,
an HTTP proxy in $HTTP(S)_PROXY for the endpoint) raises Unsupported with the
reason; storage.open then uses s3fs, which knows them all.
The option `client` ("native" or "s3fs") is ours: it chooses, and is never passed on.
"""

import os
from typing import NamedTuple, Optional, Tuple
from urllib.parse import urlsplit

from .sigv4 import Credentials

_OPTIONS = {"key", "secret", "token", "endpoint_url", "profile", "client_kwargs", "config_kwargs", "client"}
_CLIENT_KWARGS = {"endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key",
                  "aws_session_token"}
_CONFIG_KWARGS = {"connect_timeout", "read_timeout"}
# what botocore would use before (or instead of) static keys of a profile
_DYNAMIC_PROFILE = ("role_arn", "credential_process", "sso_session", "sso_start_url", "web_identity_token_file",
                    "services")
_DEFAULT_TIMEOUT = 60.0


class Unsupported(Exception):
    """The native client cannot do what these options or this environment ask for."""


class S3Settings(NamedTuple):
    scheme: str                 # http or https
    host: str                   # host[:port] as the Host header carries it
    bucket: str
    prefix: str                 # "" or "some/folder" (no slashes at either end)
    virtual_host: bool          # bucket in the host name (AWS), else in the path
    region: str
    creds: Credentials
    connect_timeout: float
    read_timeout: float
    ca_bundle: Optional[str] = None     # CA certificates for https (None: the system's)


def split_url(url: str) -> Tuple[str, str]:
    """s3://bucket/some/prefix/ -> ("bucket", "some/prefix")."""
    rest = url.split("://", 1)[1]
    bucket, _, prefix = rest.strip("/").partition("/")
    return bucket, prefix.strip("/")


def resolve(url: str, options: dict, env=os.environ) -> S3Settings:
    """The settings for url, or Unsupported(reason)."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise Unsupported(f"storage option {unknown[0]!r} is not one the native S3 client knows")
    ck = _dict_option(options, "client_kwargs", _CLIENT_KWARGS)
    cfg = _dict_option(options, "config_kwargs", _CONFIG_KWARGS)
    profile_name = options.get("profile") or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    profile = _section(env.get("AWS_CONFIG_FILE", "~/.aws/config"),
                       profile_name if profile_name == "default" else f"profile {profile_name}")
    endpoint = (options.get("endpoint_url") or ck.get("endpoint_url") or env.get("AWS_ENDPOINT_URL_S3")
                or env.get("AWS_ENDPOINT_URL") or profile.get("endpoint_url"))
    region = (ck.get("region_name") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
              or profile.get("region") or "us-east-1")
    creds = _credentials(options, ck, env, profile_name, profile)
    bucket, prefix = split_url(url)
    if endpoint:
        parts = urlsplit(str(endpoint))
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise Unsupported(f"endpoint {endpoint!r} is not http(s)://host[:port]")
        scheme, host, virtual = parts.scheme, parts.netloc, False
    else:
        scheme, virtual = "https", "." not in bucket     # a dotted name fails the certificate
        host = f"{bucket}.s3.{region}.amazonaws.com" if virtual else f"s3.{region}.amazonaws.com"
    proxy = _proxy(scheme, host.rsplit(":", 1)[0], env)
    if proxy:
        raise Unsupported(f"a proxy for {scheme} (${proxy})")
    return S3Settings(scheme, host, bucket, prefix, virtual, region, creds,
                      float(cfg.get("connect_timeout", _DEFAULT_TIMEOUT)),
                      float(cfg.get("read_timeout", _DEFAULT_TIMEOUT)),
                      env.get("AWS_CA_BUNDLE") or profile.get("ca_bundle"))


def _proxy(scheme: str, hostname: str, env) -> Optional[str]:
    """The variable naming a proxy for this scheme and host, if any (as urllib and botocore read it)."""
    name = next((n for n in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY") if env.get(n)), None)
    if name is None:
        return None
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    for entry in filter(None, (e.strip().lstrip(".") for e in no_proxy.split(","))):
        if entry == "*" or hostname == entry or hostname.endswith("." + entry):
            return None
    return name


def _dict_option(options: dict, name: str, known: set) -> dict:
    value = options.get(name) or {}
    if not isinstance(value, dict):
        raise Unsupported(f"storage option {name!r} is not a JSON object")
    unknown = sorted(set(value) - known)
    if unknown:
        raise Unsupported(f"{name}.{unknown[0]} is not one the native S3 client knows")
    return value


def _credentials(options: dict, ck: dict, env, profile_name: str, profile: dict) -> Credentials:
    key = options.get("key") or ck.get("aws_access_key_id")
    secret = options.get("secret") or ck.get("aws_secret_access_key")
    token = options.get("token") or ck.get("aws_session_token")
    if key or secret:
        if not (key and secret):
            raise Unsupported("an access key without a secret key, or the other way round")
        return Credentials(str(key), str(secret), token)
    if not options.get("profile") and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                           env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN"))
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        raise Unsupported("web identity credentials ($AWS_WEB_IDENTITY_TOKEN_FILE)")
    dynamic = [k for k in _DYNAMIC_PROFILE if k in profile]
    if dynamic:
        raise Unsupported(f"profile {profile_name!r} uses {dynamic[0]}")
    for section in (_section(env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), profile_name), profile):
        if section.get("aws_access_key_id") and section.get("aws_secret_access_key"):
            return Credentials(section["aws_access_key_id"], section["aws_secret_access_key"],
                               section.get("aws_session_token") or section.get("aws_security_token"))
    raise Unsupported("no access key in the options, the environment or ~/.aws")


def _section(path: str, name: str) -> dict:
    """One section of an AWS ini file ({} if the file or the section is missing)."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        return {}
    import configparser     # ~2 ms, for those who have the file
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except configparser.Error as e:
        raise Unsupported(f"{path}: {e}") from None
    return dict(parser.items(name)) if parser.has_section(name) else {}
