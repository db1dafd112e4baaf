"""The seeded workload: SMTP deliveries and POP3 retrieve-and-delete sessions through
random nodes, each recorded in a history (see checker.py for the shapes)."""
import poplib
import random
import smtplib
import socket
import ssl
import threading
import time

from tools.chordlab.ports import POP3_OFFSET, SMTP_OFFSET

CLIENT_TIMEOUT_S = 12.0
DOMAIN = "example.org"
RING_PORT = 7000  # every node of a scenario, each at its own address
SMTP_PORT, POP3_PORT = RING_PORT + SMTP_OFFSET, RING_PORT + POP3_OFFSET


def tls_context():
    """The nodes use self-signed certificates; the harness checks data, not identity."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


TLS = tls_context()


def pop3_connect(ip, timeout):
    """A POP3 session after STLS (a node refuses plaintext passwords off loopback)."""
    client = poplib.POP3(ip, POP3_PORT, timeout=timeout)
    try:
        client.stls(TLS)
    except BaseException:
        client.sock.close()
        raise
    return client


def account_name(i):
    return f"user{i}@{DOMAIN}"


def password_of(account):
    return "pw-" + account.split("@")[0]


def make_body(rng, token):
    lines = [f"token {token}"]
    for _ in range(rng.randrange(1, 5)):
        lines.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz .,") for _ in range(rng.randrange(0, 70))))
    if rng.random() < 0.3:
        lines.append(".a line that needs dot-stuffing")
    if rng.random() < 0.2:
        lines.append("x" * rng.randrange(200, 990))
    return "\n".join(lines)


class History:
    def __init__(self):
        self.ops = []
        self.lock = threading.Lock()
        self.next_id = 0
        self.start = time.monotonic()

    def now(self):
        return round(time.monotonic() - self.start, 4)

    def new(self, **fields):
        with self.lock:
            op = dict(id=self.next_id, t0=self.now(), **fields)
            self.next_id += 1
            self.ops.append(op)
            return op


class Workload:
    """`clients` threads, each with its own seeded PRNG, until `stop()`."""

    def __init__(self, seed, history, accounts, endpoints, clients=4, pace_s=0.05):
        self.seed = seed
        self.history = history
        self.accounts = accounts
        self.endpoints = endpoints  # callable -> {node index: ip} of current nodes
        self.clients = clients
        self.pace_s = pace_s
        self.stopping = threading.Event()
        self.threads = []
        self.token_lock = threading.Lock()
        self.token_counter = 0
        self.errors = []  # exceptions the client code did not expect (harness bugs)

    def token(self):
        with self.token_lock:
            self.token_counter += 1
            return f"FT-{self.seed}-{self.token_counter}"

    def start(self, phase=0):
        """Starts the client threads; a later `phase` (after `stop()`) continues with
        fresh PRNG streams and the same token counter."""
        self.stopping.clear()
        self.threads = []
        for index in range(self.clients):
            rng = random.Random(self.seed * 1000 + phase * 100 + index)
            thread = threading.Thread(target=self.client, args=(rng,), name=f"client-{index}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=4 * CLIENT_TIMEOUT_S)

    def client(self, rng):
        while not self.stopping.is_set():
            nodes = self.endpoints()
            if not nodes:
                time.sleep(0.2)
                continue
            node = rng.choice(sorted(nodes))
            account = rng.choice(self.accounts)
            try:
                if rng.random() < 0.7:
                    deliver(self.history, rng, node, nodes[node], account, self.token())
                else:
                    pop_session(self.history, rng, node, nodes[node], account)
            except Exception as error:  # noqa: BLE001 - a client bug must not end the client silently
                self.errors.append(f"{type(error).__name__}: {error}")
            time.sleep(rng.uniform(0, 2 * self.pace_s))


def deliver(history, rng, node, ip, account, token):
    body = make_body(rng, token)
    sender = rng.choice(["alice@elsewhere.test", "bob@elsewhere.test"])
    message = (f"From: {sender}\r\nTo: {account}\r\nSubject: {token}\r\n"
               f"Message-ID: <{token}@faults>\r\n\r\n" + body.replace("\n", "\r\n") + "\r\n")
    op = history.new(op="deliver", account=account, token=token, body=body, node=node, outcome=None, detail=None)
    phase = "connect"
    try:
        with smtplib.SMTP(ip, SMTP_PORT, timeout=CLIENT_TIMEOUT_S, local_hostname="faults.test") as smtp:
            phase = "envelope"
            smtp.ehlo()
            code, reply = smtp.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, sender)
            code, reply = smtp.rcpt(account)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({account: (code, reply)})
            phase = "data"
            # smtplib's data() returns the final reply instead of raising on it.
            code, reply = smtp.data(message)
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
            op["outcome"] = "ok"
            phase = "quit"
    except smtplib.SMTPResponseException as error:
        if op["outcome"] != "ok":
            op["outcome"] = "refused"
            op["detail"] = f"{phase}: {error.smtp_code} {error.smtp_error!r}"[:200]
    except smtplib.SMTPRecipientsRefused as error:
        op["outcome"] = "refused"
        op["detail"] = f"{phase}: {error.recipients}"[:200]
    except (OSError, smtplib.SMTPException) as error:
        if op["outcome"] != "ok":
            op["outcome"] = "unknown" if phase == "data" else "refused"
            op["detail"] = f"{phase}: {type(error).__name__} {error}"[:200]
    op["t1"] = history.now()


def pop_session(history, rng, node, ip, account, delete_fraction=None):
    """One session: login, UIDL, RETR all, DELE some, QUIT."""
    op = history.new(op="pop", account=account, node=node, outcome=None, t_login=None, listing=None,
                     retrieved={}, deleted=[], quit=None, t_quit0=None, t_quit1=None, detail=None)
    fraction = rng.choice([0.0, 0.5, 1.0]) if delete_fraction is None else delete_fraction
    client = None
    try:
        client = pop3_connect(ip, CLIENT_TIMEOUT_S)
        client.user(account)
        client.pass_(password_of(account))
        op["t_pass"] = history.now()
        _, lines, _ = client.uidl()
        op["t_login"] = history.now()
        listing = []
        for line in lines:
            number, uidl = line.decode().split()
            listing.append((int(number), uidl))
        op["listing"] = [uidl for _, uidl in listing]
        for number, uidl in listing:
            _, lines, _ = client.retr(number)
            op["retrieved"][uidl] = "\r\n".join(line.decode("utf-8", "replace") for line in lines)
        for number, uidl in listing:
            if rng.random() < fraction:
                client.dele(number)
                op["deleted"].append(uidl)
        op["t_quit0"] = history.now()
        op["quit"] = "unknown"
        client.quit()
        op["quit"] = "ok"
        op["outcome"] = "ok"
    except poplib.error_proto as error:
        # A server's -ERR reply arrives as bytes; poplib raises its own errors as
        # str, and '-ERR EOF' is the connection closing without a reply: then the
        # outcome is unknown (found in soak seed 329: a QUIT whose node was killed
        # before it answered counted as refused, although its deletion took effect).
        server_reply = isinstance(error.args[0], bytes) if error.args else False
        op["outcome"] = "refused" if server_reply else "unknown"
        op["detail"] = str(error)[:200]
        if op["quit"] == "unknown" and server_reply:
            op["quit"] = "refused"
    except (OSError, EOFError, ssl.SSLError) as error:
        op["outcome"] = "unknown"
        op["detail"] = f"{type(error).__name__} {error}"[:200]
    finally:
        if op["t_quit0"] is not None:
            op["t_quit1"] = history.now()
        if client is not None and client.sock is not None:
            try:
                client.sock.close()
            except OSError:
                pass
    op["t1"] = history.now()
    return op


def read_mailbox(ip, account, timeout=CLIENT_TIMEOUT_S):
    """{uidl: text} of a maildrop, without deleting anything; raises on failure."""
    client = pop3_connect(ip, timeout)
    try:
        client.user(account)
        client.pass_(password_of(account))
        _, lines, _ = client.uidl()
        messages = {}
        for line in lines:
            number, uidl = line.decode().split()
            _, body, _ = client.retr(int(number))
            messages[uidl] = "\r\n".join(b.decode("utf-8", "replace") for b in body)
        client.quit()
        return messages
    finally:
        try:
            if client.sock is not None:
                client.sock.close()
        except OSError:
            pass


_ = socket  # socket.timeout is an OSError
