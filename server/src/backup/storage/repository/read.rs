//! Rebuilding a backup's standalone file from its manifest: chunk lists,
//! then chunks, each read from its pack's frame and checked against its
//! id, so nothing damaged is ever handed out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::Inner;
use super::format::{self, Id, Index, Location, Manifest};
use super::write::pack_path;
use crate::error::{Error, Result};

/// Runs of frames read ahead of the one being handed out: their reads and
/// decoding overlap with the checks and the sending of the chunks before.
const READ_AHEAD: usize = 4;

/// Stored bytes one read may span: frames adjacent in a pack are read and
/// opened together (about 64 frames), one read and one task for them all.
const READ_BYTES: u64 = 1 << 20;

/// Frames a rebuild keeps open for later chunks of the list being read
/// (4 MiB of pages): a page written again later sits in a newer frame
/// between pages of an older one, which is then needed again after it.
const MAX_OPEN_FRAMES: usize = 64;

/// The largest frame a writer makes: a frame's worth of pages, then one
/// chunk of up to a chunk list's 128 KiB.
const MAX_FRAME_BYTES: u64 = 1 << 20;

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// A frame: its pack and its offset there.
type FrameKey = (Id, u64);

/// Frames adjacent in one pack, read together, each with the chunks a
/// backup needs from it.
type FrameRun = Vec<(Location, Vec<(Id, Location)>)>;

/// The frames of a run as read, in order.
type ReadFrames = Vec<(FrameKey, CheckedFrame)>;

/// A frame's plaintext, with the chunks already checked against their ids
/// in it (in the order the backup needs them).
struct CheckedFrame {
    plaintext: Vec<u8>,
    checked: Vec<Id>,
}

/// The chunks of one backup, in order, read one at a time.
pub struct Rebuild {
    inner: Arc<Inner>,
    index: Arc<Index>,
    /// The backup, for errors.
    name: String,
    /// Lists of chunk lists not yet read (a manifest of two levels).
    roots: VecDeque<Id>,
    /// Chunk lists not yet read.
    lists: VecDeque<Id>,
    /// Chunk ids of the current list not yet read.
    chunks: VecDeque<Id>,
    /// The current list's frames not yet asked for, each once, in the
    /// order its chunks first need them, in runs read together.
    frames: VecDeque<FrameRun>,
    /// Runs being read ahead, in that order (by their first frame): read,
    /// opened and their chunks checked on the blocking pool.
    ahead: VecDeque<(FrameKey, tokio::task::JoinHandle<Result<ReadFrames>>)>,
    /// Frames of the last run read not yet asked for, in that order.
    arrived: VecDeque<(FrameKey, CheckedFrame)>,
    /// How many chunks of the current list each frame still serves.
    uses: HashMap<FrameKey, usize>,
    /// Frames read that later chunks of the list still need.
    open: HashMap<FrameKey, CheckedFrame>,
}

impl Rebuild {
    pub fn new(inner: Arc<Inner>, index: Arc<Index>, manifest: &Manifest) -> Result<Self> {
        let ids: VecDeque<Id> = manifest.list_ids()?.into();
        let (roots, lists) = match manifest.levels {
            2 => (ids, VecDeque::new()),
            _ => (VecDeque::new(), ids),
        };
        Ok(Self {
            inner,
            index,
            name: manifest.name.clone(),
            roots,
            lists,
            chunks: VecDeque::new(),
            frames: VecDeque::new(),
            ahead: VecDeque::new(),
            arrived: VecDeque::new(),
            uses: HashMap::new(),
            open: HashMap::new(),
        })
    }

