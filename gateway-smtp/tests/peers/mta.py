"""A receiving MTA for the outbound tests, on aiosmtpd (Debian's
python3-aiosmtpd): listens on ADDR:PORT, optionally offers (or requires)
STARTTLS, answers RCPT by the local part (nobody@ -> 550, later@ -> 451),
and writes each message to OUT/N.eml with its envelope in OUT/N.json.
Prints READY once it listens; stops on SIGTERM or when stdin closes."""

import argparse
import asyncio
import itertools
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, out):
        self.out = out
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local == "nobody":
            return "550 5.1.1 no such user here"
        if local == "later":
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            n = next(self.counter)
        base = os.path.join(self.out, "%d" % n)
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(base + ".eml.tmp", base + ".eml")
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_to": envelope.rcpt_tos,
            "tls": session.ssl is not None,
        }
        with open(base + ".json", "w") as f:
            json.dump(meta, f)
        return "250 2.0.0 queued as %d" % n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--require-tls", action="store_true")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    kwargs = {}
    if a.cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)
        kwargs["tls_context"] = ctx
        kwargs["require_starttls"] = a.require_tls
    controller = Controller(
        Handler(a.out), hostname=host, port=int(port), decode_data=False, **kwargs
    )
    controller.start()
    print("READY", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
