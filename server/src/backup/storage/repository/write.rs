//! Storing a snapshot: cut it into chunks at SQLite page boundaries, write
//! the chunks the repository lacks into packs (zstd frames of a few
//! chunks, each sealed), then the index of those packs. What comes back is
//! the manifest to publish; nothing written before it is visible as a
//! backup.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::digest::PageMemo;
use super::format::{self, Id, IdSet, LIST_IDS, Location, Manifest};
use super::keys::Keys;
use super::{IndexObject, Inner};
use crate::backup::check_cancelled;
use crate::error::{Error, Result};

/// Raw bytes a frame collects before it is compressed: 16 pages of 4 KiB.
/// Larger frames compress better; smaller ones cost less to read for one
/// chunk.
const FRAME_BYTES: usize = 64 << 10;

/// Stored bytes a pack collects before it is written out (restic and
/// Kopia use 16 to 64 MiB): few objects, without holding much in memory.
const PACK_BYTES: usize = 16 << 20;

/// zstd's level for frames: its default, which the benchmarks measured.
pub const ZSTD_LEVEL: i32 = 3;

/// Threads compressing and sealing frames. Compression is most of a first
/// backup's work (about 1.8 s of one core per GiB of text-like pages,
/// whatever the level): two packers beside the chunker keep both cores of
/// a small server busy.
const PACKERS: usize = 2;

/// Packs the packers may finish ahead of their upload.
const PACKS_AHEAD: usize = 2;

/// Frames the chunker may fill ahead of each packer (4 MiB of pages).
const FRAMES_AHEAD: usize = 64;

/// Consecutive frames each packer takes in turn (2 MiB of pages), so they
/// lie end to end in one pack and a rebuild reads them in one request;
/// alternating single frames made every frame a read of its own. Half the
/// queue, so the other packer still has work while one's fills.
const FRAMES_PER_TURN: usize = FRAMES_AHEAD / 2;

/// The new chunks of one frame, before compression: their bytes end to
/// end, and each one's id, offset and length there.
#[derive(Default)]
pub struct Frame {
    bytes: Vec<u8>,
    chunks: Vec<(Id, u32, u32)>,
}

impl Frame {
    fn push(&mut self, id: Id, plaintext: &[u8]) {
        if self.bytes.capacity() == 0 {
            self.bytes.reserve(FRAME_BYTES * 2);
        }
        let offset = self.bytes.len() as u32;
        self.bytes.extend_from_slice(plaintext);
        self.chunks.push((id, offset, plaintext.len() as u32));
    }

    fn is_full(&self) -> bool {
        self.bytes.len() >= FRAME_BYTES
    }
}

/// Writes the frames `frames` brings into packs, each sent to `packs` once
/// full, the last one at the end.
fn pack_all(keys: &Keys, frames: Receiver<Frame>, packs: &mpsc::Sender<Pack>) -> Result<()> {
    let send = |pack: Pack| {
        packs
            .blocking_send(pack)
            .map_err(|_| Error::Cancelled("the upload stopped".into()))
    };
    let mut writer = PackWriter::new(keys)?;
    for frame in frames {
        if let Some(pack) = writer.add_frame(frame)? {
            send(pack)?;
        }
    }
    writer.finish()?.map_or(Ok(()), send)
}

/// What a pack's trailer is sealed with.
pub const TRAILER_AAD: &[u8] = b"pack trailer";

/// A finished pack, to be written, and where its chunks are in it.
pub struct Pack {
    pub id: Id,
    pub bytes: Vec<u8>,
    pub entries: Vec<(Id, Location)>,
}

/// The path of pack `id`.
pub fn pack_path(id: &Id) -> String {
    let hex = id.hex();
    format!("data/{}/{hex}", &hex[..2])
}

/// Collects frames into packs: chunk by chunk ([`Self::add`]) or a frame
/// at a time ([`Self::add_frame`]).
pub struct PackWriter<'k> {
    keys: &'k Keys,
    /// The frame [`Self::add`] fills.
    frame: Frame,
    pack: Vec<u8>,
    /// Finished entries of the open pack, its id still unknown.
    pack_chunks: Vec<(Id, u64, u32, u32, u32)>,
    /// One compression context for every frame: making one per frame
    /// cost about 2% of a backup.
    compressor: zstd::bulk::Compressor<'static>,
}

impl<'k> PackWriter<'k> {
    pub fn new(keys: &'k Keys) -> Result<Self> {
        Ok(Self {
            keys,
            frame: Frame::default(),
            pack: Vec::new(),
            pack_chunks: Vec::new(),
            compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
        })
    }

