//! The repository's objects as bytes: chunk ids, index records, chunk
//! lists and manifests, encoded and decoded exactly as `docs/REPOSITORY.md`
//! describes them. No I/O here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::storage::ContentFacts;
use crate::error::{Error, Result};

/// Format version written in the config, and every manifest.
pub const VERSION: u32 = 1;

/// What the config object says the repository is.
pub const FORMAT_NAME: &str = "sqlite-backup-repository";

/// Magic that opens an index object's plaintext: records grouped by pack
/// and frame (written), or one fixed record per chunk (still read).
const INDEX_MAGIC: &[u8; 8] = b"SQBKIDX2";
const INDEX_MAGIC_V1: &[u8; 8] = b"SQBKIDX1";

/// Chunk ids one chunk list holds (32 bytes each: 128 KiB).
pub const LIST_IDS: usize = 4096;

/// A 32-byte content address: the BLAKE3 hash (keyed when encrypted) of
/// a chunk's plaintext, or the BLAKE3 hash of a pack's or index's stored
/// bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

/// An id is already a uniform hash: its first 8 bytes index a map as well
/// as hashing all 32 would.
impl std::hash::Hash for Id {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (head, _) = take::<8>(&self.0);
        state.write_u64(u64::from_le_bytes(head));
    }
}

/// The hasher of maps keyed by [`Id`]: the value [`Id`]'s `Hash` writes,
/// as it is (a backup of 1 GiB looks up a quarter of a million ids).
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type IdBuildHasher = std::hash::BuildHasherDefault<IdHasher>;

/// A map keyed by chunk or pack id.
pub type IdMap<V> = std::collections::HashMap<Id, V, IdBuildHasher>;

/// A set of chunk or pack ids.
pub type IdSet = std::collections::HashSet<Id, IdBuildHasher>;

/// Where every chunk of the repository is.
pub type Index = IdMap<Location>;

impl Id {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits; `what` names the object in the error.
    pub fn parse(hex_id: &str, what: &str) -> Result<Self> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(hex_id, &mut id)
            .map_err(|_| damaged(what, &format!("{:?} is not an id", prefix(hex_id))))?;
        Ok(Self(id))
    }
}

/// Where a chunk's plaintext is: inside the frame at `frame_offset` (of
/// `frame_len` stored bytes) in pack `pack`, at `offset` of the frame's
/// decompressed bytes, `len` bytes long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: Id,
    pub frame_offset: u64,
    pub frame_len: u32,
    pub offset: u32,
    pub len: u32,
}

/// Bytes of one `SQBKIDX1` record: chunk id, pack id, then four numbers.
const RECORD_V1: usize = 32 + 32 + 8 + 4 + 4 + 4;

/// An index object's plaintext for `entries`: each run of entries of one
/// pack says the pack once, and each run of one frame says the frame once,
/// so a chunk costs 40 bytes (its id, offset and length).
pub fn encode_index(entries: &[(Id, Location)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_MAGIC.len() + entries.len() * 41);
    out.extend_from_slice(INDEX_MAGIC);
    for pack in entries.chunk_by(|(_, a), (_, b)| a.pack == b.pack) {
        let frames: Vec<&[(Id, Location)]> = pack
            .chunk_by(|(_, a), (_, b)| {
                (a.frame_offset, a.frame_len) == (b.frame_offset, b.frame_len)
            })
            .collect();
        out.extend_from_slice(&pack[0].1.pack.0);
        out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
        for frame in frames {
            let at = frame[0].1;
            out.extend_from_slice(&at.frame_offset.to_le_bytes());
            out.extend_from_slice(&at.frame_len.to_le_bytes());
            out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            for (id, at) in frame {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&at.offset.to_le_bytes());
                out.extend_from_slice(&at.len.to_le_bytes());
            }
        }
    }
    out
}

