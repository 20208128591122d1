//! The consolidated index (a "table"): every blob of the packs a prune kept, sorted by id, in
//! fixed-size pages, so a push can look blobs up by reading a few pages instead of loading
//! every index object. A push's time and memory then follow what it pushes, not what the store
//! holds: it reads the table's directory (16 bytes per page of 128 blobs) and one page per
//! lookup.
//!
//! Tables are index objects (`index/<id>`, the id is the BLAKE3 of the whole object) written by
//! prune in place of the objects they consolidate; readers that load the whole index decode
//! them like any index object ([`decode_full`]), a push opens them lazily ([`TableReader`]).
//!
//! ```text
//! "POTABLE1" | u32 header_len | header (sealed) | entry pages | pack pages
//! header: u32 version (1), u64 n_entries, u32 n_packs, u64 pack_bytes, u32 n_supersedes,
//!         n × id[32], then per entry page: first id prefix u64, hash[16]; then per pack page:
//!         hash[16]; then blake3(everything before)[32]
//! entry page: 128 × ( id[32], pack u32, offset u32, length u32, raw_length u32, kind u8,
//!                     compression u8 ), zero-padded, sealed; sorted by id across pages
//! pack page: 128 × pack id[32], zero-padded, sealed; a pack's position is its number above
//! ```
//! Every page is sealed separately (all the same size), and its BLAKE3 (first 16 bytes, of the
//! sealed bytes) is in the header: a damaged, swapped or truncated page is detected. Integers
//! are little-endian.

use super::backend::Backend;
use super::crypto::{Crypto, ObjectKind, Sealed};
use super::id::Id;
use super::index::{IndexFile, Reader};
use super::pack::{BlobKind, Compression, PackEntry, pack_len};
use anyhow::{Context, ensure};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub const TABLE_MAGIC: &[u8; 8] = b"POTABLE1";
const VERSION: u32 = 1;
/// Blobs (or pack ids) per page.
pub const PER_PAGE: usize = 128;
const ENTRY_LEN: usize = 32 + 4 * 4 + 2;
const ENTRY_PAGE: usize = PER_PAGE * ENTRY_LEN;
const PACK_PAGE: usize = PER_PAGE * 32;
const PAGE_HASH: usize = 16;
/// Pack pages a reader keeps (a push resolves the packs of its parent's trees, which repeat).
const PACK_PAGES_CACHED: usize = 64;
/// Entry pages a reader keeps (about 26 MiB): a push of many small files looks up more blobs
/// than a small table has pages, and reads each page once.
const ENTRY_PAGES_CACHED: usize = 4096;

fn page_hash(sealed: &[u8]) -> [u8; PAGE_HASH] {
    blake3::hash(sealed).as_bytes()[..PAGE_HASH].try_into().expect("16 of 32 bytes")
}

fn prefix(id: &Id) -> u64 {
    u64::from_be_bytes(id.0[..8].try_into().expect("8 of 32 bytes"))
}

/// True when `bytes` (at least the first 8 of an index object) start a table.
pub fn is_table(bytes: &[u8]) -> bool {
    bytes.len() >= TABLE_MAGIC.len() && &bytes[..TABLE_MAGIC.len()] == TABLE_MAGIC
}

