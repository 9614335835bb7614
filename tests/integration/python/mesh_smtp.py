"""aiosmtpd handler for the mesh's tests: a Maildir like aiosmtpd.handlers.Mailbox,
except that a recipient whose local part starts with "reject" is refused with a
permanent 550, so tests can make one address fail for good while others flow."""

from aiosmtpd.handlers import Mailbox


class RejectingMailbox(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().startswith("reject"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"
