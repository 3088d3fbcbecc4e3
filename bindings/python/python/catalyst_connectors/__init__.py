"""catalyst-connectors for Python: the Catalyst SDKs' connector API on a Rust core.

    import catalyst_connectors
    app = catalyst_connectors.initialize(req)        # req optional: a Catalyst request's x-zc-* headers
    crm = app.connection({"crm": {...}}).get_connector("crm")
    token = crm.get_access_token()                   # or: await crm.get_access_token_async()

One token request per expiry however many callers (threads, processes and hosts sharing a
store), refreshed in the background before it is due. Errors are ``ConnectorError`` subclasses
with the library's ``code``.
"""

from ._native import (
    AccessTokenInfo,
    App,
    ConfigError,
    Connection,
    Connector,
    ConnectorError,
    MissingRefreshToken,
    ReauthorizationRequired,
    Throttled,
    Transient,
)

__all__ = [
    "AccessTokenInfo",
    "App",
    "ConfigError",
    "Connection",
    "Connector",
    "ConnectorError",
    "MissingRefreshToken",
    "ReauthorizationRequired",
    "Throttled",
    "Transient",
    "initialize",
]


def _catalyst_headers(req):
    """The lower-case ``x-zc-*`` headers of a request (Flask, Django, a WSGI environ, or a dict)."""
    if req is None:
        return None
    headers = getattr(req, "headers", None)
    if headers is None:
        headers = getattr(req, "META", None) or req  # Django, or a mapping
    out = {}
    for name, value in dict(headers).items():
        key = str(name).lower().replace("_", "-")
        if key.startswith("http-x-zc-"):  # a WSGI environ / Django META
            key = key[len("http-"):]
        if key.startswith("x-zc-") and value is not None:
            out[key] = str(value)
    return out


def initialize(req=None):
    """An app, as the Catalyst SDKs' ``initialize(req)``.

    With a Catalyst request, its connections keep tokens in that project's Catalyst Cache (shared
    with its Node and Python functions); without one, in the stores every program on this host
    shares (``$connector`` settings, ``CONNECTOR_STORE``, SQLite by default) — with the
    ``connector`` CLI, its agent and Rust services.
    """
    return App(_catalyst_headers(req))