    /// Adds a chunk; returns a pack once one is full.
    pub fn add(&mut self, id: Id, plaintext: &[u8]) -> Result<Option<Pack>> {
        self.frame.push(id, plaintext);
        match self.frame.is_full() {
            true => {
                let frame = std::mem::take(&mut self.frame);
                self.add_frame(frame)
            }
            false => Ok(None),
        }
    }

    /// Adds a whole frame; returns a pack once one is full.
    pub fn add_frame(&mut self, frame: Frame) -> Result<Option<Pack>> {
        self.write_frame(frame)?;
        match self.pack.len() >= PACK_BYTES {
            true => self.take_pack().map(Some),
            false => Ok(None),
        }
    }

    /// The last pack, if anything is left in it.
    pub fn finish(mut self) -> Result<Option<Pack>> {
        let frame = std::mem::take(&mut self.frame);
        self.write_frame(frame)?;
        match self.pack.is_empty() {
            true => Ok(None),
            false => self.take_pack().map(Some),
        }
    }

    fn write_frame(&mut self, frame: Frame) -> Result<()> {
        if frame.chunks.is_empty() {
            return Ok(());
        }
        let compressed = self.compressor.compress(&frame.bytes)?;
        let sealed = self.keys.seal(b"frame", compressed);
        let frame_offset = self.pack.len() as u64;
        let frame_len = sealed.len() as u32;
        self.pack.extend_from_slice(&sealed);
        for (id, offset, len) in frame.chunks {
            self.pack_chunks
                .push((id, frame_offset, frame_len, offset, len));
        }
        Ok(())
    }

    /// The open pack, closed by its trailer: its own entries (with a zero
    /// pack id, since the id hashes the trailer too), sealed, then their
    /// sealed length, so a pack describes itself without any index.
    fn take_pack(&mut self) -> Result<Pack> {
        let mut bytes = std::mem::take(&mut self.pack);
        let located = |pack: Id, chunks: &[(Id, u64, u32, u32, u32)]| -> Vec<(Id, Location)> {
            chunks
                .iter()
                .map(|&(chunk, frame_offset, frame_len, offset, len)| {
                    let at = Location {
                        pack,
                        frame_offset,
                        frame_len,
                        offset,
                        len,
                    };
                    (chunk, at)
                })
                .collect()
        };
        let trailer = format::encode_index(&located(Id([0; 32]), &self.pack_chunks));
        let compressed = self.compressor.compress(&trailer)?;
        let sealed = self.keys.seal(TRAILER_AAD, compressed);
        bytes.extend_from_slice(&sealed);
        bytes.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        let id = Id(*blake3::hash(&bytes).as_bytes());
        let entries = located(id, &self.pack_chunks);
        self.pack_chunks.clear();
        Ok(Pack { id, bytes, entries })
    }
}

/// What chunking a snapshot found.
struct Chunked {
    size_bytes: i64,
    blake3: String,
    chunk_bytes: u32,
    lists: Vec<Id>,
    levels: u32,
}

/// The chunks the repository's index objects name, kept from one snapshot
/// of the live source to the next: each lists the index objects and reads
/// only those not read yet, and all of them again once one it read is gone
/// (a prune replaced it). About 40 bytes of memory a chunk.
#[derive(Default)]
pub struct KnownChunks {
    objects: HashSet<String>,
    chunks: IdSet,
}

impl KnownChunks {
    async fn refresh(&mut self, inner: &Inner) -> Result<()> {
        let listed: HashSet<String> = inner.objects.names("index").await?.into_iter().collect();
        if !self.objects.is_subset(&listed) {
            *self = Self::default();
        }
        let unread: Vec<String> = listed.difference(&self.objects).cloned().collect();
        for name in unread {
            // A damaged index is read again next time; its chunks are
            // written again meanwhile.
            if let IndexObject::Entries(entries) = inner.read_index(&name).await? {
                self.chunks.extend(entries.into_iter().map(|(id, _)| id));
                self.objects.insert(name);
            }
        }
        Ok(())
    }
}

/// What a store starts from, brought up to date by it: the chunks stored,
/// and for a live source the memo of its last snapshot's pages.
#[derive(Default)]
pub struct Known {
    pub chunks: KnownChunks,
    pub pages: Option<PageMemo>,
}

/// Where a snapshot's pages come from: run on a blocking thread, it hands
/// each page in order to the chunker.
pub type Pages = Box<dyn FnOnce(&mut Chunker) -> Result<()> + Send>;