/// The entries of an index object's plaintext; `what` names it in errors.
pub fn decode_index(bytes: &[u8], what: &str) -> Result<Vec<(Id, Location)>> {
    if let Some(records) = bytes.strip_prefix(INDEX_MAGIC_V1.as_slice()) {
        return decode_index_v1(records, what);
    }
    let mut rest = Reader {
        bytes: bytes
            .strip_prefix(INDEX_MAGIC.as_slice())
            .ok_or_else(|| damaged(what, "not an index"))?,
        what,
    };
    let mut entries = Vec::new();
    while !rest.bytes.is_empty() {
        let pack = Id(rest.take::<32>()?);
        for _ in 0..u32::from_le_bytes(rest.take()?) {
            let frame_offset = u64::from_le_bytes(rest.take()?);
            let frame_len = u32::from_le_bytes(rest.take()?);
            for _ in 0..u32::from_le_bytes(rest.take()?) {
                let id = Id(rest.take::<32>()?);
                let at = Location {
                    pack,
                    frame_offset,
                    frame_len,
                    offset: u32::from_le_bytes(rest.take()?),
                    len: u32::from_le_bytes(rest.take()?),
                };
                entries.push((id, at));
            }
        }
    }
    Ok(entries)
}

/// Bytes being decoded; running out is damage to `what`.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'a str,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.bytes.len() < N {
            return Err(damaged(self.what, "cut short"));
        }
        let (head, rest) = take::<N>(self.bytes);
        self.bytes = rest;
        Ok(head)
    }
}

/// `SQBKIDX1` records, as servers before the grouped index wrote them.
fn decode_index_v1(records: &[u8], what: &str) -> Result<Vec<(Id, Location)>> {
    if !records.len().is_multiple_of(RECORD_V1) {
        return Err(damaged(what, "not an index, or cut short"));
    }
    Ok(records
        .chunks_exact(RECORD_V1)
        .map(|r| {
            let (id, r) = take::<32>(r);
            let (pack, r) = take::<32>(r);
            let (frame_offset, r) = take::<8>(r);
            let (frame_len, r) = take::<4>(r);
            let (offset, r) = take::<4>(r);
            let (len, _) = take::<4>(r);
            let at = Location {
                pack: Id(pack),
                frame_offset: u64::from_le_bytes(frame_offset),
                frame_len: u32::from_le_bytes(frame_len),
                offset: u32::from_le_bytes(offset),
                len: u32::from_le_bytes(len),
            };
            (Id(id), at)
        })
        .collect())
}

/// The first `N` bytes of `bytes` (which has at least that many), and the
/// rest.
fn take<const N: usize>(bytes: &[u8]) -> ([u8; N], &[u8]) {
    let (head, rest) = bytes.split_at(N);
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    (out, rest)
}

/// A chunk list's plaintext: the ids, concatenated.
pub fn encode_list(ids: &[Id]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.0).collect()
}

/// The ids of a chunk list's plaintext.
pub fn decode_list(bytes: &[u8], what: &str) -> Result<Vec<Id>> {
    if !bytes.len().is_multiple_of(32) {
        return Err(damaged(what, "a chunk list cut short"));
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| Id(take::<32>(c).0))
        .collect())
}

/// The repository's config object, stored in plain JSON: what a reader
/// must know before it can read anything else.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    pub format: String,
    pub version: u32,
    /// Whether objects are sealed with a key (see `keys/`).
    pub encrypted: bool,
}

/// A backup: everything needed to rebuild its standalone SQLite file.
/// Stored (sealed, JSON) as `manifests/<name>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub version: u32,
    /// The backup's file name, which the manifest is stored under; sealed
    /// with it, so a manifest cannot pass under another name.
    pub name: String,
    /// When the snapshot was taken.
    pub taken_at: DateTime<Utc>,
    /// The standalone file's size in bytes.
    pub size_bytes: i64,
    /// Its BLAKE3 (lowercase hex), and its SHA-256 where it is known: a
    /// backup moved in from a full copy, or written by a server before
    /// this one (which computed it for every backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub blake3: String,
    /// The size of each chunk but the last (the SQLite page size).
    pub chunk_bytes: u32,
    /// Stored bytes the backup's snapshot added to the repository.
    pub stored_bytes: u64,
    /// Ids of the chunk lists, in order; each lists up to [`LIST_IDS`]
    /// chunk ids, and the file is their chunks concatenated. With
    /// [`Self::levels`] 2, each of these lists the ids of chunk lists.
    pub lists: Vec<String>,
    /// 1 (the default, left out): `lists` names the chunk lists. 2: it names
    /// lists of chunk lists, so a manifest stays small (one id for up to 64
    /// GiB of 4 KiB pages) whatever the backup's size.
    #[serde(default = "one_level", skip_serializing_if = "is_one_level")]
    pub levels: u32,
}

fn one_level() -> u32 {
    1
}

