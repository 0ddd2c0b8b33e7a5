//! Rebuilding a backup's standalone file from its manifest: chunk lists,
//! then chunks, each read from its pack's frame and checked against its
//! id, so nothing damaged is ever handed out.

use std::collections::{HashMap, HashSet, VecDeque};
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

/// How far apart, in the order a chunk list first needs its frames, two
/// frames of one read may be. Frames of a later backup interleave with the
/// older frames around them, which are still read together; a frame read
/// early waits at most this many frames (8 MiB of pages) to be used.
const READ_SPREAD: usize = 128;

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
type FrameRun = Vec<Planned>;

/// The frames of a run as read, in order.
type ReadFrames = Vec<(FrameKey, CheckedFrame)>;

/// A frame a chunk list needs, with the chunks it is needed for.
type Planned = (Location, Vec<(Id, Location)>);

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
    /// The current list's frames not yet asked for, each once, in runs
    /// read together, ordered by the first chunk that needs each run.
    frames: VecDeque<FrameRun>,
    /// Runs being read ahead, in that order: read, opened and their chunks
    /// checked on the blocking pool.
    ahead: VecDeque<tokio::task::JoinHandle<Result<ReadFrames>>>,
    /// Frames of the current list planned but not arrived yet.
    unread: HashSet<FrameKey>,
    /// Frames of runs read, not yet asked for.
    arrived: HashMap<FrameKey, CheckedFrame>,
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
            unread: HashSet::new(),
            arrived: HashMap::new(),
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

    /// Lists the current list's frames in runs of frames adjacent in a
    /// pack, ordered by the chunk that first needs each run, and starts
    /// reading the first few.
    fn plan_frames(&mut self) {
        self.frames.clear();
        self.uses.clear();
        self.open.clear();
        self.unread.clear();
        self.arrived.clear();
        // Each frame once, in the order its chunks first need them.
        let mut planned: Vec<Planned> = Vec::new();
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
        self.unread = slots.into_keys().collect();
        self.frames = runs_of(planned).into();
        self.read_ahead();
    }

    fn read_ahead(&mut self) {
        while self.ahead.len() < READ_AHEAD {
            let Some(run) = self.frames.pop_front() else {
                return;
            };
            let inner = self.inner.clone();
            let read = tokio::spawn(async move { inner.read_frames(run).await });
            self.ahead.push_back(read);
        }
    }

    /// The frame at `at`: the one read ahead for it, or read now (a frame
    /// needed again after it was let go).
    async fn frame_at(&mut self, at: &Location) -> Result<CheckedFrame> {
        let key = (at.pack, at.frame_offset);
        // Runs are in the order of their first need, and each earlier run
        // was awaited when its first frame was needed: the run holding an
        // unread frame is the first still being read.
        while self.unread.contains(&key)
            && let Some(read) = self.ahead.pop_front()
        {
            self.read_ahead();
            let frames = read
                .await
                .map_err(|e| Error::Internal(format!("a frame read failed: {e}")))??;
            for (key, frame) in frames {
                self.unread.remove(&key);
                self.arrived.insert(key, frame);
            }
        }
        if let Some(frame) = self.arrived.remove(&key) {
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

/// `planned` (each frame once, in the order first needed) in runs read
/// together, in the order of the first need of each: a run holds frames
/// end to end in one pack, within [`READ_BYTES`] and [`READ_SPREAD`].
fn runs_of(planned: Vec<Planned>) -> Vec<FrameRun> {
    /// A run being planned, with where the list first needs one of its
    /// frames and where it starts in its pack.
    struct Run {
        frames: FrameRun,
        first_need: usize,
        start: u64,
    }
    let mut runs: Vec<Run> = Vec::new();
    // The run a frame starting at this pack and offset would extend.
    let mut ending_at: HashMap<FrameKey, usize> = HashMap::new();
    for (need, frame) in planned.into_iter().enumerate() {
        let at = frame.0;
        let end = at.frame_offset + u64::from(at.frame_len);
        let extends = ending_at.remove(&(at.pack, at.frame_offset)).filter(|&r| {
            runs.get(r).is_some_and(|run| {
                need - run.first_need <= READ_SPREAD && end - run.start <= READ_BYTES
            })
        });
        let r = extends.unwrap_or_else(|| {
            runs.push(Run {
                frames: Vec::new(),
                first_need: need,
                start: at.frame_offset,
            });
            runs.len() - 1
        });
        if let Some(run) = runs.get_mut(r) {
            run.frames.push(frame);
        }
        ending_at.insert((at.pack, end), r);
    }
    runs.into_iter().map(|run| run.frames).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `len` stored bytes at `offset` of pack `pack`.
    fn frame(pack: u8, offset: u64, len: u32) -> Planned {
        let at = Location {
            pack: Id([pack; 32]),
            frame_offset: offset,
            frame_len: len,
            offset: 0,
            len: 4096,
        };
        (at, Vec::new())
    }

    /// Each run as (pack, first offset, frames).
    fn shape(runs: &[FrameRun]) -> Vec<(u8, u64, usize)> {
        runs.iter()
            .filter_map(|run| {
                let (at, _) = run.first()?;
                Some((at.pack.0[0], at.frame_offset, run.len()))
            })
            .collect()
    }

    #[test]
    fn frames_end_to_end_in_a_pack_are_read_together_around_frames_of_others() {
        // An old backup's frames (pack 1) with a later one's (pack 2) in
        // between, as a backup of a few changed pages needs them.
        let planned = vec![
            frame(1, 0, 100),
            frame(2, 500, 10),
            frame(1, 100, 100),
            frame(2, 510, 10),
            frame(1, 200, 100),
            frame(1, 300, 100),
            frame(3, 0, 10),
        ];
        assert_eq!(
            shape(&runs_of(planned)),
            [(1, 0, 4), (2, 500, 2), (3, 0, 1)]
        );
    }

    #[test]
    fn a_gap_a_read_too_large_or_a_frame_needed_much_later_starts_a_new_run() {
        let half = READ_BYTES as u32 / 2;
        let mut planned = vec![
            frame(1, 0, 100),
            frame(1, 150, 100), // not where the last one ended
            frame(1, 250, half),
            frame(1, 250 + u64::from(half), half), // past READ_BYTES
        ];
        // Then one whose predecessor was first needed too long before.
        planned.extend((0..=READ_SPREAD as u64).map(|i| frame(4, i * 10, 10)));
        planned.push(frame(1, 250 + 2 * u64::from(half), 10));
        let shape = shape(&runs_of(planned));
        assert_eq!(
            shape,
            [
                (1, 0, 1),
                (1, 150, 2),
                (1, 250 + u64::from(half), 1),
                (4, 0, READ_SPREAD + 1),
                (1, 250 + 2 * u64::from(half), 1),
            ]
        );
    }
}
