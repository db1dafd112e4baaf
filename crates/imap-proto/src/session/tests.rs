//! Whole sessions against a fake store, as transcripts: each test feeds client
//! lines and compares the server's octets, and the byte-split test checks that
//! any chunking of the input gives the same transcript.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::limits::{IMAP_BODIES_PER_STEP_MAX, IMAP_LINE_BYTES_MAX, IMAP_LITERAL_BYTES_MAX};
use crate::selected::Entry;

const PLAIN: &str = "Subject: one\r\nFrom: Ann <ann@example.org>\r\nTo: bob@example.org\r\nMessage-ID: <1@x>\r\n\r\nhello\r\n";
const MULTIPART: &str = "Subject: two\r\nFrom: carl@example.org\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b--\r\n";

#[derive(Clone)]
struct StoredMessage {
    uid: u32,
    flags: Vec<String>,
    body: Vec<u8>,
    internal_date_s: i64,
}

#[derive(Clone)]
struct FakeFolder {
    uid_validity: u32,
    uid_next: u32,
    subscribed: bool,
    messages: BTreeMap<u32, StoredMessage>,
}

/// Message ids are (folder index, uid) pairs packed in a u64.
type FakeId = u64;

struct FakeStore {
    folders: BTreeMap<String, FakeFolder>,
    fail_next: Option<Failure>,
}

impl FakeStore {
    fn new() -> FakeStore {
        let mut inbox = FakeFolder {
            uid_validity: 7,
            uid_next: 1,
            subscribed: true,
            messages: BTreeMap::new(),
        };
        for (body, flags) in [
            (PLAIN, vec![]),
            (MULTIPART, vec!["\\Seen".to_owned()]),
            (PLAIN, vec!["$junk".to_owned()]),
        ] {
            let uid = inbox.uid_next;
            inbox.uid_next += 1;
            inbox.messages.insert(
                uid,
                StoredMessage {
                    uid,
                    flags,
                    body: body.as_bytes().to_vec(),
                    internal_date_s: 1_700_000_000 + i64::from(uid) * 86_400,
                },
            );
        }
        let sent = FakeFolder {
            uid_validity: 8,
            uid_next: 1,
            subscribed: true,
            messages: BTreeMap::new(),
        };
        FakeStore {
            folders: BTreeMap::from([("INBOX".to_owned(), inbox), ("Sent".to_owned(), sent)]),
            fail_next: None,
        }
    }

    fn folder_key(&self, name: &str) -> usize {
        self.folders.keys().position(|key| key == name).unwrap()
    }

    fn id(&self, folder: &str, uid: u32) -> FakeId {
        (self.folder_key(folder) as u64) << 32 | u64::from(uid)
    }

    fn find(&mut self, id: FakeId) -> Option<&mut StoredMessage> {
        let folder = self.folders.values_mut().nth((id >> 32) as usize)?;
        folder.messages.get_mut(&(id as u32))
    }

    fn snapshot(&self, name: &str) -> Snapshot<FakeId> {
        let folder = &self.folders[name];
        Snapshot {
            uid_validity: folder.uid_validity,
            uid_next: folder.uid_next,
            messages: folder
                .messages
                .values()
                .map(|message| Entry {
                    uid: message.uid,
                    id: self.id(name, message.uid),
                    flags: message.flags.clone(),
                    size: message.body.len() as u64,
                    internal_date_s: message.internal_date_s,
                })
                .collect(),
            keywords: vec!["$junk".to_owned()],
        }
    }

    fn deliver(&mut self, name: &str, body: &[u8]) -> u32 {
        let folder = self.folders.get_mut(name).unwrap();
        let uid = folder.uid_next;
        folder.uid_next += 1;
        folder.messages.insert(
            uid,
            StoredMessage {
                uid,
                flags: Vec::new(),
                body: body.to_vec(),
                internal_date_s: 1_800_000_000,
            },
        );
        uid
    }

