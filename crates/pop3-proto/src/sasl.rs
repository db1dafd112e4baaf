//! SASL PLAIN (RFC 4616) as used by POP3 AUTH (RFC 5034).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::ProtoError;
use crate::limits::PASSWORD_BYTES_MAX;
use crate::parser::Secret;

/// The credentials of a PLAIN message. There is no authorization identity: proxy
/// login is not offered, so one that differs from the user is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    pub user: String,
    pub password: Secret,
}

/// Decodes the base64 client response of PLAIN: `[authzid] NUL authcid NUL passwd`.
///
/// RFC 5034 §4: `=` stands for an empty response, which PLAIN cannot use.
pub fn decode_plain(response: &Secret) -> Result<PlainCredentials, ProtoError> {
    if response.0 == b"=" {
        return Err(ProtoError::MalformedSasl);
    }
    let decoded = STANDARD
        .decode(&response.0)
        .map_err(|_| ProtoError::MalformedSasl)?;
    let mut parts = decoded.splitn(3, |&byte| byte == 0);
    let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ProtoError::MalformedSasl);
    };
    // RFC 4616 §2: the password holds no NUL; both names are UTF-8.
    if authcid.is_empty()
        || password.is_empty()
        || password.contains(&0)
        || password.len() > PASSWORD_BYTES_MAX
    {
        return Err(ProtoError::MalformedSasl);
    }
    let user = std::str::from_utf8(authcid).map_err(|_| ProtoError::MalformedSasl)?;
    if !authzid.is_empty() && authzid != authcid {
        return Err(ProtoError::BadCredentials);
    }
    Ok(PlainCredentials {
        user: user.to_owned(),
        password: Secret(password.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(raw: &[u8]) -> Secret {
        Secret(STANDARD.encode(raw).into_bytes())
    }

    #[test]
    fn plain_messages() {
        let ok = |user: &str, password: &str| {
            Ok(PlainCredentials {
                user: user.into(),
                password: Secret(password.as_bytes().to_vec()),
            })
        };
        let table: Vec<(Secret, Result<PlainCredentials, ProtoError>)> = vec![
            (
                encode(b"\0alice@example.org\0secret"),
                ok("alice@example.org", "secret"),
            ),
            (
                encode(b"alice\0alice\0pw with space"),
                ok("alice", "pw with space"),
            ),
            (
                encode(b"bob\0alice\0secret"),
                Err(ProtoError::BadCredentials),
            ),
            (encode(b"\0alice"), Err(ProtoError::MalformedSasl)),
            (encode(b"\0\0secret"), Err(ProtoError::MalformedSasl)),
            (encode(b"\0alice\0"), Err(ProtoError::MalformedSasl)),
            (encode(b"\0alice\0a\0b"), Err(ProtoError::MalformedSasl)),
            (encode(b"\0\xff\0secret"), Err(ProtoError::MalformedSasl)),
            (Secret(b"=".to_vec()), Err(ProtoError::MalformedSasl)),
            (
                Secret(b"not base64!".to_vec()),
                Err(ProtoError::MalformedSasl),
            ),
        ];
        for (response, expected) in table {
            assert_eq!(decode_plain(&response), expected);
        }
    }
}