/// Encodes a table of `packs` (each pack's entries; a blob in several packs is kept once, in
/// the first pack by pack id). `supersedes`: the index objects it replaces.
pub fn encode(crypto: &Crypto, supersedes: &[Id], packs: &[(Id, Vec<PackEntry>)]) -> Vec<u8> {
    let mut order: Vec<&(Id, Vec<PackEntry>)> = packs.iter().collect();
    order.sort_by_key(|(id, _)| *id);
    order.dedup_by_key(|(id, _)| *id);
    let pack_bytes: u64 = order.iter().map(|(_, e)| pack_len(e, crypto.overhead())).sum();
    let mut entries: Vec<(u32, &PackEntry)> =
        order.iter().enumerate().flat_map(|(n, (_, es))| es.iter().map(move |e| (n as u32, e))).collect();
    entries.sort_by(|a, b| a.1.id.cmp(&b.1.id).then(a.0.cmp(&b.0)));
    entries.dedup_by_key(|(_, e)| e.id);

    let mut pages = Vec::new();
    let mut directory = Vec::new();
    let mut plain = Vec::with_capacity(ENTRY_PAGE);
    for chunk in entries.chunks(PER_PAGE) {
        plain.clear();
        for (pack, e) in chunk {
            plain.extend_from_slice(&e.id.0);
            plain.extend_from_slice(&pack.to_le_bytes());
            plain.extend_from_slice(&e.offset.to_le_bytes());
            plain.extend_from_slice(&e.length.to_le_bytes());
            plain.extend_from_slice(&e.raw_length.to_le_bytes());
            plain.push(e.kind as u8);
            plain.push(e.compression as u8);
        }
        plain.resize(ENTRY_PAGE, 0);
        let sealed = crypto.seal(Sealed::Object(ObjectKind::IndexPage), &plain);
        directory.extend_from_slice(&prefix(&chunk[0].1.id).to_le_bytes());
        directory.extend_from_slice(&page_hash(&sealed));
        pages.extend_from_slice(&sealed);
    }
    for chunk in order.chunks(PER_PAGE) {
        plain.clear();
        for (id, _) in chunk {
            plain.extend_from_slice(&id.0);
        }
        plain.resize(PACK_PAGE, 0);
        let sealed = crypto.seal(Sealed::Object(ObjectKind::IndexPage), &plain);
        directory.extend_from_slice(&page_hash(&sealed));
        pages.extend_from_slice(&sealed);
    }

    let mut header = Vec::with_capacity(40 + supersedes.len() * 32 + directory.len() + 32);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    header.extend_from_slice(&(order.len() as u32).to_le_bytes());
    header.extend_from_slice(&pack_bytes.to_le_bytes());
    header.extend_from_slice(&(supersedes.len() as u32).to_le_bytes());
    for id in supersedes {
        header.extend_from_slice(&id.0);
    }
    header.extend_from_slice(&directory);
    let check = blake3::hash(&header);
    header.extend_from_slice(check.as_bytes());
    let header = crypto.seal(Sealed::Object(ObjectKind::IndexTable), &header);

    let mut out = Vec::with_capacity(12 + header.len() + pages.len());
    out.extend_from_slice(TABLE_MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&pages);
    out
}

/// What a table's header says.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub entries: u64,
    pub packs: u32,
    /// Bytes of the packs it indexes.
    pub pack_bytes: u64,
    pub supersedes: Vec<Id>,
    /// First id prefix of each entry page.
    prefixes: Vec<u64>,
    entry_hashes: Vec<[u8; PAGE_HASH]>,
    pack_hashes: Vec<[u8; PAGE_HASH]>,
    /// Where the pages start in the object, and each sealed page's length.
    pages_at: u64,
    entry_page_len: u64,
    pack_page_len: u64,
}

impl Header {
    fn entry_pages(&self) -> usize {
        self.prefixes.len()
    }

    fn entry_page_at(&self, n: usize) -> u64 {
        self.pages_at + n as u64 * self.entry_page_len
    }

    fn pack_page_at(&self, n: usize) -> u64 {
        self.pages_at + self.entry_pages() as u64 * self.entry_page_len + n as u64 * self.pack_page_len
    }

    /// The object's length this header describes.
    fn object_len(&self) -> u64 {
        self.pack_page_at(self.pack_hashes.len())
    }

    /// The entry pages that can hold `id`: the last page starting at or before it, and the
    /// pages before that start with the same prefix.
    fn pages_for(&self, id: &Id) -> std::ops::Range<usize> {
        let p = prefix(id);
        let end = self.prefixes.partition_point(|&first| first <= p);
        if end == 0 {
            return 0..0;
        }
        let start = self.prefixes[..end - 1].partition_point(|&first| first < p).min(end - 1);
        start..end
    }
}

