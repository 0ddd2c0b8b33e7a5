//! Pruning: removing what no manifest references, crash-safe at every
//! step. New packs and the new index are written before anything is
//! deleted; old indexes go before the packs they name, so no index ever
//! points into a deleted pack. A backup staging holds [`Inner::writers`]
//! shared and keeps a prune waiting, in any process sharing the
//! repository; a pack no index names yet (another process's upload, or a
//! crash's leftover) is only deleted once it is older than [`GRACE`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use chrono::Utc;

use super::format::{Id, IdSet, Index, Location};
use super::write::{PackWriter, pack_path};
use super::{Inner, deleting_path, manifest_path};
use crate::backup::storage::Pruned;
use crate::error::{Error, Result};

/// How old a pack no index names must be before a prune deletes it.
const GRACE: chrono::Duration = chrono::Duration::hours(1);

impl Inner {
    /// Prunes the repository; see the module documentation.
    pub async fn prune(self: &Arc<Self>) -> Result<Pruned> {
        let _no_writes = self.writers.exclusive().await?;
        let indexes = self.objects.list("index").await?;
        let (index, damaged) = self.load_index().await?;
        if let Some(why) = damaged.first() {
            // The packs a damaged index names would look unreferenced.
            return Err(Error::FailedPrecondition(format!(
                "not pruning: {why}; `backup-server repo check` tells more"
            )));
        }
        let (referenced, unreadable) = self.referenced(&index).await?;
        let packs = self.objects.list("data").await?;
        let mut report = Pruned {
            bytes_before: packs.iter().map(|p| p.size).sum(),
            unreadable,
            ..Pruned::default()
        };

        // Every indexed chunk, by pack.
        let mut by_pack: HashMap<Id, Vec<(Id, Location)>> = HashMap::new();
        for (id, at) in &index {
            by_pack.entry(at.pack).or_default().push((*id, *at));
        }
        // Live chunks move in the order they were written (oldest pack
        // first, then by place in the pack), so pages written together
        // stay in the same frames and reads stay sequential.
        for chunks in by_pack.values_mut() {
            chunks.sort_by_key(|(_, at)| (at.frame_offset, at.offset));
        }
        let mut packs = packs;
        packs.sort_by_key(|p| p.modified);
        let mut kept = Vec::new();
        let mut doomed = Vec::new();
        let mut writer = PackWriter::new(&self.keys)?;
        let mut written = Vec::new();
        for listed in &packs {
            let Some(id) = listed
                .name
                .rsplit('/')
                .next()
                .and_then(|n| Id::parse(n, "pack").ok())
            else {
                continue;
            };
            let Some(chunks) = by_pack.remove(&id) else {
                if Utc::now() - listed.modified > GRACE {
                    doomed.push(id);
                }
                continue;
            };
            let live: Vec<&(Id, Location)> = chunks
                .iter()
                .filter(|(c, _)| referenced.contains(c))
                .collect();
            if live.len() == chunks.len() {
                kept.extend(chunks.iter().copied());
                continue;
            }
            // Some chunks are dead: the live ones move to new packs.
            let mut frames: HashMap<u64, Vec<u8>> = HashMap::new();
            for (chunk, at) in live {
                let frame = match frames.entry(at.frame_offset) {
                    Entry::Occupied(read) => read.into_mut(),
                    Entry::Vacant(unread) => unread.insert(self.read_frame(at).await?),
                };
                // Damage stops the prune before anything is deleted.
                let bytes = self.chunk_in(frame, *chunk, at)?;
                if let Some(pack) = writer.add(*chunk, bytes)? {
                    written.push(pack);
                }
            }
            doomed.push(id);
        }
        if let Some(pack) = writer.finish()? {
            written.push(pack);
        }
        // Packs the index names that are gone: damage for a check to
        // report. Their entries stay, so reads keep saying what is missing.
        for chunks in by_pack.values() {
            kept.extend(chunks.iter().filter(|(c, _)| referenced.contains(c)));
        }
        for pack in written {
            report.packs_written += 1;
            self.objects
                .put_content(&pack_path(&pack.id), pack.bytes)
                .await?;
            kept.extend(pack.entries);
        }
        if doomed.is_empty() && report.packs_written == 0 {
            report.bytes_after = report.bytes_before;
            return Ok(report);
        }
        // The new index first, then the old ones (never the new one: the
        // same entries in the same order make the same name), then the
        // packs.
        let new_index = match kept.is_empty() {
            true => None,
            false => Some(self.write_index(&kept).await?.0),
        };
        for old in indexes
            .iter()
            .filter(|old| Some(&old.name) != new_index.as_ref())
        {
            self.objects.delete(&format!("index/{}", old.name)).await?;
        }
        for id in &doomed {
            self.objects.delete(&pack_path(id)).await?;
            report.packs_deleted += 1;
        }
        report.bytes_after = self
            .objects
            .list("data")
            .await?
            .iter()
            .map(|p| p.size)
            .sum();
        Ok(report)
    }

    /// Every chunk id a manifest references (chunk lists included), with
    /// the backups whose lists cannot be read (their chunks stay unless
    /// nothing else keeps them). A manifest being deleted still counts: its
    /// delete may be undone.
    async fn referenced(self: &Arc<Self>, index: &Index) -> Result<(IdSet, Vec<String>)> {
        let mut manifests = Vec::new();
        for (dir, path) in [
            ("manifests", manifest_path as fn(&str) -> String),
            ("deleting", deleting_path),
        ] {
            for listed in self.objects.list(dir).await? {
                if let Some(manifest) = self.manifest_at(&path(&listed.name), &listed.name).await? {
                    manifests.push(manifest);
                }
            }
        }
        let mut referenced = IdSet::default();
        let mut unreadable = Vec::new();
        for manifest in &manifests {
            match self.chunks_of(manifest, index).await {
                Ok(ids) => referenced.extend(ids),
                Err(Error::DataLoss(why)) => {
                    tracing::warn!(backup = %manifest.name, %why, "prune: a backup's chunk lists cannot be read");
                    unreadable.push(manifest.name.clone());
                    referenced.extend(manifest.list_ids()?);
                }
                Err(e) => return Err(e),
            }
        }
        if !unreadable.is_empty() {
            // What a damaged list referenced is unknown: keep every chunk.
            referenced.extend(index.keys().copied());
        }
        Ok((referenced, unreadable))
    }
}
