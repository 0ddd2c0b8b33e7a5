//! Rebuilding a backup's standalone file from its manifest: chunk lists,
//! then chunks, each read from its pack's frame and checked against its
//! id, so nothing damaged is ever handed out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::Inner;
use super::format::{self, Id, Location, Manifest};
use super::write::pack_path;
use crate::error::{Error, Result};

/// Frames read ahead of the one being handed out: their reads and
/// decoding overlap with the checks and the sending of the chunks before.
const READ_AHEAD: usize = 4;

/// The largest frame a writer makes: a frame's worth of pages, then one
/// chunk of up to a chunk list's 128 KiB.
const MAX_FRAME_BYTES: u64 = 1 << 20;

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// A frame: its pack and its offset there.
type FrameKey = (Id, u64);

/// The chunks of one backup, in order, read one at a time.
pub struct Rebuild {
    inner: Arc<Inner>,
    index: Arc<HashMap<Id, Location>>,
    /// The backup, for errors.
    name: String,
    /// Chunk lists not yet read.
    lists: VecDeque<Id>,
    /// Chunk ids of the current list not yet read.
    chunks: VecDeque<Id>,
    /// The current list's frames not yet asked for, in the order its
    /// chunks need them.
    frames: VecDeque<Location>,
    /// Frames being read ahead, in that order.
    ahead: VecDeque<(FrameKey, tokio::task::JoinHandle<Result<Vec<u8>>>)>,
    /// The last frame read and its plaintext: chunks written together are
    /// read together.
    frame: Option<(FrameKey, Vec<u8>)>,
}

impl Rebuild {
    pub fn new(
        inner: Arc<Inner>,
        index: Arc<HashMap<Id, Location>>,
        manifest: &Manifest,
    ) -> Result<Self> {
        Ok(Self {
            inner,
            index,
            name: manifest.name.clone(),
            lists: manifest.list_ids()?.into(),
            chunks: VecDeque::new(),
            frames: VecDeque::new(),
            ahead: VecDeque::new(),
            frame: None,
        })
    }

    /// The next chunk's plaintext, checked; `None` after the last.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        while self.chunks.is_empty() {
            let Some(list) = self.lists.pop_front() else {
                return Ok(None);
            };
            let bytes = self.chunk(list).await?;
            let what = format!("a chunk list of backup {:?}", self.name);
            self.chunks = format::decode_list(&bytes, &what)?.into();
            self.plan_frames();
        }
        match self.chunks.pop_front() {
            Some(id) => self.chunk(id).await.map(Some),
            None => Ok(None),
        }
    }

    /// Lists the current list's frames in the order its chunks need them,
    /// and starts reading the first few.
    fn plan_frames(&mut self) {
        self.frames.clear();
        let mut last = None;
        for at in self.chunks.iter().filter_map(|id| self.index.get(id)) {
            let key = (at.pack, at.frame_offset);
            if last != Some(key) {
                self.frames.push_back(*at);
                last = Some(key);
            }
        }
        self.read_ahead();
    }

    fn read_ahead(&mut self) {
        while self.ahead.len() < READ_AHEAD {
            let Some(at) = self.frames.pop_front() else {
                return;
            };
            let inner = self.inner.clone();
            let read = tokio::spawn(async move { inner.read_frame(&at).await });
            self.ahead.push_back(((at.pack, at.frame_offset), read));
        }
    }

    /// The plaintext of the frame at `at`: the one read ahead for it, or
    /// read now.
    async fn frame_at(&mut self, at: &Location) -> Result<Vec<u8>> {
        let key = (at.pack, at.frame_offset);
        if self.ahead.front().is_some_and(|(ahead, _)| *ahead == key)
            && let Some((_, read)) = self.ahead.pop_front()
        {
            self.read_ahead();
            return read
                .await
                .map_err(|e| Error::Internal(format!("a frame read failed: {e}")))?;
        }
        self.inner.read_frame(at).await
    }

    /// Chunk `id`'s plaintext, from its frame, checked against `id`.
    async fn chunk(&mut self, id: Id) -> Result<Vec<u8>> {
        let at = *self.index.get(&id).ok_or_else(|| {
            Error::DataLoss(format!(
                "backup {:?}: chunk {} is in no index of the repository",
                self.name,
                &id.hex()[..12]
            ))
        })?;
        let key = (at.pack, at.frame_offset);
        if self.frame.as_ref().map(|(k, _)| *k) != Some(key) {
            let plaintext = self.frame_at(&at).await.map_err(|e| self.of_backup(e))?;
            self.frame = Some((key, plaintext));
        }
        let frame = self
            .frame
            .as_ref()
            .map(|(_, f)| f.as_slice())
            .unwrap_or_default();
        let bytes = self
            .inner
            .chunk_in(frame, id, &at)
            .map_err(|e| self.of_backup(e))?;
        Ok(bytes.to_vec())
    }

    /// Damage found while reading, naming this backup.
    fn of_backup(&self, e: Error) -> Error {
        match e {
            Error::DataLoss(why) => Error::DataLoss(format!("backup {:?}: {why}", self.name)),
            e => e,
        }
    }
}