/// The bytes of the header (`"POTABLE1" | u32 len` read before).
fn parse_header(crypto: &Crypto, head_len: u64, sealed: &[u8]) -> anyhow::Result<Header> {
    let plain = crypto.open(Sealed::Object(ObjectKind::IndexTable), sealed)?;
    ensure!(plain.len() >= 32, "index table header is truncated");
    let (body, check) = plain.split_at(plain.len() - 32);
    ensure!(blake3::hash(body).as_bytes() == check, "index table header is damaged (checksum)");
    let mut r = Reader::new(body, "index table header");
    let version = r.u32()?;
    ensure!(version == VERSION, "index table version {version} is not known to this program: upgrade it");
    let entries = r.u64()?;
    let packs = r.u32()?;
    let pack_bytes = r.u64()?;
    let n_sup = r.u32()? as usize;
    let mut supersedes = Vec::with_capacity(n_sup.min(1 << 20));
    for _ in 0..n_sup {
        supersedes.push(r.id()?);
    }
    let entry_pages = entries.div_ceil(PER_PAGE as u64) as usize;
    let pack_pages = (packs as usize).div_ceil(PER_PAGE);
    let mut prefixes = Vec::with_capacity(entry_pages);
    let mut entry_hashes = Vec::with_capacity(entry_pages);
    for _ in 0..entry_pages {
        prefixes.push(r.u64()?);
        entry_hashes.push(r.take(PAGE_HASH)?.try_into().expect("16 bytes"));
    }
    let mut pack_hashes = Vec::with_capacity(pack_pages);
    for _ in 0..pack_pages {
        pack_hashes.push(r.take(PAGE_HASH)?.try_into().expect("16 bytes"));
    }
    ensure!(r.pos == body.len(), "index table header has {} trailing bytes", body.len() - r.pos);
    let overhead = crypto.overhead() as u64;
    Ok(Header {
        entries,
        packs,
        pack_bytes,
        supersedes,
        prefixes,
        entry_hashes,
        pack_hashes,
        pages_at: head_len,
        entry_page_len: ENTRY_PAGE as u64 + overhead,
        pack_page_len: PACK_PAGE as u64 + overhead,
    })
}

/// The length of the magic and the header, from the first 12 bytes of a table.
fn head_len(first: &[u8]) -> anyhow::Result<u64> {
    ensure!(first.len() >= 12 && is_table(first), "not an index table (bad magic)");
    Ok(12 + u32::from_le_bytes(first[8..12].try_into().expect("4 bytes")) as u64)
}

fn open_page<'a>(
    crypto: &Crypto,
    hash: &[u8; PAGE_HASH],
    sealed: &'a [u8],
) -> anyhow::Result<std::borrow::Cow<'a, [u8]>> {
    ensure!(&page_hash(sealed) == hash, "index table page is damaged (checksum)");
    Ok(crypto.open(Sealed::Object(ObjectKind::IndexPage), sealed)?)
}

/// The first `count` (at most a page's) pack ids of a pack page.
fn pack_page_ids(plain: &[u8], count: usize) -> impl Iterator<Item = Id> + '_ {
    plain.chunks_exact(32).take(count.min(PER_PAGE)).map(|c| Id(c.try_into().expect("32 bytes")))
}

fn parse_entry(b: &[u8]) -> anyhow::Result<(u32, PackEntry)> {
    let u = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    Ok((
        u(32),
        PackEntry {
            id: Id(b[..32].try_into().expect("32 bytes")),
            offset: u(36),
            length: u(40),
            raw_length: u(44),
            kind: BlobKind::from_u8(b[48])?,
            compression: Compression::from_u8(b[49])?,
        },
    ))
}

/// Decodes a whole table into the packs it indexes (for readers that load the whole index).
pub fn decode_full(crypto: &Crypto, bytes: &[u8]) -> anyhow::Result<IndexFile> {
    let head = head_len(bytes)?;
    ensure!(bytes.len() as u64 >= head, "index table is truncated");
    let h = parse_header(crypto, head, &bytes[12..head as usize])?;
    ensure!(
        bytes.len() as u64 == h.object_len(),
        "index table is {} bytes, its header says {}",
        bytes.len(),
        h.object_len()
    );
    let page = |at: u64, len: u64| &bytes[at as usize..(at + len) as usize];
    let mut pack_ids = Vec::with_capacity(h.packs as usize);
    for (n, hash) in h.pack_hashes.iter().enumerate() {
        let plain = open_page(crypto, hash, page(h.pack_page_at(n), h.pack_page_len))?;
        pack_ids.extend(pack_page_ids(&plain, h.packs as usize - pack_ids.len()));
    }
    let mut by_pack: Vec<Vec<PackEntry>> = vec![Vec::new(); pack_ids.len()];
    let mut left = h.entries as usize;
    for (n, hash) in h.entry_hashes.iter().enumerate() {
        let plain = open_page(crypto, hash, page(h.entry_page_at(n), h.entry_page_len))?;
        for b in plain.chunks_exact(ENTRY_LEN).take(left.min(PER_PAGE)) {
            let (pack, e) = parse_entry(b)?;
            by_pack.get_mut(pack as usize).context("index table entry names a pack it does not list")?.push(e);
        }
        left -= left.min(PER_PAGE);
    }
    let packs = pack_ids
        .into_iter()
        .zip(by_pack)
        .map(|(id, mut es)| {
            es.sort_by_key(|e| e.offset);
            (id, es)
        })
        .collect();
    Ok(IndexFile { supersedes: h.supersedes, packs })
}

