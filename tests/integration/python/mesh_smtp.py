"""aiosmtpd handler for the mesh's tests: a Maildir like aiosmtpd.handlers.Mailbox,
except that
- a recipient whose local part starts with "reject" is refused with a permanent 550,
  so tests can make one address fail for good while others flow;
- while the file named by MESH_SMTP_HOLD_FILE exists, every mail is held at DATA: the
  client waits for the server's reply, so tests can have mails in flight on purpose.
  A held mail is logged "HOLDING <Message-ID>"; one whose client disconnected before
  the hold ended (never accepted) is logged "LOST <Message-ID>"."""

import asyncio
import email.parser
import os

from aiosmtpd.handlers import Mailbox


def _message_id(envelope):
    headers = email.parser.BytesHeaderParser().parsebytes(envelope.original_content or b"")
    return (headers.get("Message-ID") or "?").strip()


class RejectingMailbox(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().startswith("reject"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        hold = os.environ.get("MESH_SMTP_HOLD_FILE")
        if hold and os.path.exists(hold):
            message_id = _message_id(envelope)
            print("HOLDING %s" % message_id, flush=True)
            try:
                while os.path.exists(hold):
                    await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                print("LOST %s" % message_id, flush=True)
                raise
        return await super().handle_DATA(server, session, envelope)


def _serve_tls():
    """`python3 -m mesh_smtp HOST PORT MAILDIR`: the same mailbox behind STARTTLS and
    AUTH, both required (certificate, key and credentials from MESH_SMTP_TLS_CERT,
    MESH_SMTP_TLS_KEY, MESH_SMTP_USER, MESH_SMTP_PASSWORD). A login is logged
    "AUTH OK <user>" or "AUTH FAILED <user>"; a mail, "DATA over TLS" when it came over
    TLS."""
    import ssl
    import sys

    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    host, port, maildir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(os.environ["MESH_SMTP_TLS_CERT"], os.environ["MESH_SMTP_TLS_KEY"])
    user = os.environ["MESH_SMTP_USER"].encode()
    password = os.environ["MESH_SMTP_PASSWORD"].encode()

    def authenticator(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = auth_data.login == user and auth_data.password == password
        print("AUTH %s %s" % ("OK" if ok else "FAILED", auth_data.login.decode(errors="replace")), flush=True)
        return AuthResult(success=ok)

    class TlsMailbox(RejectingMailbox):
        async def handle_DATA(self, server, session, envelope):
            if session.ssl is not None:
                print("DATA over TLS", flush=True)
            return await super().handle_DATA(server, session, envelope)

    handler = TlsMailbox(maildir)

    def factory():
        return SMTP(
            handler,
            hostname="localhost",
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=authenticator,
        )

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(factory, host, port))
    print("serving STARTTLS on %s:%d" % (host, port), flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    _serve_tls()