    fn carry_out(&mut self, request: Request<FakeId>) -> Answer<FakeId> {
        if let Some(failure) = self.fail_next.take() {
            return match request {
                Request::Login { .. } => Answer::Login(Err(LoginFailure::Unavailable)),
                Request::Snapshot { .. } => Answer::Snapshot(Err(failure)),
                Request::ListFolders => Answer::Folders(Err(failure)),
                Request::Status { .. } => Answer::Status(Err(failure)),
                Request::Append { .. } => Answer::Appended(Err(failure)),
                Request::Bodies { ids } => Answer::Bodies(vec![None; ids.len()]),
                Request::Copy { .. } => Answer::Copied(Err(failure)),
                _ => Answer::Done(Err(failure)),
            };
        }
        match request {
            Request::Login { user, password } => {
                Answer::Login(if user == "alice" && password.0 == b"right" {
                    Ok(())
                } else {
                    Err(LoginFailure::BadCredentials)
                })
            }
            Request::Snapshot { folder } => {
                Answer::Snapshot(if self.folders.contains_key(&folder) {
                    Ok(self.snapshot(&folder))
                } else {
                    Err(Failure::NonExistent)
                })
            }
            Request::ListFolders => Answer::Folders(Ok(self
                .folders
                .iter()
                .map(|(name, folder)| FolderInfo {
                    name: name.clone(),
                    subscribed: folder.subscribed,
                    special_use: (name == "Sent").then(|| "\\Sent".to_owned()),
                })
                .collect())),
            Request::Status { folder } => Answer::Status(match self.folders.get(&folder) {
                Some(stored) => Ok(FolderStatus {
                    n_messages: stored.messages.len() as u32,
                    uid_next: stored.uid_next,
                    uid_validity: stored.uid_validity,
                    n_unseen: stored
                        .messages
                        .values()
                        .filter(|m| !m.flags.contains(&"\\Seen".to_owned()))
                        .count() as u32,
                    n_deleted: 0,
                }),
                None => Err(Failure::NonExistent),
            }),
            Request::Create { folder } => Answer::Done(match self.folders.entry(folder) {
                std::collections::btree_map::Entry::Occupied(_) => Err(Failure::AlreadyExists),
                std::collections::btree_map::Entry::Vacant(vacant) => {
                    vacant.insert(FakeFolder {
                        uid_validity: 9,
                        uid_next: 1,
                        subscribed: false,
                        messages: BTreeMap::new(),
                    });
                    Ok(())
                }
            }),
            Request::Delete { folder } => Answer::Done(if folder == "INBOX" {
                Err(Failure::Cannot)
            } else {
                self.folders
                    .remove(&folder)
                    .map(|_| ())
                    .ok_or(Failure::NonExistent)
            }),
            Request::Rename { from, to } => Answer::Done(match self.folders.remove(&from) {
                Some(stored) => {
                    self.folders.insert(to, stored);
                    Ok(())
                }
                None => Err(Failure::NonExistent),
            }),
            Request::Subscribe { folder, subscribed } => {
                Answer::Done(match self.folders.get_mut(&folder) {
                    Some(stored) => {
                        stored.subscribed = subscribed;
                        Ok(())
                    }
                    None => Err(Failure::NonExistent),
                })
            }
            Request::Append {
                folder,
                flags,
                message,
                ..
            } => Answer::Appended(if self.folders.contains_key(&folder) {
                let uid = self.deliver(&folder, &message);
                let stored = self.folders.get_mut(&folder).unwrap();
                stored.messages.get_mut(&uid).unwrap().flags = flags;
                Ok((stored.uid_validity, uid))
            } else {
                Err(Failure::NonExistent)
            }),
            Request::Bodies { ids } => Answer::Bodies(
                ids.into_iter()
                    .map(|id| self.find(id).map(|m| m.body.clone()))
                    .collect(),
            ),
            Request::Store { changes } => {
                for change in changes {
                    let message = self.find(change.id).unwrap();
                    message.flags.retain(|flag| !change.remove.contains(flag));
                    message.flags.extend(change.add);
                }
                Answer::Done(Ok(()))
            }
            Request::Expunge { folder, ids } => {
                for id in ids {
                    self.folders
                        .get_mut(&folder)
                        .unwrap()
                        .messages
                        .remove(&(id as u32));
                }
                Answer::Done(Ok(()))
            }
            Request::Copy {
                from,
                to,
                ids,
                remove_source,
            } => {
                if !self.folders.contains_key(&to) {
                    return Answer::Copied(Err(Failure::NonExistent));
                }
                let mut new_uids = Vec::new();
                for id in ids {
                    let body = self.find(id).unwrap().body.clone();
                    new_uids.push(self.deliver(&to, &body));
                    if remove_source {
                        self.folders
                            .get_mut(&from)
                            .unwrap()
                            .messages
                            .remove(&(id as u32));
                    }
                }
                Answer::Copied(Ok((self.folders[&to].uid_validity, new_uids)))
            }
        }
    }
}

/// Runs a session against the fake store the way the shell will.
struct Driver {
    session: Session<FakeId>,
    store: FakeStore,
    closed: bool,
    idling: bool,
    n_requests: usize,
}

impl Driver {
    fn new(config: SessionConfig) -> Driver {
        Driver {
            session: Session::new(config),
            store: FakeStore::new(),
            closed: false,
            idling: false,
            n_requests: 0,
        }
    }

    fn loopback() -> Driver {
        Driver::new(SessionConfig {
            plaintext_allowed: true,
            tls_available: true,
        })
    }

    fn logged_in() -> Driver {
        let mut driver = Driver::loopback();
        assert!(
            driver
                .send(b"a LOGIN alice right\r\n")
                .starts_with("a OK [CAPABILITY")
        );
        driver
    }

    fn selected() -> Driver {
        let mut driver = Driver::logged_in();
        assert!(
            driver
                .send(b"s SELECT INBOX\r\n")
                .ends_with("s OK [READ-WRITE] SELECT completed\r\n")
        );
        driver
    }

    /// Carries out a step and every request that follows from it.
    fn run(&mut self, mut step: Step<FakeId>, wire: &mut Vec<u8>) -> bool {
        loop {
            wire.extend_from_slice(&step.output);
            match step.action {
                Action::Read => {
                    self.idling = false;
                    return false;
                }
                Action::Idle => {
                    self.idling = true;
                    return false;
                }
                Action::Close => {
                    self.closed = true;
                    return false;
                }
                Action::StartTls => {
                    self.session.tls_started();
                    return true;
                }
                Action::Request(request) => {
                    self.n_requests += 1;
                    step = self.session.answer(self.store.carry_out(request));
                }
            }
        }
    }