/// A table read in part: its header in memory, pages read on demand.
pub struct TableReader {
    backend: Arc<dyn Backend>,
    crypto: Arc<Crypto>,
    key: String,
    pub header: Header,
    pack_pages: PageCache<Vec<Id>>,
    entry_pages: PageCache<Vec<u8>>,
    bytes_read: AtomicU64,
    pages_read: AtomicU64,
}

impl TableReader {
    /// Reads the header of the table at `key` (two range requests).
    pub fn open(backend: Arc<dyn Backend>, crypto: Arc<Crypto>, key: &str, size: u64) -> anyhow::Result<TableReader> {
        let first = backend.get_range(key, 0, 12.min(size))?;
        let head = head_len(&first).with_context(|| format!("index object {key}"))?;
        let sealed = backend.get_range(key, 12, head - 12)?;
        let header = parse_header(&crypto, head, &sealed).with_context(|| format!("index table {key}"))?;
        ensure!(
            header.object_len() == size,
            "index table {key} is {size} bytes, its header says {}: it is damaged",
            header.object_len()
        );
        Ok(TableReader {
            backend,
            crypto,
            key: key.to_string(),
            header,
            pack_pages: PageCache::new(PACK_PAGES_CACHED),
            entry_pages: PageCache::new(ENTRY_PAGES_CACHED),
            bytes_read: AtomicU64::new(head),
            pages_read: AtomicU64::new(0),
        })
    }

    fn read_page(&self, at: u64, len: u64, hash: &[u8; PAGE_HASH]) -> anyhow::Result<Vec<u8>> {
        let sealed = self.backend.get_range(&self.key, at, len)?;
        self.bytes_read.fetch_add(len, Ordering::Relaxed);
        self.pages_read.fetch_add(1, Ordering::Relaxed);
        Ok(open_page(&self.crypto, hash, &sealed).with_context(|| format!("index table {}", self.key))?.into_owned())
    }

    /// The blob `id`: the position of its pack and its entry.
    pub fn lookup(&self, id: &Id) -> anyhow::Result<Option<(u32, PackEntry)>> {
        let h = &self.header;
        for n in h.pages_for(id) {
            let plain = self.entry_page(n)?;
            let count = (h.entries as usize - n * PER_PAGE).min(PER_PAGE);
            let page = &plain[..count * ENTRY_LEN];
            let found = binary_search(page, count, id);
            if let Some(i) = found {
                return parse_entry(&page[i * ENTRY_LEN..(i + 1) * ENTRY_LEN]).map(Some);
            }
        }
        Ok(None)
    }

    fn entry_page(&self, n: usize) -> anyhow::Result<Arc<Vec<u8>>> {
        let h = &self.header;
        self.entry_pages.get_or_read(n, || self.read_page(h.entry_page_at(n), h.entry_page_len, &h.entry_hashes[n]))
    }

    /// The id of the pack at position `n`.
    pub fn pack_id(&self, n: u32) -> anyhow::Result<Id> {
        let h = &self.header;
        ensure!(n < h.packs, "index table {}: no pack {n}", self.key);
        let page_no = n as usize / PER_PAGE;
        let ids = self.pack_pages.get_or_read(page_no, || {
            let plain = self.read_page(h.pack_page_at(page_no), h.pack_page_len, &h.pack_hashes[page_no])?;
            Ok(pack_page_ids(&plain, PER_PAGE).collect())
        })?;
        Ok(ids[n as usize % PER_PAGE])
    }

