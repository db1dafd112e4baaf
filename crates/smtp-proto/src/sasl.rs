//! AUTH PLAIN (RFC 4616) and AUTH LOGIN exchanges: decoding only.
//!
//! This module turns base64 lines into [`Credentials`]; checking them against the
//! accounts is the shell's job, which reports the outcome back to the session.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::SmtpError;

/// An identity and password as the client sent them. The password is never shown
/// by `Debug`, so credentials cannot leak into a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub identity: String,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where a SASL exchange stands: what the next client line answers.
#[derive(Clone, PartialEq, Eq)]
pub enum SaslExchange {
    /// `AUTH PLAIN` without an initial response: the client sends it after `334 `.
    PlainResponse,
    /// `AUTH LOGIN`: the client sends the user name after `334 VXNlcm5hbWU6`.
    LoginUser,
    /// The client sends the password after `334 UGFzc3dvcmQ6`.
    LoginPassword { identity: String },
}

impl std::fmt::Debug for SaslExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SaslExchange::PlainResponse => "PlainResponse",
            SaslExchange::LoginUser => "LoginUser",
            SaslExchange::LoginPassword { .. } => "LoginPassword",
        })
    }
}

/// The challenge of AUTH LOGIN asking for the user name: base64 of "Username:".
pub const LOGIN_USER_CHALLENGE: &str = "VXNlcm5hbWU6";
/// The challenge of AUTH LOGIN asking for the password: base64 of "Password:".
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// What the session does with one client line of an exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslStep {
    Challenge {
        next: SaslExchange,
        challenge_base64: &'static str,
    },
    Done(Credentials),
}

/// RFC 4954 §4: the client answers a challenge with base64, `=` for an empty
/// response, or `*` to cancel.
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, SmtpError> {
    let line = line.trim_ascii();
    match line {
        b"*" => Err(SmtpError::AuthCancelled),
        b"=" => Ok(Vec::new()),
        _ => STANDARD.decode(line).map_err(|_| SmtpError::AuthMalformed),
    }
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`. We act only as the
/// authenticated user, so an authorisation identity must name that same user.
pub fn decode_plain(response: &[u8]) -> Result<Credentials, SmtpError> {
    let mut fields = response.split(|&byte| byte == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SmtpError::AuthMalformed);
    };
    let identity = String::from_utf8(authcid.to_vec()).map_err(|_| SmtpError::AuthMalformed)?;
    if identity.is_empty() || !(authzid.is_empty() || authzid == authcid) {
        return Err(SmtpError::AuthMalformed);
    }
    Ok(Credentials {
        identity,
        password: password.to_vec(),
    })
}

/// Advances an exchange by one client line.
pub fn step(exchange: SaslExchange, line: &[u8]) -> Result<SaslStep, SmtpError> {
    let response = decode_response(line)?;
    match exchange {
        SaslExchange::PlainResponse => decode_plain(&response).map(SaslStep::Done),
        SaslExchange::LoginUser => {
            let identity = String::from_utf8(response).map_err(|_| SmtpError::AuthMalformed)?;
            Ok(SaslStep::Challenge {
                next: SaslExchange::LoginPassword { identity },
                challenge_base64: LOGIN_PASSWORD_CHALLENGE,
            })
        }
        SaslExchange::LoginPassword { identity } => Ok(SaslStep::Done(Credentials {
            identity,
            password: response,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> Vec<u8> {
        STANDARD.encode(bytes).into_bytes()
    }

    #[test]
    fn plain_table() {
        let alice = Credentials {
            identity: "alice@example.org".into(),
            password: b"pw".to_vec(),
        };
        let table: Vec<(Vec<u8>, Result<Credentials, SmtpError>)> = vec![
            (b64(b"\0alice@example.org\0pw"), Ok(alice.clone())),
            (b64(b"alice@example.org\0alice@example.org\0pw"), Ok(alice)),
            (
                b64(b"bob@example.org\0alice@example.org\0pw"),
                Err(SmtpError::AuthMalformed),
            ),
            (b64(b"\0\0pw"), Err(SmtpError::AuthMalformed)),
            (b64(b"alice\0pw"), Err(SmtpError::AuthMalformed)),
            (b64(b"\0a\0b\0c"), Err(SmtpError::AuthMalformed)),
            (b"not base64!".to_vec(), Err(SmtpError::AuthMalformed)),
            (b"*".to_vec(), Err(SmtpError::AuthCancelled)),
            (b"=".to_vec(), Err(SmtpError::AuthMalformed)),
        ];
        for (line, expected) in table {
            let outcome = step(SaslExchange::PlainResponse, &line).map(|step| match step {
                SaslStep::Done(credentials) => credentials,
                SaslStep::Challenge { .. } => panic!("plain has one step"),
            });
            assert_eq!(outcome, expected, "{:?}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn login_two_steps() {
        let Ok(SaslStep::Challenge {
            next,
            challenge_base64,
        }) = step(SaslExchange::LoginUser, &b64(b"bob@example.org"))
        else {
            panic!("login asks for the password");
        };
        assert_eq!(challenge_base64, LOGIN_PASSWORD_CHALLENGE);
        let done = step(next, &b64(b"s3cret")).unwrap();
        assert_eq!(
            done,
            SaslStep::Done(Credentials {
                identity: "bob@example.org".into(),
                password: b"s3cret".to_vec()
            })
        );
        assert_eq!(
            step(SaslExchange::LoginUser, b"*"),
            Err(SmtpError::AuthCancelled)
        );
    }

    #[test]
    fn debug_hides_passwords() {
        let credentials = Credentials {
            identity: "a@b.c".into(),
            password: b"hunter2".to_vec(),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
        let exchange = SaslExchange::LoginPassword {
            identity: "a@b.c".into(),
        };
        assert_eq!(format!("{exchange:?}"), "LoginPassword");
    }

    proptest::proptest! {
        #[test]
        fn random_lines_never_panic(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = step(SaslExchange::PlainResponse, &line);
            let _ = step(SaslExchange::LoginUser, &line);
        }
    }
}
