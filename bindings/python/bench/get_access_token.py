"""A cached get_access_token(): ours against the official zcatalyst-sdk 1.4.0 connector's
(interop/python/venv), side by side in one run, alternating rounds. Both hold a valid token in
memory. Prints ns per call, median of rounds.

    pip install ./bindings/python     # then, with interop/python/venv's site-packages on the path:
    python bindings/python/bench/get_access_token.py
"""

import glob
import os
import pathlib
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve()
ROOT = HERE.parents[3]
sys.path.insert(0, str(HERE.parents[1] / "tests"))
sys.path.extend(glob.glob(str(ROOT / "interop/python/venv/lib/python3*/site-packages")))

import catalyst_connectors  # noqa: E402
import zcatalyst_sdk  # noqa: E402
from conftest import Emulator  # noqa: E402

CALLS = 1_000_000
ROUNDS = 7


def per_call(get):
    start = time.perf_counter_ns()
    for _ in range(CALLS):
        get()
    return (time.perf_counter_ns() - start) / CALLS


class Request:
    headers = {"x-zc-projectid": "1", "x-zc-project-key": "k", "x-zc-project-domain": "d",
               "x-zc-environment": "Development", "x-zc-admin-cred-type": "token",
               "x-zc-admin-cred-token": "t", "x-zc-user-cred-type": "token",
               "x-zc-user-cred-token": "t", "x-zc-user-type": "admin"}


def main():
    emulator = Emulator()
    os.environ["CONNECTOR_STORE"] = f"sqlite:{tempfile.mkdtemp()}/tokens.db"
    try:
        ours = catalyst_connectors.initialize().connection(emulator.config(emulator.refresh_token())).get_connector("crm")
        token = ours.get_access_token()
        theirs = zcatalyst_sdk.initialize(req=Request(), scope="admin").connection(
            emulator.config("unused")).get_connector("crm")
        theirs.access_token = token
        theirs._expires_at = int(time.time() * 1000) + 3_600_000
        a, b = [], []
        for _ in range(ROUNDS):
            a.append(per_call(ours.get_access_token))
            b.append(per_call(theirs.get_access_token))
        print(f"cached get_access_token(), {CALLS} calls per round, {ROUNDS} rounds (median ns/call):")
        print(f"  catalyst-connectors  {statistics.median(a):.0f} ns   (rounds: {' '.join(f'{x:.0f}' for x in a)})")
        print(f"  zcatalyst-sdk 1.4.0  {statistics.median(b):.0f} ns   (rounds: {' '.join(f'{x:.0f}' for x in b)})")
    finally:
        emulator.process.kill()


if __name__ == "__main__":
    main()