    fn send(&mut self, mut input: &[u8]) -> String {
        let mut wire = Vec::new();
        while !input.is_empty() && !self.closed {
            let (n_consumed, step) = self.session.feed(input);
            assert!(n_consumed > 0 || step.is_some(), "no progress");
            input = &input[n_consumed..];
            if let Some(step) = step
                && self.run(step, &mut wire)
            {
                // STARTTLS: bytes read before the handshake are dropped.
                input = &[];
            }
        }
        String::from_utf8_lossy(&wire).into_owned()
    }

    fn poll(&mut self) -> String {
        let mut wire = Vec::new();
        let step = self.session.idle_poll();
        self.run(step, &mut wire);
        String::from_utf8_lossy(&wire).into_owned()
    }
}

/// Runs `(input, output)` pairs in order on one session.
fn transcript(driver: &mut Driver, table: &[(&str, &str)]) {
    for (input, output) in table {
        assert_eq!(driver.send(input.as_bytes()), *output, "after {input:?}");
    }
}

#[test]
fn greeting_and_capabilities_depend_on_tls_and_state() {
    let driver = Driver::loopback();
    assert_eq!(
        String::from_utf8(driver.session.greeting()).unwrap(),
        "* OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE CHILDREN SASL-IR STARTTLS AUTH=PLAIN] chordmail IMAP4rev2 server ready\r\n"
    );
    let mut driver = Driver::new(SessionConfig {
        plaintext_allowed: false,
        tls_available: true,
    });
    transcript(
        &mut driver,
        &[
            (
                "c CAPABILITY\r\n",
                "* CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE CHILDREN SASL-IR STARTTLS LOGINDISABLED\r\nc OK CAPABILITY completed\r\n",
            ),
            (
                "l LOGIN alice right\r\n",
                "l NO [PRIVACYREQUIRED] plaintext authentication is refused on this connection, use STARTTLS first\r\n",
            ),
            (
                "l AUTHENTICATE PLAIN AGFsaWNlAHJpZ2h0\r\n",
                "l NO [PRIVACYREQUIRED] plaintext authentication is refused on this connection, use STARTTLS first\r\n",
            ),
            // Bytes pipelined behind STARTTLS are dropped, not run after the handshake.
            (
                "t STARTTLS\r\nx LOGIN alice right\r\n",
                "t OK begin TLS negotiation now\r\n",
            ),
            (
                "c CAPABILITY\r\n",
                "* CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE CHILDREN SASL-IR AUTH=PLAIN\r\nc OK CAPABILITY completed\r\n",
            ),
            ("t STARTTLS\r\n", "t BAD TLS is not available\r\n"),
            (
                "l LOGIN alice right\r\n",
                "l OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE CHILDREN SASL-IR] logged in\r\n",
            ),
        ],
    );
    assert!(driver.session.is_tls_active());
}

#[test]
fn logins_and_their_failures() {
    let mut driver = Driver::loopback();
    transcript(
        &mut driver,
        &[
            (
                "a LOGIN alice wrong\r\n",
                "a NO [AUTHENTICATIONFAILED] invalid user name or password\r\n",
            ),
            (
                "b SELECT INBOX\r\n",
                "b BAD command is not valid in this state\r\n",
            ),
            (
                "c AUTHENTICATE CRAM-MD5\r\n",
                "c BAD unsupported authentication mechanism\r\n",
            ),
            ("d AUTHENTICATE PLAIN\r\n", "+ \r\n"),
            ("*\r\n", "d BAD authentication cancelled\r\n"),
            ("e AUTHENTICATE PLAIN\r\n", "+ \r\n"),
            ("!!!\r\n", "e BAD malformed authentication data\r\n"),
            ("f AUTHENTICATE PLAIN\r\n", "+ \r\n"),
            // base64("\0alice\0right")
            (
                "AGFsaWNlAHJpZ2h0\r\n",
                "f OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE CHILDREN SASL-IR] logged in\r\n",
            ),
            (
                "g LOGIN alice right\r\n",
                "g BAD command is not valid in this state\r\n",
            ),
        ],
    );
    // A password as a literal, with the continuation request.
    let mut driver = Driver::loopback();
    transcript(
        &mut driver,
        &[
            ("a LOGIN alice {5}\r\n", "+ Ready for literal data\r\n"),
            (
                "right\r\n",
                "a OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE CHILDREN SASL-IR] logged in\r\n",
            ),
        ],
    );
    // Failed logins are bounded; the store being away is not the password's fault
    // but still counts.
    let mut driver = Driver::loopback();
    driver.store.fail_next = Some(Failure::Unavailable);
    assert_eq!(
        driver.send(b"a LOGIN alice right\r\n"),
        "a NO [UNAVAILABLE] try again later\r\n"
    );
    for _ in 2..IMAP_LOGIN_FAILURES_MAX {
        driver.send(b"a LOGIN alice wrong\r\n");
        assert!(!driver.closed);
    }
    assert_eq!(
        driver.send(b"a LOGIN alice wrong\r\n"),
        "a NO [AUTHENTICATIONFAILED] invalid user name or password\r\n* BYE too many failed logins\r\n"
    );
    assert!(driver.closed);
}

