//! A short-lived cache of authenticated tokens, so that most RPCs skip the
//! token lookup in the state store.
//!
//! An entry lives at most [`TTL`], and never past the token's expiry. That
//! bound is what makes a change made by another process take effect: a
//! revocation (`backup-server token revoke`) or a promotion to admin
//! (`token create --admin`) runs in a process of its own, which cannot
//! reach this cache, and is seen everywhere within [`TTL`]. No RPC revokes
//! a token, so no revocation happens in a serving process; one that did
//! would have to clear this cache as it revoked.
//!
//! Only successes are cached: a refused token is looked up, and audited,
//! on every call.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use super::Caller;

/// How long an authenticated token is taken on trust.
pub const TTL: Duration = Duration::from_secs(1);

/// The most tokens cached at once; more distinct tokens than this within
/// [`TTL`] start the cache over.
pub const CAPACITY: usize = 4096;

/// The SHA-256 of a token.
pub type TokenHash = [u8; 32];

struct Entry {
    hash: TokenHash,
    caller: Caller,
    /// The token's own expiry, from its row.
    expires_at: Option<DateTime<Utc>>,
    /// When the entry stops being trusted (monotonic, so a wall-clock step
    /// cannot stretch it).
    fresh_until: Instant,
}

/// Token hash to the caller it authenticated, for at most [`TTL`].
#[derive(Default)]
pub struct TokenCache {
    /// Keyed by the hash's first 8 bytes; the entry holds the whole hash,
    /// compared in constant time.
    entries: Mutex<HashMap<u64, Entry>>,
}

/// The map key: a prefix of a SHA-256, which says nothing an attacker
/// could steer towards a token byte by byte (as with the index lookup).
fn bucket(hash: &TokenHash) -> u64 {
    u64::from_le_bytes(std::array::from_fn(|i| hash[i]))
}

impl TokenCache {
    /// The caller `hash` authenticated, if that was less than [`TTL`] ago
    /// and the token has not expired since.
    pub fn get(&self, hash: &TokenHash) -> Option<Caller> {
        self.get_at(hash, Instant::now(), Utc::now())
    }

    /// Remembers that `hash` authenticated `caller`; only for a token the
    /// store has just accepted (live, unrevoked, unexpired).
    pub fn insert(&self, hash: TokenHash, caller: Caller, expires_at: Option<DateTime<Utc>>) {
        self.insert_at(hash, caller, expires_at, Instant::now());
    }

    fn get_at(&self, hash: &TokenHash, now: Instant, wall: DateTime<Utc>) -> Option<Caller> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(&bucket(hash))?;
        let matches: bool = entry.hash.ct_eq(hash).into();
        let live = now < entry.fresh_until && entry.expires_at.is_none_or(|at| at > wall);
        (matches && live).then_some(entry.caller)
    }

    fn insert_at(
        &self,
        hash: TokenHash,
        caller: Caller,
        expires_at: Option<DateTime<Utc>>,
        now: Instant,
    ) {
        let key = bucket(&hash);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, e| now < e.fresh_until);
            // All still fresh: start over rather than pick a victim.
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            key,
            Entry {
                hash,
                caller,
                expires_at,
                fresh_until: now + TTL,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Caller = Caller {
        user_id: 7,
        is_admin: false,
    };

    fn len(cache: &TokenCache) -> usize {
        cache.entries.lock().unwrap().len()
    }

    fn hash(n: u32) -> TokenHash {
        let mut h = [0xa5; 32];
        h[..4].copy_from_slice(&n.to_le_bytes());
        h
    }

    #[test]
    fn an_entry_is_trusted_for_the_ttl_only() {
        let cache = TokenCache::default();
        let (t0, wall) = (Instant::now(), Utc::now());
        cache.insert_at(hash(1), USER, None, t0);
        assert_eq!(cache.get_at(&hash(1), t0, wall), Some(USER));
        let almost = TTL - Duration::from_millis(1);
        assert_eq!(cache.get_at(&hash(1), t0 + almost, wall), Some(USER));
        assert_eq!(cache.get_at(&hash(1), t0 + TTL, wall), None);
        // A fresh lookup starts a new TTL.
        cache.insert_at(hash(1), USER, None, t0 + TTL);
        assert_eq!(cache.get_at(&hash(1), t0 + TTL + almost, wall), Some(USER));
    }

    #[test]
    fn an_entry_ends_with_its_token() {
        let cache = TokenCache::default();
        let (t0, wall) = (Instant::now(), Utc::now());
        let expires = wall + chrono::Duration::milliseconds(300);
        cache.insert_at(hash(1), USER, Some(expires), t0);
        assert_eq!(cache.get_at(&hash(1), t0, wall), Some(USER));
        // Well within the TTL, but past the token's expiry.
        let later = Duration::from_millis(300);
        assert_eq!(cache.get_at(&hash(1), t0 + later, expires), None);
        let past = expires + chrono::Duration::milliseconds(1);
        assert_eq!(cache.get_at(&hash(1), t0, past), None);
    }

    #[test]
    fn only_the_same_hash_matches() {
        let cache = TokenCache::default();
        let (t0, wall) = (Instant::now(), Utc::now());
        cache.insert_at(hash(1), USER, None, t0);
        assert_eq!(cache.get_at(&hash(2), t0, wall), None);
        // Same map key (the first 8 bytes), different hash.
        let mut other = hash(1);
        other[31] ^= 1;
        assert_eq!(bucket(&other), bucket(&hash(1)));
        assert_eq!(cache.get_at(&other, t0, wall), None);
        assert_eq!(cache.get_at(&hash(1), t0, wall), Some(USER));
    }

    #[test]
    fn the_size_is_bounded() {
        let cache = TokenCache::default();
        let (t0, wall) = (Instant::now(), Utc::now());
        let full = u32::try_from(CAPACITY).unwrap();
        for n in 0..full {
            cache.insert_at(hash(n), USER, None, t0);
        }
        assert_eq!(len(&cache), CAPACITY);
        // Replacing an entry needs no room.
        cache.insert_at(hash(0), USER, None, t0);
        assert_eq!(len(&cache), CAPACITY);
        // Full of fresh entries: it starts over.
        cache.insert_at(hash(full), USER, None, t0);
        assert_eq!(len(&cache), 1);
        assert_eq!(cache.get_at(&hash(full), t0, wall), Some(USER));
        assert_eq!(cache.get_at(&hash(0), t0, wall), None);

        // Full, half of it stale: only the stale half goes.
        let cache = TokenCache::default();
        let half = full / 2;
        for n in 0..half {
            cache.insert_at(hash(n), USER, None, t0);
        }
        let later = t0 + TTL;
        for n in half..full {
            cache.insert_at(hash(n), USER, None, later);
        }
        assert_eq!(len(&cache), CAPACITY);
        cache.insert_at(hash(full + 1), USER, None, later);
        assert_eq!(len(&cache), CAPACITY - usize::try_from(half).unwrap() + 1);
        assert_eq!(cache.get_at(&hash(full - 1), later, wall), Some(USER));
        assert_eq!(cache.get_at(&hash(full + 1), later, wall), Some(USER));
    }
}