impl Inner {
    /// The plaintext of the frame at `at`: read, then opened and
    /// decompressed on the blocking pool.
    pub async fn read_frame(self: &Arc<Self>, at: &Location) -> Result<Vec<u8>> {
        let what = format!("pack {}", &at.pack.hex()[..12]);
        let range = at.frame_offset..at.frame_offset + u64::from(at.frame_len);
        let sealed = self
            .objects
            .get_range(&pack_path(&at.pack), range, &what)
            .await?;
        let inner = self.clone();
        crate::blocking::blocking(move || inner.open_frame(sealed, &what)).await
    }

    /// A frame's plaintext from its stored bytes, in pack `what`.
    pub fn open_frame(&self, sealed: Vec<u8>, what: &str) -> Result<Vec<u8>> {
        let compressed = self
            .keys
            .open(b"frame", sealed, &format!("a frame of {what}"))?;
        let broken = |e: std::io::Error| {
            Error::DataLoss(format!("a frame of {what} does not decompress: {e}"))
        };
        // Frames record their size: decompressed with this thread's one
        // context (making one per frame cost about 3% of a download).
        match zstd::zstd_safe::get_frame_content_size(&compressed) {
            Ok(Some(size)) if size <= MAX_FRAME_BYTES => {
                DECOMPRESSOR.with(|decompressor| match &mut *decompressor.borrow_mut() {
                    Some(decompressor) => decompressor
                        .decompress(&compressed, size as usize)
                        .map_err(broken),
                    None => zstd::stream::decode_all(compressed.as_slice()).map_err(broken),
                })
            }
            _ => zstd::stream::decode_all(compressed.as_slice()).map_err(broken),
        }
    }

    /// Chunk `id`, at `at` in its frame's plaintext `frame`, checked
    /// against its id.
    pub fn chunk_in<'f>(&self, frame: &'f [u8], id: Id, at: &Location) -> Result<&'f [u8]> {
        let (start, len) = (at.offset as usize, at.len as usize);
        let bytes = frame.get(start..start + len).ok_or_else(|| {
            Error::DataLoss(format!(
                "a frame of pack {} is shorter than its index says",
                &at.pack.hex()[..12]
            ))
        })?;
        if self.keys.chunk_id(bytes) != id {
            return Err(Error::DataLoss(format!(
                "chunk {} does not match its id",
                &id.hex()[..12]
            )));
        }
        Ok(bytes)
    }

    /// A manifest's chunk lists and the chunks they list.
    pub async fn chunks_of(
        self: &Arc<Self>,
        manifest: &Manifest,
        index: &HashMap<Id, Location>,
    ) -> Result<Vec<Id>> {
        let mut ids = Vec::new();
        for list in manifest.list_ids()? {
            let at = index
                .get(&list)
                .ok_or_else(|| format::damaged("a chunk list", "in no index"))?;
            let frame = self.read_frame(at).await?;
            let bytes = self.chunk_in(&frame, list, at)?;
            ids.push(list);
            ids.extend(format::decode_list(bytes, "a chunk list")?);
        }
        Ok(ids)
    }
}