#[test]
fn folders_are_listed_created_renamed_and_deleted() {
    let mut driver = Driver::logged_in();
    transcript(
        &mut driver,
        &[
            (
                "n NAMESPACE\r\n",
                "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\nn OK NAMESPACE completed\r\n",
            ),
            (
                "i ID (\"name\" \"imaplib\")\r\n",
                "* ID (\"name\" \"chordmail\")\r\ni OK ID completed\r\n",
            ),
            (
                "e ENABLE IMAP4rev2 CONDSTORE\r\n",
                "* ENABLED IMAP4rev2\r\ne OK ENABLE completed\r\n",
            ),
            (
                "l LIST \"\" \"\"\r\n",
                "* LIST (\\Noselect) \"/\" \"\"\r\nl OK LIST completed\r\n",
            ),
            (
                "l LIST \"\" *\r\n",
                "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"INBOX\"\r\n* LIST (\\HasNoChildren \\Subscribed \\Sent) \"/\" \"Sent\"\r\nl OK LIST completed\r\n",
            ),
            ("c CREATE Work/2026\r\n", "c OK CREATE completed\r\n"),
            (
                "c CREATE Work/2026\r\n",
                "c NO [ALREADYEXISTS] CREATE failed: folder already exists\r\n",
            ),
            ("c CREATE Work\r\n", "c OK CREATE completed\r\n"),
            (
                "l LIST \"\" %\r\n",
                "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"INBOX\"\r\n* LIST (\\HasNoChildren \\Subscribed \\Sent) \"/\" \"Sent\"\r\n* LIST (\\HasChildren) \"/\" \"Work\"\r\nl OK LIST completed\r\n",
            ),
            (
                "l LIST Work/ %\r\n",
                "* LIST (\\HasNoChildren) \"/\" \"Work/2026\"\r\nl OK LIST completed\r\n",
            ),
            (
                "l LIST \"\" inbox\r\n",
                "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"INBOX\"\r\nl OK LIST completed\r\n",
            ),
            ("s SUBSCRIBE Work\r\n", "s OK SUBSCRIBE completed\r\n"),
            (
                "l LSUB \"\" W*\r\n",
                "* LSUB (\\HasChildren) \"/\" \"Work\"\r\nl OK LSUB completed\r\n",
            ),
            ("r RENAME Work/2026 Old\r\n", "r OK RENAME completed\r\n"),
            (
                "u UNSUBSCRIBE Nope\r\n",
                "u NO [NONEXISTENT] UNSUBSCRIBE failed: no such folder\r\n",
            ),
            ("d DELETE Old\r\n", "d OK DELETE completed\r\n"),
            (
                "d DELETE INBOX\r\n",
                "d NO [CANNOT] DELETE failed: not allowed\r\n",
            ),
            (
                "t STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)\r\n",
                "* STATUS \"INBOX\" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 7 UNSEEN 2)\r\nt OK STATUS completed\r\n",
            ),
            (
                "t STATUS Nope (MESSAGES)\r\n",
                "t NO [NONEXISTENT] STATUS failed: no such folder\r\n",
            ),
        ],
    );
}