fn is_one_level(levels: &u32) -> bool {
    *levels == 1
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        let manifest: Self = serde_json::from_slice(bytes)
            .map_err(|e| damaged(&format!("manifest {name:?}"), &e.to_string()))?;
        if manifest.version != VERSION {
            return Err(Error::FailedPrecondition(format!(
                "manifest {name:?} is of format version {}, which this server does not read",
                manifest.version
            )));
        }
        if !(1..=2).contains(&manifest.levels) {
            return Err(damaged(
                &format!("manifest {name:?}"),
                &format!("it has {} levels of chunk lists", manifest.levels),
            ));
        }
        if manifest.name != name {
            return Err(damaged(
                &format!("manifest {name:?}"),
                "it names another backup",
            ));
        }
        Ok(manifest)
    }

    /// What the rebuilt file is checked against.
    pub fn facts(&self) -> ContentFacts {
        ContentFacts {
            size_bytes: self.size_bytes,
            sha256: self.sha256.clone(),
            blake3: Some(self.blake3.clone()),
        }
    }

    pub fn list_ids(&self) -> Result<Vec<Id>> {
        let what = format!("manifest {:?}", self.name);
        self.lists.iter().map(|id| Id::parse(id, &what)).collect()
    }
}

/// Damage found in the repository: DATA_LOSS naming the object.
pub fn damaged(what: &str, why: &str) -> Error {
    Error::DataLoss(format!("{what} is damaged: {why}"))
}

fn prefix(text: &str) -> &str {
    text.get(..16).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_records_round_trip_and_cut_ones_are_damage() {
        let at = Location {
            pack: Id([7; 32]),
            frame_offset: 1 << 40,
            frame_len: 70_000,
            offset: 4096,
            len: 4096,
        };
        let next_frame = Location {
            frame_offset: at.frame_offset + 70_000,
            offset: 0,
            ..at
        };
        let other_pack = Location {
            pack: Id([8; 32]),
            ..at
        };
        // Runs of packs and frames, a pack coming back after another.
        let entries = vec![
            (Id([1; 32]), at),
            (Id([2; 32]), at),
            (Id([3; 32]), next_frame),
            (Id([4; 32]), other_pack),
            (Id([5; 32]), at),
        ];
        let bytes = encode_index(&entries);
        assert_eq!(decode_index(&bytes, "index").unwrap(), entries);
        // 40 bytes a chunk, 16 a frame, 36 a run of one pack.
        assert_eq!(bytes.len(), 8 + 5 * 40 + 4 * 16 + 3 * 36);
        let cut = decode_index(&bytes[..bytes.len() - 1], "index x");
        assert!(matches!(cut, Err(Error::DataLoss(m)) if m.contains("index x")));
        assert!(decode_index(b"nonsense", "index").is_err());

        // What servers before the grouped index wrote: one record a chunk.
        let mut v1 = INDEX_MAGIC_V1.to_vec();
        for (id, at) in &entries {
            v1.extend_from_slice(&id.0);
            v1.extend_from_slice(&at.pack.0);
            v1.extend_from_slice(&at.frame_offset.to_le_bytes());
            v1.extend_from_slice(&at.frame_len.to_le_bytes());
            v1.extend_from_slice(&at.offset.to_le_bytes());
            v1.extend_from_slice(&at.len.to_le_bytes());
        }
        assert_eq!(decode_index(&v1, "index").unwrap(), entries);
        assert!(decode_index(&v1[..v1.len() - 1], "index").is_err());
    }

    #[test]
    fn a_manifest_is_bound_to_its_name() {
        let manifest = Manifest {
            version: VERSION,
            name: "a.db".into(),
            taken_at: Utc::now(),
            size_bytes: 8192,
            sha256: Some("0".repeat(64)),
            blake3: "1".repeat(64),
            chunk_bytes: 4096,
            stored_bytes: 100,
            lists: vec![Id([3; 32]).hex()],
            levels: 1,
        };
        assert!(
            !String::from_utf8(manifest.encode())
                .unwrap()
                .contains("levels"),
            "one level is left out"
        );
        let bytes = manifest.encode();
        assert_eq!(Manifest::decode(&bytes, "a.db").unwrap(), manifest);
        assert!(matches!(
            Manifest::decode(&bytes, "b.db"),
            Err(Error::DataLoss(_))
        ));
        assert_eq!(manifest.list_ids().unwrap(), [Id([3; 32])]);
    }
}
