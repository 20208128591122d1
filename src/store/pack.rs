//! Packs: write-once files of blobs with a trailer that lists them, so the index can always be
//! rebuilt from the packs alone.
//!
//! ```text
//! "POPACK01"                                   8-byte header
//! blob 0 | blob 1 | ...                         zstd frames or raw bytes
//! entry 0 | entry 1 | ...                      42 bytes each, see `PackEntry::encode`
//! entry count (u32 LE) | "POTRAIL1"            12-byte footer
//! ```
//! A blob's offset is the header length plus the lengths of the blobs before it. The pack id
//! is the BLAKE3 hash of the whole pack.

use super::id::Id;
use anyhow::{Context, bail};

pub const PACK_MAGIC: &[u8; 8] = b"POPACK01";
pub const TRAILER_MAGIC: &[u8; 8] = b"POTRAIL1";
pub const ENTRY_LEN: usize = 42;
pub const FOOTER_LEN: usize = 12;

/// The length of the pack object whose trailer lists `entries`.
pub fn pack_len(entries: &[PackEntry]) -> u64 {
    let end = entries.iter().map(|e| (e.offset + e.length) as u64).max().unwrap_or(0);
    end + (entries.len() * ENTRY_LEN + FOOTER_LEN) as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    Data = 0,
    Tree = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    Raw = 0,
    Zstd = 1,
}

impl BlobKind {
    pub fn from_u8(v: u8) -> anyhow::Result<BlobKind> {
        Ok(match v {
            0 => BlobKind::Data,
            1 => BlobKind::Tree,
            _ => bail!("unknown blob kind {v}"),
        })
    }
}

impl Compression {
    pub fn from_u8(v: u8) -> anyhow::Result<Compression> {
        Ok(match v {
            0 => Compression::Raw,
            1 => Compression::Zstd,
            _ => bail!("unknown compression {v}"),
        })
    }
}

/// One blob in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub compression: Compression,
    pub id: Id,
    /// Offset of the stored bytes in the pack.
    pub offset: u32,
    /// Stored (possibly compressed) length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

impl PackEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.push(self.compression as u8);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_length.to_le_bytes());
    }
}

/// Builds one pack in memory.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A sealed pack, ready for upload.
pub struct SealedPack {
    pub id: Id,
    pub bytes: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new(capacity: usize) -> PackBuilder {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(PACK_MAGIC);
        PackBuilder { buf, entries: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn add(&mut self, kind: BlobKind, compression: Compression, id: Id, stored: &[u8], raw_length: usize) {
        let offset = self.buf.len() as u32;
        self.buf.extend_from_slice(stored);
        self.entries.push(PackEntry {
            kind,
            compression,
            id,
            offset,
            length: stored.len() as u32,
            raw_length: raw_length as u32,
        });
    }

    pub fn seal(mut self) -> SealedPack {
        for e in &self.entries {
            e.encode(&mut self.buf);
        }
        self.buf.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(TRAILER_MAGIC);
        SealedPack { id: Id::of(&self.buf), bytes: self.buf, entries: self.entries }
    }
}

/// The entry count from a pack's 12-byte footer.
pub fn parse_footer(footer: &[u8]) -> anyhow::Result<usize> {
    if footer.len() != FOOTER_LEN || &footer[4..] != TRAILER_MAGIC {
        bail!("not a pack footer (bad magic)");
    }
    Ok(u32::from_le_bytes(footer[..4].try_into().unwrap()) as usize)
}

/// Decodes a trailer (the entries, without the footer) of a pack of `pack_len` bytes.
pub fn parse_trailer(trailer: &[u8], pack_len: u64) -> anyhow::Result<Vec<PackEntry>> {
    if !trailer.len().is_multiple_of(ENTRY_LEN) {
        bail!("pack trailer length {} is not a multiple of {ENTRY_LEN}", trailer.len());
    }
    let mut offset = PACK_MAGIC.len() as u64;
    let mut out = Vec::with_capacity(trailer.len() / ENTRY_LEN);
    for e in trailer.chunks_exact(ENTRY_LEN) {
        let length = u32::from_le_bytes(e[34..38].try_into().unwrap());
        let entry = PackEntry {
            kind: BlobKind::from_u8(e[0])?,
            compression: Compression::from_u8(e[1])?,
            id: Id(e[2..34].try_into().unwrap()),
            offset: offset as u32,
            length,
            raw_length: u32::from_le_bytes(e[38..42].try_into().unwrap()),
        };
        offset += length as u64;
        out.push(entry);
    }
    let expected = offset + trailer.len() as u64 + FOOTER_LEN as u64;
    if expected != pack_len {
        bail!("pack trailer describes {expected} bytes but the pack has {pack_len}");
    }
    Ok(out)
}

/// Decodes the entries of a whole pack held in memory.
pub fn parse_pack(bytes: &[u8]) -> anyhow::Result<Vec<PackEntry>> {
    if bytes.len() < PACK_MAGIC.len() + FOOTER_LEN || &bytes[..8] != PACK_MAGIC {
        bail!("not a pack (bad header)");
    }
    let count = parse_footer(&bytes[bytes.len() - FOOTER_LEN..])?;
    let tlen = count.checked_mul(ENTRY_LEN).context("pack entry count overflows")?;
    if tlen + FOOTER_LEN + PACK_MAGIC.len() > bytes.len() {
        bail!("pack trailer of {count} entries does not fit in {} bytes", bytes.len());
    }
    let start = bytes.len() - FOOTER_LEN - tlen;
    parse_trailer(&bytes[start..bytes.len() - FOOTER_LEN], bytes.len() as u64)
}

/// Store key of a pack.
pub fn pack_key(id: &Id) -> String {
    let h = id.to_hex();
    format!("packs/{}/{}", &h[..2], h)
}

/// Plaintext of a stored blob, checked against its id.
pub fn decode_blob(entry: &PackEntry, stored: &[u8]) -> anyhow::Result<Vec<u8>> {
    let plain = match entry.compression {
        Compression::Raw => stored.to_vec(),
        Compression::Zstd => super::compress::decompress(stored, entry.raw_length as usize)
            .with_context(|| format!("blob {} does not decompress", entry.id))?,
    };
    if plain.len() != entry.raw_length as usize || Id::of(&plain) != entry.id {
        bail!("blob {} is damaged: its content does not match its id", entry.id);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        let mut b = PackBuilder::new(1024);
        let blobs: Vec<Vec<u8>> = vec![b"alpha".to_vec(), vec![0u8; 300], b"".to_vec()];
        for (i, blob) in blobs.iter().enumerate() {
            let kind = if i == 1 { BlobKind::Tree } else { BlobKind::Data };
            b.add(kind, Compression::Raw, Id::of(blob), blob, blob.len());
        }
        let sealed = b.seal();
        assert_eq!(sealed.id, Id::of(&sealed.bytes));
        let parsed = parse_pack(&sealed.bytes).unwrap();
        assert_eq!(parsed, sealed.entries);
        for (e, blob) in parsed.iter().zip(&blobs) {
            let stored = &sealed.bytes[e.offset as usize..(e.offset + e.length) as usize];
            assert_eq!(&decode_blob(e, stored).unwrap(), blob);
        }
        let mut bad = sealed.bytes.clone();
        bad[9] ^= 1;
        let e = &parsed[0];
        assert!(decode_blob(e, &bad[e.offset as usize..(e.offset + e.length) as usize]).is_err());
        assert!(parse_pack(&sealed.bytes[..sealed.bytes.len() - 1]).is_err());
    }
}
