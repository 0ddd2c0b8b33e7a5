//! Encryption at rest: the key file, the repository's master key (stored
//! wrapped by key files under `keys/`, so a key file can be replaced
//! without rewriting data), and the two keys derived from it: one keys
//! chunk ids, so they reveal nothing about content; one seals objects with
//! XChaCha20-Poly1305, whose random 24-byte nonces are safe to draw for
//! every object.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::format::Id;
use crate::error::{Error, Result};

/// Bytes before the ciphertext of a sealed object: its nonce.
const NONCE: usize = 24;

/// What a key file starts with, so a wrong file is told apart from a
/// wrong key.
const KEY_FILE_TAG: &str = "sqlite-backup-repository-key-v1";

/// Associated data of the master key sealed in `keys/`.
const WRAP_AAD: &[u8] = b"repository master key";

/// How a repository's objects are addressed and sealed.
pub struct Keys {
    /// Keys BLAKE3 for chunk ids; `None` in an unencrypted repository,
    /// whose ids are plain BLAKE3 hashes.
    id_key: Option<[u8; 32]>,
    /// Seals objects; `None`: stored as they are.
    cipher: Option<XChaCha20Poly1305>,
}

impl Keys {
    /// An unencrypted repository's.
    pub fn plain() -> Self {
        Self {
            id_key: None,
            cipher: None,
        }
    }

    /// An encrypted repository's, from its master key.
    pub fn from_master(master: &[u8; 32]) -> Self {
        let id_key = blake3::derive_key("sqlite-backup-repository v1 chunk id", master);
        let data_key = blake3::derive_key("sqlite-backup-repository v1 object seal", master);
        Self {
            id_key: Some(id_key),
            cipher: Some(XChaCha20Poly1305::new(&data_key.into())),
        }
    }

    /// A chunk's address: its BLAKE3 hash, keyed when encrypted.
    pub fn chunk_id(&self, plaintext: &[u8]) -> Id {
        let hash = match &self.id_key {
            Some(key) => blake3::keyed_hash(key, plaintext),
            None => blake3::hash(plaintext),
        };
        Id(*hash.as_bytes())
    }

    /// `plaintext` as stored: nonce, ciphertext and tag, bound to `aad`
    /// (what the object is); unchanged when unencrypted.
    pub fn seal(&self, aad: &[u8], plaintext: Vec<u8>) -> Vec<u8> {
        let Some(cipher) = &self.cipher else {
            return plaintext;
        };
        seal_with(cipher, aad, &plaintext)
    }

    /// What [`Self::seal`] sealed. Anything else (a flipped byte, another
    /// object's bytes) is DATA_LOSS naming `what`.
    pub fn open(&self, aad: &[u8], sealed: Vec<u8>, what: &str) -> Result<Vec<u8>> {
        let Some(cipher) = &self.cipher else {
            return Ok(sealed);
        };
        open_with(cipher, aad, &sealed)
            .ok_or_else(|| Error::DataLoss(format!("{what} fails its authentication check")))
    }
}

fn seal_with(cipher: &XChaCha20Poly1305, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE] = rand::random();
    let nonce = XNonce::from(nonce);
    let payload = Payload {
        msg: plaintext,
        aad,
    };
    // Encryption fails only for messages beyond 256 GiB.
    let sealed = cipher.encrypt(&nonce, payload).unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

fn open_with(cipher: &XChaCha20Poly1305, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let (nonce, ciphertext) = sealed.split_at_checked(NONCE)?;
    let nonce = XNonce::try_from(nonce).ok()?;
    let payload = Payload {
        msg: ciphertext,
        aad,
    };
    cipher.decrypt(&nonce, payload).ok()
}

/// The secret in a key file: it unwraps the repository's master key.
pub struct KeyFile([u8; 32]);

impl KeyFile {
    /// Writes a new random key file at `path`, mode 0600; never over an
    /// existing file.
    pub fn generate(path: &Path) -> Result<Self> {
        let key: [u8; 32] = rand::random();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        writeln!(file, "{KEY_FILE_TAG} {}", hex::encode(key))?;
        file.sync_all()?;
        Ok(Self(key))
    }

    /// Reads the key file at `path`; one others may read, or anything
    /// but a key file, is refused.
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |why: &str| Error::FailedPrecondition(format!("the repository key file {why}"));
        let meta = std::fs::metadata(path).map_err(|e| bad(&format!("cannot be read: {e}")))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad(&format!(
                "is open to other users (mode {:o}); run chmod 600 on it",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|_| bad("is not a key file"))?;
        let key = text
            .trim()
            .strip_prefix(KEY_FILE_TAG)
            .map(str::trim)
            .and_then(|hex_key| {
                let mut key = [0u8; 32];
                hex::decode_to_slice(hex_key, &mut key).ok().map(|()| key)
            })
            .ok_or_else(|| {
                bad("is not a key file (make one with `backup-server repo init-key`)")
            })?;
        Ok(Self(key))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// `master` sealed by this key file, as stored under `keys/`.
    pub fn wrap(&self, master: &[u8; 32]) -> Vec<u8> {
        seal_with(&self.cipher(), WRAP_AAD, master)
    }

    /// The master key in a `keys/` object, if this key file sealed it.
    pub fn unwrap(&self, wrapped: &[u8]) -> Option<[u8; 32]> {
        open_with(&self.cipher(), WRAP_AAD, wrapped)?
            .try_into()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_open_only_with_their_key_and_purpose() {
        let keys = Keys::from_master(&[9; 32]);
        let sealed = keys.seal(b"frame", b"hello".to_vec());
        assert_ne!(&sealed[NONCE..], b"hello");
        assert_eq!(keys.open(b"frame", sealed.clone(), "x").unwrap(), b"hello");
        assert!(keys.open(b"index", sealed.clone(), "x").is_err());
        let mut flipped = sealed.clone();
        flipped[NONCE + 1] ^= 1;
        assert!(matches!(
            keys.open(b"frame", flipped, "frame 1"),
            Err(Error::DataLoss(m)) if m.contains("frame 1")
        ));
        let other = Keys::from_master(&[8; 32]);
        assert!(other.open(b"frame", sealed, "x").is_err());
        assert_ne!(keys.chunk_id(b"page"), Keys::plain().chunk_id(b"page"));
        assert_eq!(
            Keys::plain().chunk_id(b"page").0,
            *blake3::hash(b"page").as_bytes()
        );
    }

    #[test]
    fn a_key_file_unwraps_what_it_wrapped_and_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = KeyFile::generate(&path).unwrap();
        assert!(KeyFile::generate(&path).is_err(), "never over a file");
        let wrapped = key.wrap(&[5; 32]);
        let read = KeyFile::read(&path).unwrap();
        assert_eq!(read.unwrap(&wrapped), Some([5; 32]));
        let other = KeyFile::generate(&dir.path().join("other")).unwrap();
        assert_eq!(other.unwrap(&wrapped), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            matches!(KeyFile::read(&path), Err(Error::FailedPrecondition(m)) if m.contains("644"))
        );
        std::fs::write(dir.path().join("junk"), "nope").unwrap();
        std::fs::set_permissions(
            dir.path().join("junk"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(KeyFile::read(&dir.path().join("junk")).is_err());
    }
}
