"""The port layout of the nodes started here, and free loopback ports.

A node started by `chordlab.Node` on ring port P listens for SMTP on P + SMTP_OFFSET,
POP3 on P + POP3_OFFSET, IMAP on P + IMAP_OFFSET and the admin API on P + HTTP_OFFSET,
and the launcher passes all four explicitly (`--smtp`, `--pop3`, `--imap`, `--http`), so nothing here depends on the
binary's defaults. Only where the binary picks the ports itself (`chordmail up`, the
seed's verbatim command lines) do the DEFAULT_* offsets below apply.
"""
import random
import socket

SMTP_OFFSET, POP3_OFFSET, IMAP_OFFSET, HTTP_OFFSET = 10_000, 20_000, 9_000, 3_000

# The binary's own defaults (crates/chordmail/src/config.rs), for nodes whose ports
# the binary chooses: `chordmail up` and command lines given verbatim.
DEFAULT_SMTP_OFFSET, DEFAULT_POP3_OFFSET, DEFAULT_IMAP_OFFSET, DEFAULT_HTTP_OFFSET = 10_000, 20_000, 9_000, 3_000

RING_PORT_RANGE = (20_000, 35_000)

_taken = set()


def port_is_free(port, host="127.0.0.1"):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def group(port, offsets=(SMTP_OFFSET, POP3_OFFSET, IMAP_OFFSET, HTTP_OFFSET)):
    """A ring port and its service ports."""
    return [port] + [port + offset for offset in offsets]


def free_ring_port():
    """A ring port whose SMTP, POP3, IMAP and HTTP companions are free too; never the same
    one twice in this process."""
    for _ in range(1000):
        port = random.randrange(*RING_PORT_RANGE)
        if port in _taken or not all(port_is_free(p) for p in group(port)):
            continue
        _taken.add(port)
        return port
    raise RuntimeError("no free group of loopback ports")


def free_port_block(count, offsets=(DEFAULT_SMTP_OFFSET, DEFAULT_POP3_OFFSET, DEFAULT_IMAP_OFFSET, DEFAULT_HTTP_OFFSET)):
    """A base port P with P..P+count-1 and their service ports all free (for
    `chordmail up --base-port P`, which uses the binary's default offsets)."""
    for _ in range(1000):
        base = random.randrange(RING_PORT_RANGE[0], RING_PORT_RANGE[1] - count)
        ports = [p for i in range(count) for p in group(base + i, offsets)]
        if not _taken.intersection(range(base, base + count)) and all(port_is_free(p) for p in ports):
            _taken.update(range(base, base + count))
            return base
    raise RuntimeError("no free block of loopback ports")