/// Stores the snapshot whose pages `pages` produces (taken at `taken_at`)
/// in the repository and returns its manifest, named once published, with
/// `known` brought up to this snapshot. Once `cancel` fires it stops; what
/// it wrote is unreferenced, for a prune to take.
pub async fn store(
    inner: &Arc<Inner>,
    pages: Pages,
    mut known: Known,
    taken_at: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Result<(Manifest, Known)> {
    known.chunks.refresh(inner).await?;
    let (packs_tx, mut packs_rx) = mpsc::channel::<Pack>(PACKS_AHEAD);
    let chunker = {
        let (inner, cancel) = (inner.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || {
            // Reading and hashing on this thread, compressing and sealing
            // on the packers'.
            std::thread::scope(|scope| {
                let (senders, packers): (Vec<_>, Vec<_>) = (0..PACKERS)
                    .map(|_| {
                        let (frames_tx, frames_rx) = sync_channel(FRAMES_AHEAD);
                        let packs_tx = &packs_tx;
                        let keys = &inner.keys;
                        (
                            frames_tx,
                            scope.spawn(move || pack_all(keys, frames_rx, packs_tx)),
                        )
                    })
                    .unzip();
                let mut known = known;
                let mut chunker = Chunker::new(
                    &inner.keys,
                    &known.chunks.chunks,
                    senders,
                    known.pages.as_mut(),
                    &cancel,
                );
                let chunked = pages(&mut chunker).and_then(|()| chunker.finish());
                let mut packed = Ok(());
                for packer in packers {
                    let joined = packer
                        .join()
                        .map_err(|_| Error::Internal("a packer panicked".into()))?;
                    packed = packed.and(joined);
                }
                // A packer's error says why the chunker could not go on.
                packed.and(chunked).map(|chunked| (chunked, known))
            })
        })
    };
    let mut entries = Vec::new();
    let mut stored_bytes = 0u64;
    let mut upload_error = None;
    while let Some(pack) = packs_rx.recv().await {
        if upload_error.is_some() {
            continue;
        }
        stored_bytes += pack.bytes.len() as u64;
        let path = pack_path(&pack.id);
        match inner.objects.put_content(&path, pack.bytes).await {
            Ok(()) => entries.extend(pack.entries),
            Err(e) => upload_error = Some(e),
        }
    }
    let (chunked, known) = chunker
        .await
        .map_err(|e| Error::Internal(format!("the chunker failed: {e}")))??;
    if let Some(e) = upload_error {
        return Err(e);
    }
    if !entries.is_empty() {
        stored_bytes += inner.write_index(&entries).await?.1;
    }
    let manifest = Manifest {
        version: format::VERSION,
        name: String::new(),
        taken_at,
        size_bytes: chunked.size_bytes,
        sha256: None,
        blake3: chunked.blake3,
        chunk_bytes: chunked.chunk_bytes,
        stored_bytes,
        lists: chunked.lists.iter().map(Id::hex).collect(),
        levels: chunked.levels,
    };
    Ok((manifest, known))
}

/// How the chunker computes the file's BLAKE3.
enum Whole<'a> {
    /// Before the first page, which tells whether the memo fits.
    Unstarted(Option<&'a mut PageMemo>),
    /// From the pages' chaining values, reusing unchanged pages'.
    Memo(&'a mut PageMemo),
    /// Over every byte.
    Stream(Box<blake3::Hasher>),
}

/// Takes a snapshot's pages in order: hashes the whole (BLAKE3), gives
/// each page its id, and sends the pages the repository lacks to the
/// packers, a frame at a time. Every [`LIST_IDS`] ids make a chunk list,
/// itself a chunk.
pub struct Chunker<'a> {
    keys: &'a Keys,
    known: &'a IdSet,
    /// Where full frames go, in turn: the packers.
    packers: Vec<SyncSender<Frame>>,
    frames_sent: usize,
    cancel: &'a CancellationToken,
    /// Chunks this snapshot already sent.
    written: IdSet,
    frame: Frame,
    whole: Whole<'a>,
    pages: usize,
    size_bytes: i64,
    /// The size of every page but the last.
    chunk_bytes: Option<u32>,
    list: Vec<Id>,
    lists: Vec<Id>,
}

impl<'a> Chunker<'a> {
    fn new(
        keys: &'a Keys,
        known: &'a IdSet,
        packers: Vec<SyncSender<Frame>>,
        memo: Option<&'a mut PageMemo>,
        cancel: &'a CancellationToken,
    ) -> Self {
        Self {
            keys,
            known,
            packers,
            frames_sent: 0,
            cancel,
            written: IdSet::default(),
            frame: Frame::default(),
            whole: Whole::Unstarted(memo),
            pages: 0,
            size_bytes: 0,
            chunk_bytes: None,
            list: Vec::with_capacity(LIST_IDS),
            lists: Vec::new(),
        }
    }

    /// The next page of the snapshot.
    pub fn page(&mut self, bytes: &[u8]) -> Result<()> {
        let page_bytes = *self.chunk_bytes.get_or_insert(bytes.len() as u32) as usize;
        if let Whole::Unstarted(memo) = &mut self.whole {
            self.whole = match memo.take() {
                Some(memo) if PageMemo::fits(page_bytes) => {
                    memo.start(page_bytes);
                    Whole::Memo(memo)
                }
                _ => Whole::Stream(Box::default()),
            };
        }
        let id = match &mut self.whole {
            Whole::Memo(memo) if bytes.len() == page_bytes => {
                memo.page(self.keys, self.pages, bytes)
            }
            Whole::Stream(hasher) => {
                hasher.update(bytes);
                self.keys.chunk_id(bytes)
            }
            _ => {
                return Err(Error::Internal(
                    "a live snapshot's pages differ in size".into(),
                ));
            }
        };
        self.pages += 1;
        self.size_bytes += bytes.len() as i64;
        self.store(id, bytes)?;
        self.list.push(id);
        if self.list.len() == LIST_IDS {
            self.close_list()?;
            check_cancelled(self.cancel)?;
        }
        Ok(())
    }

    fn close_list(&mut self) -> Result<()> {
        let list = std::mem::replace(&mut self.list, Vec::with_capacity(LIST_IDS));
        let list_id = self.store_list(&list)?;
        self.lists.push(list_id);
        Ok(())
    }

    /// Stores a list of ids as a chunk; returns its id.
    fn store_list(&mut self, ids: &[Id]) -> Result<Id> {
        let encoded = format::encode_list(ids);
        let id = self.keys.chunk_id(&encoded);
        self.store(id, &encoded)?;
        Ok(id)
    }

    fn store(&mut self, id: Id, bytes: &[u8]) -> Result<()> {
        if !self.known.contains(&id) && self.written.insert(id) {
            self.frame.push(id, bytes);
            if self.frame.is_full() {
                self.send_frame()?;
            }
        }
        Ok(())
    }

    fn send_frame(&mut self) -> Result<()> {
        let frame = std::mem::take(&mut self.frame);
        let packer = &self.packers[self.frames_sent / FRAMES_PER_TURN % self.packers.len()];
        self.frames_sent += 1;
        packer
            .send(frame)
            .map_err(|_| Error::Cancelled("the packer stopped".into()))
    }

    /// The snapshot's facts; dropping the senders ends the packers' input.
    fn finish(mut self) -> Result<Chunked> {
        if !self.list.is_empty() {
            self.close_list()?;
        }
        // More than one list: the manifest names lists of them instead.
        let (lists, levels) = match self.lists.len() {
            0 | 1 => (std::mem::take(&mut self.lists), 1),
            _ => {
                let lists = std::mem::take(&mut self.lists);
                let roots = lists
                    .chunks(LIST_IDS)
                    .map(|ids| self.store_list(ids))
                    .collect::<Result<Vec<Id>>>()?;
                (roots, 2)
            }
        };
        if !self.frame.chunks.is_empty() {
            self.send_frame()?;
        }
        let blake3 = match self.whole {
            Whole::Memo(memo) => memo.finish(self.pages),
            Whole::Stream(hasher) => hasher.finalize().to_hex().to_string(),
            Whole::Unstarted(_) => blake3::hash(b"").to_hex().to_string(),
        };
        Ok(Chunked {
            size_bytes: self.size_bytes,
            blake3,
            chunk_bytes: self.chunk_bytes.unwrap_or(4096),
            lists,
            levels,
        })
    }
}

/// The pages of the standalone SQLite file at `path`, as they are.
pub fn file_pages(path: PathBuf) -> Pages {
    Box::new(move |chunker| {
        let mut file = File::open(path)?;
        let mut page = vec![0u8; page_size(&mut file)? as usize];
        loop {
            match read_full(&mut file, &mut page)? {
                0 => return Ok(()),
                n => chunker.page(&page[..n])?,
            }
        }
    })
}

/// The SQLite page size in the file's header (4096 if it has none),
/// leaving the file at its start.
fn page_size(file: &mut File) -> Result<u32> {
    use std::io::{Seek, SeekFrom};
    let mut header = [0u8; 18];
    let n = read_full(file, &mut header)?;
    file.seek(SeekFrom::Start(0))?;
    if n < header.len() || &header[..16] != b"SQLite format 3\0" {
        return Ok(4096);
    }
    Ok(match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        size if size >= 512 && size.is_power_of_two() => u32::from(size),
        _ => 4096,
    })
}

/// Fills `buf` unless the file ends first; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
