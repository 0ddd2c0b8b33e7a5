//! A snapshot's pages' ids and its whole file's BLAKE3, without hashing
//! again the pages that did not change since the last snapshot of the
//! same source.
//!
//! BLAKE3 hashes a file as a tree over 1 KiB chunks. A SQLite page of at
//! least 1 KiB (always a power of two, at an offset its size divides) is a
//! subtree of that tree, whose chaining value depends on its bytes and its
//! offset alone. [`PageMemo`] keeps, for each page of the last snapshot, an
//! xxh3-128 of its bytes with its chunk id and chaining value: a page whose
//! xxh3 matches takes both from there, and the file's BLAKE3 is merged from
//! every page's value. xxh3 only tells that a page changed; what addresses
//! a chunk is always its BLAKE3 id.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};
use xxhash_rust::xxh3::xxh3_128;

use super::format::Id;
use super::keys::Keys;

/// What one page was at the last snapshot.
#[derive(Clone, Copy)]
struct Memo {
    check: u128,
    id: Id,
    chaining_value: ChainingValue,
}

/// The pages of a source's last snapshot, by position: a pure memo of
/// (position, bytes) to (id, chaining value), so any entry stays true
/// whatever became of the snapshot it came from. Whether a chunk is still
/// stored is never asked of it. About 80 bytes a page: 20 MiB for a 1 GiB
/// database of 4 KiB pages.
#[derive(Default)]
pub struct PageMemo {
    page_bytes: usize,
    pages: Vec<Memo>,
    /// The BLAKE3 of the first page alone: the file's when it is the only
    /// page.
    first_page: Option<blake3::Hash>,
}

impl PageMemo {
    /// Whether pages of `page_bytes` are subtrees of BLAKE3's tree.
    pub fn fits(page_bytes: usize) -> bool {
        page_bytes >= blake3::CHUNK_LEN && page_bytes.is_power_of_two()
    }

    /// Starts a snapshot of pages of `page_bytes` (see [`Self::fits`]);
    /// pages of another size than the last snapshot's are all new.
    pub fn start(&mut self, page_bytes: usize) {
        if page_bytes != self.page_bytes {
            self.page_bytes = page_bytes;
            self.pages.clear();
        }
        self.first_page = None;
    }

    /// The id of page `position`, whose bytes are `bytes` (of the size
    /// [`Self::start`] was given), from the memo when it did not change.
    pub fn page(&mut self, keys: &Keys, position: usize, bytes: &[u8]) -> Id {
        if position == 0 {
            self.first_page = Some(blake3::hash(bytes));
        }
        let check = xxh3_128(bytes);
        if let Some(memo) = self.pages.get(position)
            && memo.check == check
        {
            return memo.id;
        }
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset((position * self.page_bytes) as u64);
        hasher.update(bytes);
        let memo = Memo {
            check,
            id: keys.chunk_id(bytes),
            chaining_value: hasher.finalize_non_root(),
        };
        match self.pages.get_mut(position) {
            Some(old) => *old = memo,
            None => self.pages.push(memo),
        }
        memo.id
    }

    /// The BLAKE3 (hex) of the file made of the snapshot's `pages` pages,
    /// each given to [`Self::page`] in order; forgets pages past them.
    pub fn finish(&mut self, pages: usize) -> String {
        self.pages.truncate(pages);
        let values: Vec<ChainingValue> = self.pages.iter().map(|m| m.chaining_value).collect();
        let root = match (values.len(), self.first_page) {
            (0, _) => blake3::hash(b""),
            (1, Some(first)) => first,
            _ => {
                let (left, right) = values.split_at(left_len(values.len()));
                merge_subtrees_root(&merge(left), &merge(right), Mode::Hash)
            }
        };
        root.to_hex().to_string()
    }
}

/// The chaining value of the subtree over `values` (at least one).
fn merge(values: &[ChainingValue]) -> ChainingValue {
    match values {
        [one] => *one,
        _ => {
            let (left, right) = values.split_at(left_len(values.len()));
            merge_subtrees_non_root(&merge(left), &merge(right), Mode::Hash)
        }
    }
}

/// BLAKE3's left subtree over `n` > 1 equal leaves: the largest power of
/// two below `n`.
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(memo: &mut PageMemo, keys: &Keys, file: &[u8], page_bytes: usize) -> String {
        memo.start(page_bytes);
        let pages = file.chunks(page_bytes);
        let count = pages.len();
        for (position, page) in pages.enumerate() {
            assert_eq!(memo.page(keys, position, page), keys.chunk_id(page));
        }
        memo.finish(count)
    }

    #[test]
    fn the_merged_digest_is_the_files_blake3() {
        let keys = Keys::plain();
        let mut memo = PageMemo::default();
        for pages in [0usize, 1, 2, 3, 4, 5, 7, 8, 9, 31, 33] {
            for page_bytes in [1024, 4096, 65536] {
                let file: Vec<u8> = (0..pages * page_bytes)
                    .map(|i| (i * 7 % 251) as u8)
                    .collect();
                assert_eq!(
                    digest(&mut memo, &keys, &file, page_bytes),
                    blake3::hash(&file).to_hex().to_string(),
                    "{pages} pages of {page_bytes}"
                );
            }
        }
    }

    #[test]
    fn changed_pages_are_hashed_again_and_the_rest_reused() {
        let keys = Keys::plain();
        let mut memo = PageMemo::default();
        let mut file = vec![3u8; 16 * 4096];
        digest(&mut memo, &keys, &file, 4096);
        file[5 * 4096 + 17] = 9;
        file.truncate(12 * 4096);
        assert_eq!(
            digest(&mut memo, &keys, &file, 4096),
            blake3::hash(&file).to_hex().to_string()
        );
        file.extend(vec![1u8; 6 * 4096]);
        assert_eq!(
            digest(&mut memo, &keys, &file, 4096),
            blake3::hash(&file).to_hex().to_string()
        );
    }

    #[test]
    fn fits_only_pages_that_are_subtrees() {
        assert!(!PageMemo::fits(512));
        assert!(PageMemo::fits(1024) && PageMemo::fits(65536));
        assert!(!PageMemo::fits(3000));
    }
}