    /// Every pack the table lists.
    pub fn pack_ids(&self) -> anyhow::Result<Vec<Id>> {
        let h = &self.header;
        let mut out = Vec::with_capacity(h.packs as usize);
        for (n, hash) in h.pack_hashes.iter().enumerate() {
            let plain = self.read_page(h.pack_page_at(n), h.pack_page_len, hash)?;
            out.extend(pack_page_ids(&plain, h.packs as usize - out.len()));
        }
        Ok(out)
    }

    /// Bytes of this table read so far (header and pages).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    pub fn pages_read(&self) -> u64 {
        self.pages_read.load(Ordering::Relaxed)
    }
}

/// One cached page: empty until its first reader has read it.
type Slot<T> = Arc<Mutex<Option<Arc<T>>>>;

/// Pages read from a table, at most `cap` kept. Each page is read once even when several
/// threads ask for it at the same moment: the first reads it while the others wait on its slot.
struct PageCache<T> {
    slots: Mutex<HashMap<usize, Slot<T>>>,
    cap: usize,
}

impl<T> PageCache<T> {
    fn new(cap: usize) -> PageCache<T> {
        PageCache { slots: Mutex::new(HashMap::new()), cap }
    }

    fn get_or_read(&self, n: usize, read: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<Arc<T>> {
        let slot = {
            let mut slots = self.slots.lock().unwrap();
            if slots.len() >= self.cap && !slots.contains_key(&n) {
                let any = *slots.keys().next().expect("full");
                slots.remove(&any);
            }
            slots.entry(n).or_default().clone()
        };
        let mut page = slot.lock().unwrap();
        if let Some(p) = &*page {
            return Ok(p.clone());
        }
        let p = Arc::new(read()?);
        *page = Some(p.clone());
        Ok(p)
    }
}

fn binary_search(page: &[u8], count: usize, id: &Id) -> Option<usize> {
    let (mut lo, mut hi) = (0, count);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let at = &page[mid * ENTRY_LEN..mid * ENTRY_LEN + 32];
        match at.cmp(&id.0[..]) {
            std::cmp::Ordering::Equal => return Some(mid),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::fs::FsBackend;
    use crate::store::crypto::Keys;

    fn entry(n: u32, offset: u32) -> PackEntry {
        PackEntry {
            kind: if n.is_multiple_of(7) { BlobKind::Tree } else { BlobKind::Data },
            compression: if n.is_multiple_of(3) { Compression::Raw } else { Compression::Zstd },
            id: Id::of(&n.to_le_bytes()),
            offset,
            length: 100 + n,
            raw_length: 200 + n,
        }
    }

    /// `n_packs` packs of `per_pack` distinct blobs each.
    fn packs(n_packs: u32, per_pack: u32) -> Vec<(Id, Vec<PackEntry>)> {
        (0..n_packs)
            .map(|p| {
                let es = (0..per_pack).map(|i| entry(p * per_pack + i, 8 + i * 1000)).collect();
                (Id::of(format!("pack {p}").as_bytes()), es)
            })
            .collect()
    }

    fn cryptos() -> Vec<Crypto> {
        vec![Crypto::None, Crypto::Sealed(Box::new(Keys::derive(&[7u8; 32])))]
    }

    fn stored(crypto: &Crypto, bytes: &[u8]) -> (tempfile::TempDir, TableReader) {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(FsBackend::new(dir.path()));
        backend.put_if_absent("index/t", bytes).unwrap();
        let crypto = Arc::new(match crypto {
            Crypto::None => Crypto::None,
            Crypto::Sealed(_) => Crypto::Sealed(Box::new(Keys::derive(&[7u8; 32]))),
        });
        let t = TableReader::open(backend, crypto, "index/t", bytes.len() as u64).unwrap();
        (dir, t)
    }

    #[test]
    fn a_table_decodes_to_the_packs_it_was_made_of() {
        for crypto in cryptos() {
            let input = packs(300, 9);
            let sup = vec![Id::of(b"old index")];
            let bytes = encode(&crypto, &sup, &input);
            assert!(is_table(&bytes));
            let f = decode_full(&crypto, &bytes).unwrap();
            assert_eq!(f.supersedes, sup);
            let mut want = input.clone();
            want.sort_by_key(|(id, _)| *id);
            assert_eq!(f.packs, want);
        }
    }

    #[test]
    fn lookups_read_one_page_and_find_every_blob_and_nothing_else() {
        for crypto in cryptos() {
            let input = packs(40, 50); // 2000 blobs: 16 pages
            let bytes = encode(&crypto, &[], &input);
            let (_dir, t) = stored(&crypto, &bytes);
            assert_eq!(t.header.entries, 2000);
            assert_eq!(t.header.packs, 40);
            let read_after_open = t.bytes_read();
            for (pack, es) in &input {
                for e in es {
                    let (n, found) = t.lookup(&e.id).unwrap().expect("indexed blob found");
                    assert_eq!(found, *e);
                    assert_eq!(t.pack_id(n).unwrap(), *pack);
                }
            }
            assert!(t.lookup(&Id::of(b"absent")).unwrap().is_none());
            assert!(t.lookup(&Id([0; 32])).unwrap().is_none());
            assert!(t.lookup(&Id([0xff; 32])).unwrap().is_none());
            // Each page read once: 16 entry pages, one pack page.
            assert_eq!(t.pages_read(), 17);
            assert!(read_after_open < 2000, "the header of 16 pages is small: {read_after_open} bytes");
            let mut all = t.pack_ids().unwrap();
            all.sort();
            assert_eq!(
                all,
                input
                    .iter()
                    .map(|(p, _)| *p)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_blob_in_two_packs_is_kept_once_and_pages_split_on_equal_prefixes() {
        let crypto = Crypto::None;
        let a = Id::of(b"pack a");
        let b = Id::of(b"pack b");
        let shared = entry(1, 8);
        // 300 ids that share their first 8 bytes: they span three pages.
        let twins: Vec<PackEntry> = (0..300u32)
            .map(|i| {
                let mut id = [0x42u8; 32];
                id[28..].copy_from_slice(&i.to_be_bytes());
                PackEntry { id: Id(id), ..entry(i, 8 + i) }
            })
            .collect();
        let bytes = encode(&crypto, &[], &[(a, vec![shared]), (b, [vec![shared], twins.clone()].concat())]);
        let f = decode_full(&crypto, &bytes).unwrap();
        assert_eq!(f.packs.iter().map(|(_, e)| e.len()).sum::<usize>(), 301);
        let (_dir, t) = stored(&crypto, &bytes);
        let (n, _) = t.lookup(&shared.id).unwrap().unwrap();
        assert_eq!(t.pack_id(n).unwrap(), a.min(b));
        for e in &twins {
            assert_eq!(t.lookup(&e.id).unwrap().unwrap().1, *e);
        }
    }

    #[test]
    fn damaged_truncated_or_foreign_tables_are_refused() {
        for crypto in cryptos() {
            let bytes = encode(&crypto, &[], &packs(10, 30));
            let mut flipped = bytes.clone();
            let last = flipped.len() - 100;
            flipped[last] ^= 1;
            assert!(decode_full(&crypto, &flipped).is_err());
            let (_dir, t) = stored(&crypto, &flipped);
            let victims = packs(10, 30);
            let hits: Vec<_> = victims.iter().flat_map(|(_, es)| es).map(|e| t.lookup(&e.id)).collect();
            assert!(hits.iter().all(|h| h.is_ok()), "entry pages are intact");
            assert!(t.pack_ids().is_err(), "the damaged pack page is detected");
            assert!(decode_full(&crypto, &bytes[..bytes.len() - 1]).is_err());
            let mut header = bytes.clone();
            header[20] ^= 1;
            assert!(decode_full(&crypto, &header).is_err());
        }
        let sealed = encode(&cryptos().remove(1), &[], &packs(2, 2));
        let other = Crypto::Sealed(Box::new(Keys::derive(&[8u8; 32])));
        assert!(decode_full(&other, &sealed).is_err(), "another store's key does not open it");
    }

    #[test]
    fn an_empty_table_finds_nothing() {
        let bytes = encode(&Crypto::None, &[Id::of(b"x")], &[]);
        let f = decode_full(&Crypto::None, &bytes).unwrap();
        assert!(f.packs.is_empty());
        let (_dir, t) = stored(&Crypto::None, &bytes);
        assert!(t.lookup(&Id::of(b"y")).unwrap().is_none());
    }
}
