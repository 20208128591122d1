//! The index: which pack holds each blob, where, and how long.
//!
//! Index objects (`index/<id>`) are written while a push runs, each after a few packs are safely
//! stored, so a push that dies leaves packs the next push can find. Format:
//!
//! ```text
//! "POINDEX1" | zstd(body)
//! body: u32 n_supersedes, n × id[32]
//!       u32 n_packs, n × ( pack id[32], u32 n_blobs, n × ( kind u8, compression u8, id[32],
//!                                                          offset u32, length u32, raw_length u32 ) )
//! ```
//! All integers little-endian. `supersedes` names index objects this one replaces (written by a
//! prune that consolidates; readers ignore the superseded ones).

use super::id::Id;
use super::pack::{BlobKind, Compression, PackEntry, pack_len};
use super::table::TableReader;
use anyhow::{Context, bail};
use std::collections::{HashMap, HashSet};

pub const INDEX_MAGIC: &[u8; 8] = b"POINDEX1";

/// One index object's content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexFile {
    pub supersedes: Vec<Id>,
    pub packs: Vec<(Id, Vec<PackEntry>)>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for id in &self.supersedes {
            body.extend_from_slice(&id.0);
        }
        body.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for (pack, entries) in &self.packs {
            body.extend_from_slice(&pack.0);
            body.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for e in entries {
                body.push(e.kind as u8);
                body.push(e.compression as u8);
                body.extend_from_slice(&e.id.0);
                body.extend_from_slice(&e.offset.to_le_bytes());
                body.extend_from_slice(&e.length.to_le_bytes());
                body.extend_from_slice(&e.raw_length.to_le_bytes());
            }
        }
        let mut out = INDEX_MAGIC.to_vec();
        out.extend_from_slice(&zstd::bulk::compress(&body, 3).expect("zstd compresses into memory"));
        out
    }

    pub fn decode(bytes: &[u8]) -> anyhow::Result<IndexFile> {
        if bytes.len() < 8 || &bytes[..8] != INDEX_MAGIC {
            bail!("not an index object (bad magic)");
        }
        let body = zstd::stream::decode_all(&bytes[8..]).context("index object does not decompress")?;
        let mut r = Reader::new(&body, "index object");
        let mut f = IndexFile::default();
        for _ in 0..r.u32()? {
            f.supersedes.push(r.id()?);
        }
        for _ in 0..r.u32()? {
            let pack = r.id()?;
            let n = r.u32()? as usize;
            let mut entries = Vec::with_capacity(n.min(1 << 20));
            for _ in 0..n {
                entries.push(PackEntry {
                    kind: BlobKind::from_u8(r.u8()?)?,
                    compression: Compression::from_u8(r.u8()?)?,
                    id: r.id()?,
                    offset: r.u32()?,
                    length: r.u32()?,
                    raw_length: r.u32()?,
                });
            }
            f.packs.push((pack, entries));
        }
        if r.pos != body.len() {
            bail!("index object has {} trailing bytes", body.len() - r.pos);
        }
        Ok(f)
    }
}

/// Reads little-endian fields of an index object or a table header.
pub(super) struct Reader<'a> {
    b: &'a [u8],
    pub pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { b, pos: 0, what }
    }

    pub fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        if self.pos + n > self.b.len() {
            bail!("{} is truncated", self.what);
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn id(&mut self) -> anyhow::Result<Id> {
        Ok(Id(self.take(32)?.try_into().unwrap()))
    }
}

/// Where one blob lives: 20 bytes beside its 32-byte id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLoc {
    /// Position in [`Index::packs`].
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
    pub kind: BlobKind,
    pub compression: Compression,
}

/// The index of a store: every blob of every indexed pack, in memory, plus the consolidated
/// tables a push reads in part ([`TableReader`]; readers that need everything load tables in
/// full, see [`super::Store::load_index`]).
#[derive(Default)]
pub struct Index {
    pub packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    /// The length of each pack object, by position.
    pack_lens: Vec<u64>,
    blobs: HashMap<Id, BlobLoc>,
    /// Index objects loaded (their ids), superseded ones excluded.
    pub files: Vec<Id>,
    /// What sealing adds to a pack's trailer, for the pack lengths.
    seal_overhead: usize,
    /// Positions of packs a prune has marked for deletion (see `store::prune`): their blobs
    /// can be read but must not be reused by a push.
    doomed: HashSet<u32>,
    /// The ids of the doomed packs (for blobs found in a table).
    doomed_ids: HashSet<Id>,
    /// Tables read in part: looked up after the blobs in memory.
    tables: Vec<TableReader>,
    /// Bytes of the index objects loaded in full (set by the loader).
    pub loaded_bytes: u64,
}