#[test]
fn select_fetch_store_search_expunge() {
    let mut driver = Driver::logged_in();
    transcript(
        &mut driver,
        &[
            (
                "s SELECT Nope\r\n",
                "s NO [NONEXISTENT] SELECT failed: no such folder\r\n",
            ),
            (
                "s SELECT INBOX\r\n",
                "* 3 EXISTS\r\n* 0 RECENT\r\n* OK [UNSEEN 1] first unseen\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $junk)\r\n\
           * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $junk \\*)] flags permitted\r\n* OK [UIDVALIDITY 7] UIDs valid\r\n\
           * OK [UIDNEXT 4] predicted next UID\r\ns OK [READ-WRITE] SELECT completed\r\n",
            ),
            (
                "f FETCH 1:* (UID FLAGS RFC822.SIZE)\r\n",
                "* 1 FETCH (UID 1 FLAGS () RFC822.SIZE 92)\r\n* 2 FETCH (UID 2 FLAGS (\\Seen) RFC822.SIZE 225)\r\n* 3 FETCH (UID 3 FLAGS ($junk) RFC822.SIZE 92)\r\nf OK FETCH completed\r\n",
            ),
            (
                "f FETCH 2 INTERNALDATE\r\n",
                "* 2 FETCH (INTERNALDATE \"16-Nov-2023 22:13:20 +0000\")\r\nf OK FETCH completed\r\n",
            ),
            (
                "f UID FETCH 3:* FLAGS\r\n",
                "* 3 FETCH (UID 3 FLAGS ($junk))\r\nf OK FETCH completed\r\n",
            ),
            // RFC 9051 §6.4.8: a UID range past the last UID still names the last message.
            (
                "f UID FETCH 9:* FLAGS\r\n",
                "* 3 FETCH (UID 3 FLAGS ($junk))\r\nf OK FETCH completed\r\n",
            ),
            ("f UID FETCH 7 FLAGS\r\n", "f OK FETCH completed\r\n"),
            (
                "f FETCH 4 FLAGS\r\n",
                "f BAD invalid message sequence number\r\n",
            ),
            (
                "f FETCH 1 BODY.PEEK[HEADER.FIELDS (Subject)]\r\n",
                "* 1 FETCH (BODY[HEADER.FIELDS (\"SUBJECT\")] {16}\r\nSubject: one\r\n\r\n)\r\nf OK FETCH completed\r\n",
            ),
            (
                "f FETCH 1 BODY.PEEK[TEXT]<1.3>\r\n",
                "* 1 FETCH (BODY[TEXT]<1> {3}\r\nell)\r\nf OK FETCH completed\r\n",
            ),
            // A non-peek fetch sets \Seen and reports the flags.
            (
                "f FETCH 1 (FLAGS BODY[TEXT])\r\n",
                "* 1 FETCH (FLAGS (\\Seen) BODY[TEXT] {7}\r\nhello\r\n)\r\nf OK FETCH completed\r\n",
            ),
            (
                "f FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[3])\r\n",
                "* 2 FETCH (BODY[1] {10}\r\nfirst part BODY[2.MIME] {77}\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n BODY[3] {0}\r\n)\r\nf OK FETCH completed\r\n",
            ),
            (
                "f FETCH 1 ENVELOPE\r\n",
                "* 1 FETCH (ENVELOPE (NIL \"one\" ((\"Ann\" NIL \"ann\" \"example.org\")) ((\"Ann\" NIL \"ann\" \"example.org\")) ((\"Ann\" NIL \"ann\" \"example.org\")) ((NIL NIL \"bob\" \"example.org\")) NIL NIL NIL \"<1@x>\"))\r\nf OK FETCH completed\r\n",
            ),
            (
                "f FETCH 2 BODYSTRUCTURE\r\n",
                "* 2 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 10 1)(\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL \"BASE64\" 4) \"MIXED\" (\"BOUNDARY\" \"b\")))\r\nf OK FETCH completed\r\n",
            ),
            (
                "f FETCH 1 BODY\r\n",
                "* 1 FETCH (BODY (\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 7 1))\r\nf OK FETCH completed\r\n",
            ),
            (
                "s STORE 1:2 +FLAGS (\\Flagged)\r\n",
                "* 1 FETCH (FLAGS (\\Seen \\Flagged))\r\n* 2 FETCH (FLAGS (\\Seen \\Flagged))\r\ns OK STORE completed\r\n",
            ),
            (
                "s UID STORE 2 -FLAGS.SILENT (\\Flagged)\r\n",
                "s OK STORE completed\r\n",
            ),
            (
                "s STORE 3 FLAGS (\\Deleted $work)\r\n",
                "* 3 FETCH (FLAGS (\\Deleted $work))\r\ns OK STORE completed\r\n",
            ),
            ("s STORE 3 +FLAGS (\\Recent)\r\n", "s BAD invalid flag\r\n"),
            (
                "x SEARCH FLAGGED\r\n",
                "* SEARCH 1\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x SEARCH NOT SEEN\r\n",
                "* SEARCH 3\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x UID SEARCH OR DELETED FLAGGED\r\n",
                "* SEARCH 1 3\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x SEARCH SUBJECT two\r\n",
                "* SEARCH 2\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x SEARCH FROM ann BODY HELLO\r\n",
                "* SEARCH 1 3\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x SEARCH TEXT \"first part\"\r\n",
                "* SEARCH 2\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x SEARCH LARGER 100 SINCE 1-Jan-2023\r\n",
                "* SEARCH 2\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x SEARCH BEFORE 16-Nov-2023\r\n",
                "* SEARCH 1\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x SEARCH UID 2:3 KEYWORD $work\r\n",
                "* SEARCH 3\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x SEARCH 2,3 UNKEYWORD $work\r\n",
                "* SEARCH 2\r\nx OK SEARCH completed\r\n",
            ),
            ("e EXPUNGE\r\n", "* 3 EXPUNGE\r\ne OK EXPUNGE completed\r\n"),
            (
                "e ENABLE IMAP4rev2\r\n",
                "* ENABLED IMAP4rev2\r\ne OK ENABLE completed\r\n",
            ),
            (
                "x UID SEARCH ALL\r\n",
                "* ESEARCH (TAG \"x\") UID ALL 1:2\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x SEARCH DELETED\r\n",
                "* ESEARCH (TAG \"x\")\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x UID SEARCH RETURN (MIN MAX COUNT) ALL\r\n",
                "* ESEARCH (TAG \"x\") UID MIN 1 MAX 2 COUNT 2\r\nx OK SEARCH completed\r\n",
            ),
            (
                "x SEARCH RETURN (COUNT MIN) DELETED\r\n",
                "* ESEARCH (TAG \"x\") COUNT 0\r\nx OK SEARCH completed\r\n",
            ),
            (
                "l LIST (SUBSCRIBED) \"\" * RETURN (SPECIAL-USE)\r\n",
                "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"INBOX\"\r\n* LIST (\\HasNoChildren \\Subscribed \\Sent) \"/\" \"Sent\"\r\nl OK LIST completed\r\n",
            ),
            ("c CLOSE\r\n", "c OK CLOSE completed\r\n"),
            (
                "f FETCH 1 FLAGS\r\n",
                "f BAD command is not valid in this state\r\n",
            ),
            (
                "o LOGOUT\r\n",
                "* BYE chordmail IMAP server signing off\r\no OK LOGOUT completed\r\n",
            ),
        ],
    );
    assert!(driver.closed);
    assert_eq!(driver.store.folders["INBOX"].messages.len(), 2);
}

#[test]
fn examine_is_read_only() {
    let mut driver = Driver::logged_in();
    let reply = driver.send(b"x EXAMINE INBOX\r\n");
    assert!(
        reply.contains("* OK [PERMANENTFLAGS ()] flags permitted\r\n")
            && reply.ends_with("x OK [READ-ONLY] EXAMINE completed\r\n"),
        "{reply}"
    );
    transcript(
        &mut driver,
        &[
            (
                "s STORE 1 +FLAGS (\\Seen)\r\n",
                "s NO [CANNOT] folder is read-only\r\n",
            ),
            ("e EXPUNGE\r\n", "e NO [CANNOT] folder is read-only\r\n"),
            // No implicit \Seen in a read-only folder.
            (
                "f FETCH 1 (BODY[TEXT] FLAGS)\r\n",
                "* 1 FETCH (BODY[TEXT] {7}\r\nhello\r\n FLAGS ())\r\nf OK FETCH completed\r\n",
            ),
            ("u UNSELECT\r\n", "u OK UNSELECT completed\r\n"),
        ],
    );
}

