#!/usr/bin/env python3
"""Signs a body with the Standard Webhooks reference library (PyPI
`standardwebhooks`), for picloud's inbound email tests.

Usage: sign.py SECRET MSG_ID UNIX_TIMESTAMP < body   → prints the webhook-signature value
"""
import datetime
import sys

from standardwebhooks.webhooks import Webhook

secret, msg_id, timestamp = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = sys.stdin.buffer.read().decode("utf-8")
at = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
print(Webhook(secret).sign(msg_id, at, body))
