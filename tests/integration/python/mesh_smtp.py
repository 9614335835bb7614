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
