#!/usr/bin/env python3
"""A real SMTP server for picloud's tests: aiosmtpd over TCP, AUTH required.

Usage: server.py PORT USER PASSWORD OUTBOX_DIR [--sink]

Each accepted message is written to OUTBOX_DIR/<n>.json as
{"mail_from", "rcpt_tos", "data_b64"} (written to a temporary name, then
renamed, so a reader never sees half a file); with --sink nothing is kept
(benchmarks). Recipients steer failures: a local part starting with
"tempfail" is answered 451, one starting with "reject" 550, and a message to
one starting with "slow" is kept but answered only after 3 s. Wrong credentials get a
535 that echoes them back, as a careless relay might (a client must not log
replies). "ready" is printed once the server listens.
"""
import asyncio
import base64
import itertools
import json
import os
import signal
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def main() -> None:
    port, user, password, outbox = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    sink = "--sink" in sys.argv[5:]
    os.makedirs(outbox, exist_ok=True)
    counter = itertools.count(1)
    lock = threading.Lock()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        if ok:
            return AuthResult(success=True, handled=False)
        echoed = ""
        if isinstance(auth_data, LoginPassword):
            echoed = (auth_data.login + b":" + auth_data.password).decode("utf-8", "replace")
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 Authentication failed for {echoed}")

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            local = address.split("@", 1)[0].lower()
            if local.startswith("tempfail"):
                return "451 4.3.0 Try again later"
            if local.startswith("reject"):
                return "550 5.1.1 No such mailbox"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            if not sink:
                with lock:
                    n = next(counter)
                record = {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": envelope.rcpt_tos,
                    "data_b64": base64.b64encode(envelope.original_content or envelope.content).decode(),
                }
                tmp = os.path.join(outbox, f".{n}.tmp")
                with open(tmp, "w") as f:
                    json.dump(record, f)
                os.rename(tmp, os.path.join(outbox, f"{n}.json"))
            # Kept, then slow to say so (a relay scanning what it queued).
            if any(r.split("@", 1)[0].lower().startswith("slow") for r in envelope.rcpt_tos):
                await asyncio.sleep(3)
            return "250 2.0.0 Message accepted"

    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
        data_size_limit=64 * 1024 * 1024,
    )
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
