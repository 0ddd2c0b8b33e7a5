//! What works on the repository alone, with the server stopped: listing
//! its backups, checking it (each pack read once, however many backups
//! share it), and rebuilding a backup into a file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::format::{Id, Location, Manifest};
use super::keys::KeyFile;
use super::write::{TRAILER_AAD, pack_path};
use super::{Inner, Repository, manifest_path};
use crate::backup::storage::ContentFacts;
use crate::backup::storage::checked;
use crate::blocking::blocking;
use crate::error::{Error, Result};

/// What [`Repository::check`] found.
#[derive(Debug, Default)]
pub struct Checked {
    pub backups: u64,
    pub packs: u64,
    /// Stored bytes read (with `--read-data`).
    pub bytes_read: u64,
    /// Each damaged backup, with the first thing found wrong.
    pub damaged: BTreeMap<String, String>,
    /// Damage no backup depends on (a damaged index, a pack no backup
    /// needs), and packs no index names.
    pub problems: Vec<String>,
}

impl Repository {
    /// Every backup's manifest, by name.
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut manifests = Vec::new();
        for listed in self.inner.objects.list("manifests").await? {
            let path = manifest_path(&listed.name);
            if let Some(manifest) = self.inner.manifest_at(&path, &listed.name).await? {
                manifests.push(manifest);
            }
        }
        Ok(manifests)
    }

    /// Checks that every backup can be rebuilt: its manifest and chunk
    /// lists read, and every chunk is in an index and in a pack of the
    /// indexed size. With `read_data`, every pack is also read whole, once:
    /// its bytes against its name, each frame opened, each chunk against
    /// its id.
    pub async fn check(&self, read_data: bool) -> Result<Checked> {
        let inner = &self.inner;
        let (index, damaged_indexes) = inner.load_index().await?;
        let mut checked = Checked {
            problems: damaged_indexes,
            ..Checked::default()
        };
        let mut by_pack: HashMap<Id, Vec<(Id, Location)>> = HashMap::new();
        for (id, at) in &index {
            by_pack.entry(at.pack).or_default().push((*id, *at));
        }
        let mut stored = HashMap::new();
        for listed in inner.objects.list("data").await? {
            if let Some(Ok(id)) = listed.name.rsplit('/').next().map(|n| Id::parse(n, "pack")) {
                stored.insert(id, listed.size);
            }
        }
        checked.packs = stored.len() as u64;
        // Chunk id -> what is wrong with it.
        let mut bad: HashMap<Id, String> = HashMap::new();
        for (pack, chunks) in &by_pack {
            let what = format!("pack {}", &pack.hex()[..12]);
            let Some(&size) = stored.get(pack) else {
                for (id, _) in chunks {
                    bad.insert(*id, format!("{what} is missing"));
                }
                continue;
            };
            for (id, at) in chunks {
                if at.frame_offset + u64::from(at.frame_len) > size {
                    bad.insert(*id, format!("{what} is cut short"));
                }
            }
            if read_data {
                checked.bytes_read += size;
                let (failed, problems) = inner.read_pack(pack, chunks).await?;
                bad.extend(failed);
                checked.problems.extend(problems);
            }
        }
        for pack in stored.keys().filter(|p| !by_pack.contains_key(p)) {
            checked.problems.push(format!(
                "pack {} is in no index (a prune removes it once it is an hour old)",
                &pack.hex()[..12]
            ));
        }
        for manifest in self.manifests().await? {
            checked.backups += 1;
            let problem = match inner.chunks_of(&manifest, &index).await {
                Ok(ids) => ids.iter().find_map(|id| match bad.get(id) {
                    Some(why) => Some(format!("chunk {}: {why}", &id.hex()[..12])),
                    None if !index.contains_key(id) => {
                        Some(format!("chunk {} is in no index", &id.hex()[..12]))
                    }
                    None => None,
                }),
                Err(Error::DataLoss(why)) => Some(why),
                Err(e) => return Err(e),
            };
            if let Some(why) = problem {
                checked.damaged.insert(manifest.name, why);
            }
        }
        Ok(checked)
    }

    /// Replaces key file `current` by `new`: the master key is wrapped by
    /// `new` (and read back) before every `keys/` object `current` opens
    /// is deleted, so a rotation stopped anywhere leaves a key that works,
    /// and running it again finishes it. Data is not rewritten. Returns the
    /// keys removed.
    pub async fn rotate_key(&self, current: &KeyFile, new: &KeyFile) -> Result<usize> {
        let objects = &self.inner.objects;
        let master = super::find_master_key(objects, current)
            .await?
            .ok_or_else(|| Error::FailedPrecondition("the repository has no key".into()))?;
        let name = format!("keys/{}", hex::encode(rand::random::<[u8; 8]>()));
        objects.put_new(&name, new.wrap(&master)).await?;
        let stored = objects.get(&name).await?.unwrap_or_default();
        if new.unwrap(&stored) != Some(master) {
            return Err(Error::Unavailable(
                "the new key did not read back; the old one stays".into(),
            ));
        }
        let mut removed = 0;
        for key in objects.list("keys").await? {
            let path = format!("keys/{}", key.name);
            if path == name {
                continue;
            }
            if let Some(wrapped) = objects.get(&path).await?
                && current.unwrap(&wrapped) == Some(master)
            {
                objects.delete(&path).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Rebuilds backup `name` into a new file at `to` (never over an
    /// existing one), checked chunk by chunk, against the manifest's size
    /// and BLAKE3, and as SQLite (`integrity_check`) before it appears.
    pub async fn restore_to(&self, name: &str, to: &Path) -> Result<ContentFacts> {
        let manifest = self.inner.manifest(name).await?;
        let facts = manifest.facts();
        let temp = self
            .inner
            .materialize_in(dir_of(to), &manifest, &facts)
            .await?;
        let to = to.to_owned();
        blocking(move || {
            drop(checked::open_intact(&temp.path, checked::Holder::Server)?);
            // A link never replaces a file that is there.
            std::fs::hard_link(&temp.path, &to).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    Error::AlreadyExists(format!("{} exists; restore to a new file", to.display()))
                }
                _ => e.into(),
            })?;
            std::fs::File::open(dir_of(&to))?.sync_all()?;
            Ok(())
        })
        .await?;
        Ok(facts)
    }
}

fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

impl Inner {
    /// Reads pack `pack` whole and checks `chunks` (its indexed chunks) in
    /// it: the ones that fail, with why, and what else is wrong with it.
    async fn read_pack(
        &self,
        pack: &Id,
        chunks: &[(Id, Location)],
    ) -> Result<(Vec<(Id, String)>, Vec<String>)> {
        let what = format!("pack {}", &pack.hex()[..12]);
        let Some(bytes) = self.objects.get(&pack_path(pack)).await? else {
            let missing = chunks
                .iter()
                .map(|(id, _)| (*id, format!("{what} is missing")));
            return Ok((missing.collect(), Vec::new()));
        };
        let mut problems = Vec::new();
        if Id(*blake3::hash(&bytes).as_bytes()) != *pack {
            problems.push(format!("{what}: its bytes do not match its name"));
        }
        match self.trailer(&bytes, &what) {
            Ok(listed) if listed.len() >= chunks.len() => {}
            Ok(_) => problems.push(format!(
                "{what}: its trailer lists fewer chunks than the index"
            )),
            Err(e) => problems.push(e.to_string()),
        }
        let mut bad = Vec::new();
        let mut frames: HashMap<u64, Result<Vec<u8>>> = HashMap::new();
        for (id, at) in chunks {
            let frame = frames.entry(at.frame_offset).or_insert_with(|| {
                let start = at.frame_offset as usize;
                let sealed = bytes
                    .get(start..start + at.frame_len as usize)
                    .ok_or_else(|| Error::DataLoss(format!("{what} is cut short")))?;
                self.open_frame(sealed.to_vec(), &what)
            });
            let checked = match frame {
                Ok(frame) => self.chunk_in(frame, *id, at).map(|_| ()),
                Err(e) => Err(Error::DataLoss(e.to_string())),
            };
            if let Err(e) = checked {
                bad.push((*id, e.to_string()));
            }
        }
        Ok((bad, problems))
    }

    /// The entries a pack's trailer lists (pack ids zero).
    fn trailer(&self, pack: &[u8], what: &str) -> Result<Vec<(Id, Location)>> {
        let broken = || Error::DataLoss(format!("{what}: its trailer is damaged"));
        let len_at = pack.len().checked_sub(4).ok_or_else(broken)?;
        let len = u32::from_le_bytes(pack[len_at..].try_into().map_err(|_| broken())?) as usize;
        let sealed = pack
            .get(len_at.checked_sub(len).ok_or_else(broken)?..len_at)
            .ok_or_else(broken)?;
        let opened = self.keys.open(TRAILER_AAD, sealed.to_vec(), what)?;
        let plaintext = zstd::stream::decode_all(opened.as_slice()).map_err(|_| broken())?;
        super::format::decode_index(&plaintext, what)
    }
}