#[test]
fn append_copy_move_and_uid_expunge() {
    let mut driver = Driver::selected();
    transcript(
        &mut driver,
        &[
            (
                "a APPEND Sent (\\Seen) {9}\r\n",
                "+ Ready for literal data\r\n",
            ),
            ("Subject: \r\n", "a OK [APPENDUID 8 1] APPEND completed\r\n"),
            // LITERAL+: no continuation request.
            (
                "a APPEND Sent {4+}\r\nabcd\r\n",
                "a OK [APPENDUID 8 2] APPEND completed\r\n",
            ),
            (
                "a APPEND Nope {4+}\r\nabcd\r\n",
                "a NO [TRYCREATE] APPEND failed: no such folder\r\n",
            ),
            (
                "c COPY 1:2 Sent\r\n",
                "c OK [COPYUID 8 1:2 3:4] COPY completed\r\n",
            ),
            (
                "c UID COPY 3 Nope\r\n",
                "c NO [TRYCREATE] COPY failed: no such folder\r\n",
            ),
            (
                "m UID MOVE 2 Sent\r\n",
                "* OK [COPYUID 8 2 5] moved\r\n* 2 EXPUNGE\r\nm OK MOVE completed\r\n",
            ),
            (
                "s STORE 1:2 +FLAGS.SILENT (\\Deleted)\r\n",
                "s OK STORE completed\r\n",
            ),
            (
                "e UID EXPUNGE 3\r\n",
                "* 2 EXPUNGE\r\ne OK EXPUNGE completed\r\n",
            ),
            ("n NOOP\r\n", "n OK NOOP completed\r\n"),
            (
                "f FETCH 1:* UID\r\n",
                "* 1 FETCH (UID 1)\r\nf OK FETCH completed\r\n",
            ),
        ],
    );
    assert_eq!(driver.store.folders["Sent"].messages.len(), 5);
    assert_eq!(driver.store.folders["Sent"].messages[&1].flags, ["\\Seen"]);
}

#[test]
fn noop_and_idle_report_changes() {
    let mut driver = Driver::selected();
    driver.store.deliver("INBOX", PLAIN.as_bytes());
    assert_eq!(
        driver.send(b"n NOOP\r\n"),
        "* 4 EXISTS\r\nn OK NOOP completed\r\n"
    );
    assert_eq!(driver.send(b"i IDLE\r\n"), "+ idling\r\n");
    assert!(driver.idling);
    assert_eq!(driver.poll(), "");
    driver.store.deliver("INBOX", PLAIN.as_bytes());
    driver
        .store
        .folders
        .get_mut("INBOX")
        .unwrap()
        .messages
        .remove(&1);
    driver
        .store
        .folders
        .get_mut("INBOX")
        .unwrap()
        .messages
        .get_mut(&2)
        .unwrap()
        .flags
        .push("\\Answered".into());
    assert_eq!(
        driver.poll(),
        "* 2 FETCH (FLAGS (\\Seen \\Answered))\r\n* 1 EXPUNGE\r\n* 4 EXISTS\r\n"
    );
    assert!(driver.idling);
    assert_eq!(driver.send(b"done\r\n"), "i OK IDLE terminated\r\n");
    assert!(!driver.idling);
    assert_eq!(driver.send(b"i IDLE\r\n"), "+ idling\r\n");
    assert_eq!(driver.send(b"x NOOP\r\n"), "i BAD expected DONE\r\n");
    // IDLE without a folder selected just waits.
    let mut driver = Driver::logged_in();
    assert_eq!(driver.send(b"i IDLE\r\n"), "+ idling\r\n");
    assert_eq!(driver.poll(), "");
    assert_eq!(driver.send(b"DONE\r\n"), "i OK IDLE terminated\r\n");
}

#[test]
fn bad_input_gets_bad_and_limits_hold() {
    let mut driver = Driver::logged_in();
    let long_line = format!(
        "t1 LIST \"\" \"{}\"\r\nt2 NOOP\r\n",
        "x".repeat(IMAP_LINE_BYTES_MAX)
    );
    let big_literal = format!("t3 LOGIN alice {{{}}}\r\n", IMAP_LITERAL_BYTES_MAX + 1);
    transcript(
        &mut driver,
        &[
            ("t0 FROB\r\n", "t0 BAD syntax error\r\n"),
            (
                "t0 FETCH 1 FLAGS\r\n",
                "t0 BAD command is not valid in this state\r\n",
            ),
            ("t0 SELECT\r\n", "t0 BAD syntax error\r\n"),
            ("garbage\r\n", "* BAD syntax error\r\n"),
            (
                &long_line,
                "t1 BAD command line too long\r\nt2 OK NOOP completed\r\n",
            ),
            (&big_literal, "t3 NO [TOOBIG] literal too large\r\n"),
            (
                "t4 APPEND INBOX {99999999999999999999}\r\n",
                "t4 NO [TOOBIG] literal too large\r\n",
            ),
        ],
    );
    // Too many bad commands in a row end the session; a good one resets the count.
    let mut driver = Driver::logged_in();
    for _ in 0..3 * IMAP_BAD_COMMANDS_MAX {
        driver.send(b"x BOGUS\r\nn NOOP\r\n");
    }
    assert!(!driver.closed);
    for _ in 1..IMAP_BAD_COMMANDS_MAX {
        assert_eq!(driver.send(b"x BOGUS\r\n"), "x BAD syntax error\r\n");
    }
    assert_eq!(
        driver.send(b"x BOGUS\r\n"),
        "* BYE too many errors, closing\r\n"
    );
    assert!(driver.closed);
    // A non-synchronising literal over its bound cannot be skipped: BYE.
    let mut driver = Driver::logged_in();
    assert_eq!(
        driver.send(format!("a LOGIN alice {{{}+}}\r\n", IMAP_LITERAL_BYTES_MAX + 1).as_bytes()),
        "* BYE literal too large\r\n"
    );
    assert!(driver.closed);
}