    /// Appends the next chunk's plaintext, checked, to `out`; false after
    /// the last.
    pub async fn next_chunk_into(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        while self.chunks.is_empty() {
            if let Some(list) = self.lists.pop_front() {
                self.chunks = self.list(list).await?.into();
                self.plan_frames();
            } else if let Some(root) = self.roots.pop_front() {
                self.lists = self.list(root).await?.into();
            } else {
                return Ok(false);
            }
        }
        match self.chunks.pop_front() {
            Some(id) => self.chunk_into(id, out).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// The ids list chunk `id` holds.
    async fn list(&mut self, id: Id) -> Result<Vec<Id>> {
        let mut bytes = Vec::new();
        self.chunk_into(id, &mut bytes).await?;
        format::decode_list(&bytes, &format!("a chunk list of backup {:?}", self.name))
    }

    /// Lists the current list's frames in the order its chunks first need
    /// them, and starts reading the first few.
    fn plan_frames(&mut self) {
        self.frames.clear();
        self.uses.clear();
        self.open.clear();
        self.arrived.clear();
        let mut planned: Vec<(Location, Vec<(Id, Location)>)> = Vec::new();
        let mut slots: HashMap<FrameKey, usize> = HashMap::new();
        for id in &self.chunks {
            let Some(at) = self.index.get(id) else {
                continue;
            };
            let key = (at.pack, at.frame_offset);
            let slot = *slots.entry(key).or_insert_with(|| {
                planned.push((*at, Vec::new()));
                planned.len() - 1
            });
            planned[slot].1.push((*id, *at));
            *self.uses.entry(key).or_default() += 1;
        }
        let mut run: FrameRun = Vec::new();
        for frame in planned {
            let joins = run
                .first()
                .zip(run.last())
                .is_some_and(|((first, _), (last, _))| {
                    last.pack == frame.0.pack
                        && last.frame_offset + u64::from(last.frame_len) == frame.0.frame_offset
                        && frame.0.frame_offset + u64::from(frame.0.frame_len) - first.frame_offset
                            <= READ_BYTES
                });
            if !joins && !run.is_empty() {
                self.frames.push_back(std::mem::take(&mut run));
            }
            run.push(frame);
        }
        if !run.is_empty() {
            self.frames.push_back(run);
        }
        self.read_ahead();
    }

    fn read_ahead(&mut self) {
        while self.ahead.len() < READ_AHEAD {
            let Some(run) = self.frames.pop_front() else {
                return;
            };
            let Some((first, _)) = run.first() else {
                continue;
            };
            let key = (first.pack, first.frame_offset);
            let inner = self.inner.clone();
            let read = tokio::spawn(async move { inner.read_frames(run).await });
            self.ahead.push_back((key, read));
        }
    }

    /// The frame at `at`: the one read ahead for it, or read now (a frame
    /// needed again after it was let go).
    async fn frame_at(&mut self, at: &Location) -> Result<CheckedFrame> {
        let key = (at.pack, at.frame_offset);
        if self.arrived.is_empty()
            && self.ahead.front().is_some_and(|(ahead, _)| *ahead == key)
            && let Some((_, read)) = self.ahead.pop_front()
        {
            self.read_ahead();
            let frames = read
                .await
                .map_err(|e| Error::Internal(format!("a frame read failed: {e}")))??;
            self.arrived.extend(frames);
        }
        if self
            .arrived
            .front()
            .is_some_and(|(arrived, _)| *arrived == key)
            && let Some((_, frame)) = self.arrived.pop_front()
        {
            return Ok(frame);
        }
        let plaintext = self.inner.read_frame(at).await?;
        Ok(CheckedFrame {
            plaintext,
            checked: Vec::new(),
        })
    }

    /// Appends chunk `id`'s plaintext, from its frame and checked against
    /// `id`, to `out`.
    async fn chunk_into(&mut self, id: Id, out: &mut Vec<u8>) -> Result<()> {
        let at = *self.index.get(&id).ok_or_else(|| {
            Error::DataLoss(format!(
                "backup {:?}: chunk {} is in no index of the repository",
                self.name,
                &id.hex()[..12]
            ))
        })?;
        let key = (at.pack, at.frame_offset);
        let frame = match self.open.remove(&key) {
            Some(frame) => frame,
            None => self.frame_at(&at).await.map_err(|e| self.of_backup(e))?,
        };
        out.extend_from_slice(match frame.checked.contains(&id) {
            true => frame
                .plaintext
                .get(at.offset as usize..(at.offset + at.len) as usize)
                .unwrap_or_default(),
            false => self
                .inner
                .chunk_in(&frame.plaintext, id, &at)
                .map_err(|e| self.of_backup(e))?,
        });
        // Kept while later chunks of the list need it, within the bound
        // (past it, a frame needed again is read again).
        let left = self.uses.get_mut(&key).map_or(0, |left| {
            *left = left.saturating_sub(1);
            *left
        });
        if left > 0 && self.open.len() < MAX_OPEN_FRAMES {
            self.open.insert(key, frame);
        }
        Ok(())
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
        let mut frames = self.read_frames(vec![(*at, Vec::new())]).await?;
        Ok(frames
            .pop()
            .map(|(_, frame)| frame.plaintext)
            .unwrap_or_default())
    }

    /// The frames of `run` (adjacent in one pack) in one read, opened and
    /// the chunks each is needed for checked, on the blocking pool.
    async fn read_frames(self: &Arc<Self>, run: FrameRun) -> Result<ReadFrames> {
        let (Some((first, _)), Some((last, _))) = (run.first(), run.last()) else {
            return Ok(Vec::new());
        };
        let (pack, start) = (first.pack, first.frame_offset);
        let what = format!("pack {}", &pack.hex()[..12]);
        let range = start..last.frame_offset + u64::from(last.frame_len);
        let sealed = self
            .objects
            .get_range(&pack_path(&pack), range, &what)
            .await?;
        let inner = self.clone();
        crate::blocking::blocking(move || {
            run.into_iter()
                .map(|(at, needed)| {
                    let from = (at.frame_offset - start) as usize;
                    let bytes =
                        sealed
                            .get(from..from + at.frame_len as usize)
                            .ok_or_else(|| {
                                format::damaged(&what, "it is shorter than its index says")
                            })?;
                    let plaintext = inner.open_frame(bytes.to_vec(), &what)?;
                    for (id, at) in &needed {
                        inner.chunk_in(&plaintext, *id, at)?;
                    }
                    let checked = needed.into_iter().map(|(id, _)| id).collect();
                    Ok((
                        (at.pack, at.frame_offset),
                        CheckedFrame { plaintext, checked },
                    ))
                })
                .collect()
        })
        .await
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

    /// A manifest's chunk lists (and lists of them) and the chunks they
    /// list.
    pub async fn chunks_of(
        self: &Arc<Self>,
        manifest: &Manifest,
        index: &Index,
    ) -> Result<Vec<Id>> {
        let mut ids = Vec::new();
        let mut lists = manifest.list_ids()?;
        if manifest.levels == 2 {
            for root in std::mem::take(&mut lists) {
                ids.push(root);
                lists.extend(self.list_at(root, index).await?);
            }
        }
        for list in lists {
            ids.push(list);
            ids.extend(self.list_at(list, index).await?);
        }
        Ok(ids)
    }

    /// The ids list chunk `id` holds, read by itself.
    async fn list_at(self: &Arc<Self>, id: Id, index: &Index) -> Result<Vec<Id>> {
        let at = index
            .get(&id)
            .ok_or_else(|| format::damaged("a chunk list", "in no index"))?;
        let frame = self.read_frame(at).await?;
        format::decode_list(self.chunk_in(&frame, id, at)?, "a chunk list")
    }
}
