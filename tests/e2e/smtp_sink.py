"""A real SMTP server for the end-to-end tests: aiosmtpd on loopback, requiring AUTH with the given login and
password, appending each delivered message to a JSON-lines file as its recipient reads it (From, To,
Subject and the plain-text body, decoded by Python's email package).

usage: smtp_sink.py PORT LOGIN PASSWORD OUTFILE
"""
import email
import email.policy
import json
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, login, password, outfile = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == login
        and auth_data.password.decode() == password
    )
    return AuthResult(success=ok)


class Keep:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        record = {
            "envelope_to": list(envelope.rcpt_tos),
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "body": body.get_content() if body is not None else "",
        }
        with open(outfile, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return "250 OK"


controller = Controller(
    Keep(),
    hostname="127.0.0.1",
    port=port,
    authenticator=authenticator,
    auth_required=True,
    auth_require_tls=False,
)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