const NESTED: &str = "Subject: outer\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--x\r\n\
    Content-Type: message/rfc822\r\n\r\nSubject: inner\r\nTo: undisclosed-recipients:;\r\n\r\ninner body\r\n--x--\r\n";

#[test]
fn sections_of_an_encapsulated_message() {
    let mut driver = Driver::selected();
    driver.store.deliver("INBOX", NESTED.as_bytes());
    assert_eq!(
        driver.send(b"n NOOP\r\n"),
        "* 4 EXISTS\r\nn OK NOOP completed\r\n"
    );
    transcript(
        &mut driver,
        &[
            (
                "f FETCH 4 BODY.PEEK[2.HEADER]\r\n",
                "* 4 FETCH (BODY[2.HEADER] {48}\r\nSubject: inner\r\nTo: undisclosed-recipients:;\r\n\r\n)\r\nf OK FETCH completed\r\n",
            ),
            (
                "f FETCH 4 BODY.PEEK[2.TEXT]\r\n",
                "* 4 FETCH (BODY[2.TEXT] {10}\r\ninner body)\r\nf OK FETCH completed\r\n",
            ),
            (
                "f FETCH 4 BODY.PEEK[2.1]\r\n",
                "* 4 FETCH (BODY[2.1] {10}\r\ninner body)\r\nf OK FETCH completed\r\n",
            ),
            (
                "f FETCH 4 BODY.PEEK[HEADER.FIELDS.NOT (Content-Type)]\r\n",
                "* 4 FETCH (BODY[HEADER.FIELDS.NOT (\"CONTENT-TYPE\")] {18}\r\nSubject: outer\r\n\r\n)\r\nf OK FETCH completed\r\n",
            ),
            (
                "f FETCH 4 BODY.PEEK[9]\r\n",
                "* 4 FETCH (BODY[9] {0}\r\n)\r\nf OK FETCH completed\r\n",
            ),
        ],
    );
    let structure = driver.send(b"f FETCH 4 BODYSTRUCTURE\r\n");
    assert!(
        structure.contains("(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 58 (NIL \"inner\" NIL NIL NIL ((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL)) NIL NIL NIL NIL) (\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 10 1) 4)"),
        "{structure}"
    );
}

#[test]
fn fetch_goes_in_batches_and_survives_a_lost_message() {
    let mut driver = Driver::selected();
    for _ in 0..2 * IMAP_BODIES_PER_STEP_MAX {
        driver.store.deliver("INBOX", PLAIN.as_bytes());
    }
    driver.send(b"n NOOP\r\n");
    let n_messages = 3 + 2 * IMAP_BODIES_PER_STEP_MAX;
    let n_requests_before = driver.n_requests;
    let reply = driver.send(b"f FETCH 1:* BODY.PEEK[]\r\n");
    assert_eq!(reply.matches(" FETCH (BODY[] {").count(), n_messages);
    assert_eq!(
        driver.n_requests - n_requests_before,
        n_messages.div_ceil(IMAP_BODIES_PER_STEP_MAX)
    );
    // The store lost message 1 (expunged elsewhere) before this session heard.
    driver
        .store
        .folders
        .get_mut("INBOX")
        .unwrap()
        .messages
        .remove(&1);
    assert_eq!(
        driver.send(b"f FETCH 1 (UID BODY.PEEK[])\r\n"),
        "* 1 FETCH (UID 1 BODY[] NIL)\r\nf OK FETCH completed\r\n"
    );
}

#[test]
fn store_failures_are_reported() {
    let mut driver = Driver::selected();
    driver.store.fail_next = Some(Failure::Unavailable);
    assert_eq!(
        driver.send(b"s STORE 1 +FLAGS (\\Flagged)\r\n"),
        "s NO [UNAVAILABLE] STORE failed: try again later\r\n"
    );
    // The implicit \Seen failing does not keep the data from the client.
    driver.store.fail_next = Some(Failure::Unavailable);
    assert_eq!(
        driver.send(b"f FETCH 1 BODY[TEXT]\r\n"),
        "* 1 FETCH (BODY[TEXT] {7}\r\nhello\r\n FLAGS ())\r\nf OK FETCH completed\r\n"
    );
    assert_eq!(
        driver.send(b"f FETCH 1 BODY[TEXT]\r\n"),
        "* 1 FETCH (BODY[TEXT] {7}\r\nhello\r\n FLAGS (\\Seen))\r\nf OK FETCH completed\r\n"
    );
    driver.store.fail_next = Some(Failure::Unavailable);
    assert_eq!(
        driver.send(b"n NOOP\r\n"),
        "n NO [UNAVAILABLE] NOOP failed: try again later\r\n"
    );
    driver.store.fail_next = Some(Failure::NonExistent);
    assert_eq!(driver.send(b"e EXPUNGE\r\n"), "e OK EXPUNGE completed\r\n");
}

