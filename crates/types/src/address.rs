//! Mail addresses as the ring stores them: `local@domain`, lower-cased.

use std::fmt;

use crate::limits::ADDRESS_BYTES_MAX;

/// A syntactically valid mail address, lower-cased so that one mailbox has one key.
///
/// Deliberately narrower than RFC 5321's `Mailbox`: quoted local parts and address
/// literals are refused, because an account name must be typed by people and
/// compared byte for byte across nodes. UTF-8 (RFC 6531) is accepted.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than {ADDRESS_BYTES_MAX} bytes")]
    TooLong,
    #[error("address must have the form local@domain")]
    MissingAt,
    #[error("local part is empty or longer than 64 bytes")]
    BadLocalPart,
    #[error("domain is empty, longer than 255 bytes or has an empty label")]
    BadDomain,
    #[error("address contains a space, control character or one of <>()[]\\,;:\"")]
    ForbiddenCharacter,
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        if text.len() > ADDRESS_BYTES_MAX {
            return Err(AddressError::TooLong);
        }
        let forbidden =
            |c: char| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"".contains(c);
        if text.chars().any(forbidden) {
            return Err(AddressError::ForbiddenCharacter);
        }
        let (local, domain) = text.rsplit_once('@').ok_or(AddressError::MissingAt)?;
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(AddressError::BadLocalPart);
        }
        if domain.is_empty() || domain.len() > 255 || domain.split('.').any(str::is_empty) {
            return Err(AddressError::BadDomain);
        }
        Ok(Address(text.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').expect("validated at parse").0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').expect("validated at parse").1
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Address::parse(&text)
    }
}

impl From<Address> for String {
    fn from(address: Address) -> String {
        address.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_lowercases() {
        let address = Address::parse("Bob.Smith+tag@Mail.Example.ORG").unwrap();
        assert_eq!(address.as_str(), "bob.smith+tag@mail.example.org");
        assert_eq!(address.local_part(), "bob.smith+tag");
        assert_eq!(address.domain(), "mail.example.org");
        assert_eq!(
            Address::parse("jürgen@bücher.de").unwrap().as_str(),
            "jürgen@bücher.de"
        );
    }

    #[test]
    fn refuses_malformed() {
        let table = [
            ("", AddressError::Empty),
            ("plain", AddressError::MissingAt),
            ("@example.org", AddressError::BadLocalPart),
            ("a@b@example.org", AddressError::BadLocalPart),
            ("a@", AddressError::BadDomain),
            ("a@example..org", AddressError::BadDomain),
            ("a@.org", AddressError::BadDomain),
            ("a b@example.org", AddressError::ForbiddenCharacter),
            ("<a@example.org>", AddressError::ForbiddenCharacter),
            ("a\r\n@example.org", AddressError::ForbiddenCharacter),
        ];
        for (text, expected) in table {
            assert_eq!(Address::parse(text), Err(expected), "{text:?}");
        }
        let long = format!("{}@example.org", "a".repeat(65));
        assert_eq!(Address::parse(&long), Err(AddressError::BadLocalPart));
        let huge = format!("a@{}.org", "b".repeat(300));
        assert_eq!(Address::parse(&huge), Err(AddressError::TooLong));
    }
}
