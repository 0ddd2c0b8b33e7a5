//! Pagination (AIP-158): page sizes, and opaque page tokens signed with a
//! key shared through the state store, so a token the server did not issue
//! (or issued for another listing) is refused.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::store::{self, Store};

const KEY_NAME: &str = "page_token_key";

/// Bytes of HMAC-SHA256 a token carries (128 bits).
const TAG_BYTES: usize = 16;

/// The page size a listing uses: 0 means `default`, more than `max` is
/// clamped, negative is invalid.
pub fn page_size(requested: i32, default: u64, max: u64) -> Result<u64> {
    match requested {
        0 => Ok(default),
        n if n < 0 => Err(Error::invalid(
            "page_size",
            format!("must not be negative; 0 means the default ({default}), at most {max}"),
        )),
        n => Ok((n as u64).min(max)),
    }
}

/// Issues and checks page tokens.
#[derive(Clone)]
pub struct PageTokens {
    key: ring::hmac::Key,
}

impl PageTokens {
    /// A signer with a given key (tests, and deployments that manage the key
    /// themselves).
    pub fn from_key(key: &[u8]) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        }
    }

    /// Loads the signing key from the store, creating it on first use.
    pub async fn load(db: &Store) -> Result<Self> {
        let txn = db.begin_write().await?;
        let key =
            store::secrets::get_or_create(&txn, KEY_NAME, || rand::random::<[u8; 32]>().to_vec())
                .await?;
        txn.commit().await?;
        Ok(Self::from_key(&key))
    }

    /// The first [`TAG_BYTES`] of HMAC-SHA256 over the listing and cursor.
    fn tag(&self, listing: &str, cursor: &str) -> [u8; TAG_BYTES] {
        let mut mac = ring::hmac::Context::with_key(&self.key);
        mac.update(listing.as_bytes());
        mac.update(b"\n");
        mac.update(cursor.as_bytes());
        let mut tag = [0; TAG_BYTES];
        tag.copy_from_slice(&mac.sign().as_ref()[..TAG_BYTES]);
        tag
    }

    /// A token for resuming `listing` after `cursor`.
    pub fn issue(&self, listing: &str, cursor: &str) -> String {
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(cursor),
            URL_SAFE_NO_PAD.encode(self.tag(listing, cursor))
        )
    }

    /// The cursor inside a token for `listing`; `None` for an empty token
    /// (the first page).
    pub fn cursor(&self, listing: &str, token: &str) -> Result<Option<String>> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = || {
            Error::invalid(
                "page_token",
                "is not a page token this server issued for this listing; pass a next_page_token unchanged",
            )
        };
        let (cursor, tag) = token.split_once('.').ok_or_else(invalid)?;
        let cursor = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
        let cursor = String::from_utf8(cursor).map_err(|_| invalid())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        // Exactly the issued length: a shorter tag would be a weaker MAC.
        if tag.len() != TAG_BYTES {
            return Err(invalid());
        }
        if !bool::from(self.tag(listing, &cursor).ct_eq(&tag)) {
            return Err(invalid());
        }
        Ok(Some(cursor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> PageTokens {
        PageTokens::from_key(&[7; 32])
    }

    #[test]
    fn round_trips_and_rejects_forgeries() {
        let t = tokens();
        let token = t.issue("backups", "2026|x.db");
        assert_eq!(
            t.cursor("backups", &token).unwrap().as_deref(),
            Some("2026|x.db")
        );
        assert_eq!(t.cursor("backups", "").unwrap(), None);
        assert!(
            t.cursor("settings", &token).is_err(),
            "token reused for another listing"
        );
        let other_key = PageTokens::from_key(&[8; 32]);
        assert!(other_key.cursor("backups", &token).is_err());
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode("9999|y.db"),
            token.split_once('.').unwrap().1
        );
        for bad in ["garbage", "a.b", ".", forged.as_str(), "%%%.%%%"] {
            assert!(t.cursor("backups", bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0, 50, 1000).unwrap(), 50);
        assert_eq!(page_size(7, 50, 1000).unwrap(), 7);
        assert_eq!(page_size(i32::MAX, 50, 1000).unwrap(), 1000);
        assert!(page_size(-1, 50, 1000).is_err());
    }
}