#[test]
fn imap4rev2_select_sends_list_and_no_recent() {
    let mut driver = Driver::logged_in();
    driver.send(b"e ENABLE IMAP4rev2\r\n");
    assert_eq!(
        driver.send(b"s SELECT Sent\r\n"),
        "* 0 EXISTS\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $junk)\r\n\
         * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $junk \\*)] flags permitted\r\n* OK [UIDVALIDITY 8] UIDs valid\r\n\
         * OK [UIDNEXT 1] predicted next UID\r\n* LIST () \"/\" \"Sent\"\r\ns OK [READ-WRITE] SELECT completed\r\n"
    );
    assert_eq!(
        driver.send(b"f FETCH * FLAGS\r\n"),
        "f BAD invalid message sequence number\r\n"
    );
    assert_eq!(
        driver.send(b"f UID FETCH 1:* FLAGS\r\n"),
        "f OK FETCH completed\r\n"
    );
    assert_eq!(
        driver.send(b"s SELECT INBOX\r\n").lines().next(),
        Some("* OK [CLOSED] previous folder closed")
    );
}

#[test]
fn imap4rev1_clients_name_folders_in_modified_utf7() {
    let mut driver = Driver::logged_in();
    transcript(
        &mut driver,
        &[
            ("c CREATE Entw&APw-rfe\r\n", "c OK CREATE completed\r\n"),
            (
                "l LIST \"\" Entw*\r\n",
                "* LIST (\\HasNoChildren) \"/\" \"Entw&APw-rfe\"\r\nl OK LIST completed\r\n",
            ),
            (
                "e ENABLE IMAP4rev2\r\n",
                "* ENABLED IMAP4rev2\r\ne OK ENABLE completed\r\n",
            ),
            (
                "l LIST \"\" Entw*\r\n",
                "* LIST (\\HasNoChildren) \"/\" {9}\r\nEntw\u{fc}rfe\r\nl OK LIST completed\r\n",
            ),
        ],
    );
    assert!(driver.store.folders.contains_key("Entw\u{fc}rfe"));
}

#[test]
fn byte_split_input_gives_the_same_transcript() {
    let script: &[u8] = b"a LOGIN alice {5}\r\nright\r\nb SELECT INBOX\r\nc FETCH 1:2 (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n\
        d STORE 1 +FLAGS (\\Deleted)\r\ne APPEND Sent {4+}\r\nabcd\r\nf UID SEARCH FROM ann\r\ng EXPUNGE\r\nh IDLE\r\nDONE\r\ni LOGOUT\r\n";
    let mut whole = Driver::loopback();
    let expected = whole.send(script);
    assert!(
        expected.ends_with("i OK LOGOUT completed\r\n"),
        "{expected}"
    );
    for split_idx in 0..script.len() {
        let mut driver = Driver::loopback();
        let output = driver.send(&script[..split_idx]) + &driver.send(&script[split_idx..]);
        assert_eq!(output, expected, "split at {split_idx}");
    }
    let mut driver = Driver::loopback();
    let output: String = script
        .iter()
        .map(|byte| driver.send(std::slice::from_ref(byte)))
        .collect();
    assert_eq!(output, expected, "byte by byte");
}

proptest! {
    /// Random bytes, cut into random chunks, never panic the session.
    #[test]
    fn random_input_never_panics(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
        log_in in any::<bool>(),
    ) {
        let mut driver = if log_in { Driver::selected() } else { Driver::loopback() };
        for chunk in &chunks {
            if driver.closed { break; }
            driver.send(chunk);
        }
    }

    /// Random sequences of well-formed commands never panic the session.
    #[test]
    fn random_commands_never_panic(commands in proptest::collection::vec(
        prop_oneof![
            Just("LOGIN alice right".to_owned()), Just("SELECT INBOX".to_owned()), Just("EXAMINE Sent".to_owned()),
            Just("NOOP".to_owned()), Just("EXPUNGE".to_owned()), Just("CLOSE".to_owned()), Just("UNSELECT".to_owned()),
            Just("SEARCH ALL".to_owned()), Just("ENABLE IMAP4rev2".to_owned()), Just("LIST \"\" *".to_owned()),
            (0u32..6, 0u32..6).prop_map(|(a, b)| format!("FETCH {a}:{b} (FLAGS BODY.PEEK[1])")),
            (0u32..6).prop_map(|a| format!("UID FETCH {a}:* (ENVELOPE BODYSTRUCTURE)")),
            (0u32..6).prop_map(|a| format!("STORE {a} +FLAGS (\\Deleted)")),
            (0u32..6).prop_map(|a| format!("UID MOVE {a} Sent")),
            (0u32..6).prop_map(|a| format!("COPY {a}:* INBOX")),
        ],
        0..30,
    )) {
        let mut driver = Driver::loopback();
        for (command_idx, command) in commands.iter().enumerate() {
            if driver.closed { break; }
            driver.send(format!("t{command_idx} {command}\r\n").as_bytes());
        }
    }
}