impl Index {
    pub fn add_pack(&mut self, pack: Id, entries: &[PackEntry]) {
        let pos = *self.pack_pos.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            self.pack_lens.push(0);
            (self.packs.len() - 1) as u32
        });
        let len = &mut self.pack_lens[pos as usize];
        *len = (*len).max(pack_len(entries, self.seal_overhead));
        self.blobs.reserve(entries.len());
        for e in entries {
            self.blobs.entry(e.id).or_insert(BlobLoc {
                pack: pos,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
                kind: e.kind,
                compression: e.compression,
            });
        }
    }

    /// Adds a pack a prune has marked for deletion, unless an index object lists it (then it
    /// stays usable).
    pub fn add_doomed_pack(&mut self, pack: Id, entries: &[PackEntry]) {
        if self.pack_pos.contains_key(&pack) {
            return;
        }
        self.add_pack(pack, entries);
        self.doomed.insert(self.pack_pos[&pack]);
        self.doomed_ids.insert(pack);
    }

    /// Adds a table read in part.
    pub fn add_table(&mut self, table: TableReader) {
        self.tables.push(table);
    }

    /// True when a push may reference `id` without storing it: indexed, and not only in packs
    /// marked for deletion. A table page that cannot be read counts as "not indexed": the blob
    /// is stored again, which costs space, never a snapshot.
    pub fn usable(&self, id: &Id) -> bool {
        if let Some(l) = self.blobs.get(id) {
            return !self.doomed.contains(&l.pack);
        }
        match self.locate_in_tables(id) {
            Ok(Some((pack, _))) => !self.doomed_ids.contains(&pack),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(blob = %id, error = %format!("{e:#}"), "index table page unreadable; the blob is stored again");
                false
            }
        }
    }

    pub fn is_doomed_pack(&self, id: &Id) -> bool {
        self.doomed_ids.contains(id)
    }

    /// Where `id` is: its pack and entry, from memory or a table.
    pub fn locate(&self, id: &Id) -> anyhow::Result<Option<(Id, PackEntry)>> {
        if let Some(l) = self.blobs.get(id) {
            return Ok(Some((self.packs[l.pack as usize], self.entry(id).expect("in memory"))));
        }
        self.locate_in_tables(id)
    }

    fn locate_in_tables(&self, id: &Id) -> anyhow::Result<Option<(Id, PackEntry)>> {
        for t in &self.tables {
            if let Some((pack, entry)) = t.lookup(id)? {
                return Ok(Some((t.pack_id(pack)?, entry)));
            }
        }
        Ok(None)
    }

    /// Every pack the tables read in part list (all their pack pages: 32 bytes a pack).
    pub fn table_pack_ids(&self) -> anyhow::Result<HashSet<Id>> {
        let mut out = HashSet::new();
        for t in &self.tables {
            out.extend(t.pack_ids()?);
        }
        Ok(out)
    }

    /// Bytes of the tables read in part so far.
    pub fn table_bytes_read(&self) -> u64 {
        self.tables.iter().map(|t| t.bytes_read()).sum()
    }

    /// Builds the index from decoded index objects, dropping the superseded ones.
    /// `seal_overhead`: what sealing adds to a pack's trailer in this store ([`super::crypto::Crypto::overhead`]).
    pub fn from_files(files: Vec<(Id, IndexFile)>, seal_overhead: usize) -> Index {
        let superseded: HashSet<Id> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
        let mut idx = Index { seal_overhead, ..Index::default() };
        for (id, f) in files {
            if superseded.contains(&id) {
                continue;
            }
            idx.files.push(id);
            for (pack, entries) in &f.packs {
                idx.add_pack(*pack, entries);
            }
        }
        idx
    }

    /// The blob's location, from the blobs in memory (tables read in part are not asked: see
    /// [`Index::locate`]).
    pub fn get(&self, id: &Id) -> Option<&BlobLoc> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn contains_pack(&self, id: &Id) -> bool {
        self.pack_pos.contains_key(id)
    }

    pub fn pack_id(&self, loc: &BlobLoc) -> Id {
        self.packs[loc.pack as usize]
    }

    /// Bytes of all indexed packs (marked ones included: they exist until a prune deletes them).
    pub fn pack_bytes(&self) -> u64 {
        self.pack_lens.iter().sum::<u64>() + self.tables.iter().map(|t| t.header.pack_bytes).sum::<u64>()
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len() + self.tables.iter().map(|t| t.header.entries as usize).sum::<usize>()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Id, &BlobLoc)> {
        self.blobs.iter()
    }

    /// The entry of `id` as it would appear in its pack's trailer.
    pub fn entry(&self, id: &Id) -> Option<PackEntry> {
        self.blobs.get(id).map(|l| PackEntry {
            kind: l.kind,
            compression: l.compression,
            id: *id,
            offset: l.offset,
            length: l.length,
            raw_length: l.raw_length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, offset: u32) -> PackEntry {
        PackEntry {
            kind: if n.is_multiple_of(2) { BlobKind::Data } else { BlobKind::Tree },
            compression: Compression::Zstd,
            id: Id::of(&[n]),
            offset,
            length: 10 + n as u32,
            raw_length: 20 + n as u32,
        }
    }

    #[test]
    fn encode_decode_and_supersede() {
        let a = IndexFile { supersedes: vec![], packs: vec![(Id::of(b"p1"), vec![entry(1, 8), entry(2, 19)])] };
        let bytes = a.encode();
        assert_eq!(IndexFile::decode(&bytes).unwrap(), a);
        let a_id = Id::of(&bytes);
        let b = IndexFile { supersedes: vec![a_id], packs: vec![(Id::of(b"p2"), vec![entry(3, 8)])] };
        let idx = Index::from_files(vec![(a_id, a), (Id::of(&b.encode()), b)], 0);
        assert_eq!(idx.files.len(), 1);
        assert!(!idx.contains(&Id::of(&[1])));
        assert!(idx.contains(&Id::of(&[3])));
        assert!(IndexFile::decode(b"POINDEX1garbage").is_err());
        let mut truncated = IndexFile::default();
        truncated.packs.push((Id::of(b"p"), vec![entry(4, 8)]));
        let mut t = truncated.encode();
        t.truncate(t.len() - 3);
        assert!(IndexFile::decode(&t).is_err());
    }
}
