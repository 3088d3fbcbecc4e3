"""Gets a connector's access token with the official Catalyst Python SDK, against the emulator's
Catalyst Cache (X_ZOHO_CATALYST_CONSOLE_URL must be set before the SDK is imported). Configuration
comes from the environment; prints `TOKEN <access token>`. Used by
crates/catalyst-connectors/tests/catalyst.rs."""
import os
import sys

import zcatalyst_sdk


def env(key):
    value = os.environ.get(key)
    if not value:
        sys.exit(f"{key} is not set")
    return value


class Request:
    """The headers a Catalyst function receives."""

    def __init__(self, admin_token):
        self.headers = {
            "x-zc-projectid": env("INTEROP_PROJECT"),
            "x-zc-project-key": "interop",
            "x-zc-project-domain": "interop",
            "x-zc-environment": os.environ.get("INTEROP_ENVIRONMENT", "Development"),
            "x-zc-admin-cred-type": "token",
            "x-zc-admin-cred-token": admin_token,
            "x-zc-user-cred-type": "token",
            "x-zc-user-cred-token": admin_token,
            "x-zc-user-type": "admin",
        }


app = zcatalyst_sdk.initialize(req=Request(env("INTEROP_ADMIN_TOKEN")), scope="admin")
name = env("INTEROP_CONNECTOR")
connection = app.connection({
    name: {
        "client_id": env("INTEROP_CLIENT_ID"),
        "client_secret": env("INTEROP_CLIENT_SECRET"),
        "auth_url": env("INTEROP_TOKEN_URL"),
        "refresh_url": env("INTEROP_TOKEN_URL"),
        "refresh_token": env("INTEROP_REFRESH_TOKEN"),
    }
})
print("TOKEN", connection.get_connector(name).get_access_token())
