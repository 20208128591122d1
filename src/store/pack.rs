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
//! is the BLAKE3 hash of the whole pack. In an encrypted store each blob and the trailer (the
//! entries, not the footer) are sealed (see [`super::crypto`]).

use super::crypto::{Crypto, Sealed};
use super::id::Id;
use anyhow::{Context, bail};
use std::borrow::Cow;

pub const PACK_MAGIC: &[u8; 8] = b"POPACK01";
pub const TRAILER_MAGIC: &[u8; 8] = b"POTRAIL1";
pub const ENTRY_LEN: usize = 42;
pub const FOOTER_LEN: usize = 12;

/// The length of the pack object whose trailer lists `entries`.
/// `seal_overhead` is what sealing adds to the trailer ([`Crypto::overhead`]).
pub fn pack_len(entries: &[PackEntry], seal_overhead: usize) -> u64 {
    let end = entries.iter().map(|e| (e.offset + e.length) as u64).max().unwrap_or(0);
    end + (entries.len() * ENTRY_LEN + seal_overhead + FOOTER_LEN) as u64
}

/// The stored length of the trailer of `count` entries.
pub fn trailer_len(count: usize, crypto: &Crypto) -> usize {
    count * ENTRY_LEN + crypto.overhead()
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

    pub fn seal(mut self, crypto: &Crypto) -> SealedPack {
        let mut trailer = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            e.encode(&mut trailer);
        }
        self.buf.extend_from_slice(&crypto.seal(Sealed::PackTrailer, &trailer));
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
pub fn parse_trailer(crypto: &Crypto, sealed: &[u8], pack_len: u64) -> anyhow::Result<Vec<PackEntry>> {
    let trailer = crypto.open(Sealed::PackTrailer, sealed)?;
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
    let expected = offset + sealed.len() as u64 + FOOTER_LEN as u64;
    if expected != pack_len {
        bail!("pack trailer describes {expected} bytes but the pack has {pack_len}");
    }
    Ok(out)
}

/// Decodes the entries of a whole pack held in memory.
pub fn parse_pack(crypto: &Crypto, bytes: &[u8]) -> anyhow::Result<Vec<PackEntry>> {
    if bytes.len() < PACK_MAGIC.len() + FOOTER_LEN || &bytes[..8] != PACK_MAGIC {
        bail!("not a pack (bad header)");
    }
    let count = parse_footer(&bytes[bytes.len() - FOOTER_LEN..])?;
    let tlen = count
        .checked_mul(ENTRY_LEN)
        .and_then(|n| n.checked_add(crypto.overhead()))
        .context("pack entry count overflows")?;
    if tlen + FOOTER_LEN + PACK_MAGIC.len() > bytes.len() {
        bail!("pack trailer of {count} entries does not fit in {} bytes", bytes.len());
    }
    let start = bytes.len() - FOOTER_LEN - tlen;
    parse_trailer(crypto, &bytes[start..bytes.len() - FOOTER_LEN], bytes.len() as u64)
}

/// Store key of a pack.
pub fn pack_key(id: &Id) -> String {
    let h = id.to_hex();
    format!("packs/{}/{}", &h[..2], h)
}

/// The stored bytes of a blob: compressed when that saves at least 1/32, then sealed.
pub fn encode_blob<'a>(
    crypto: &Crypto,
    kind: BlobKind,
    id: &Id,
    plain: &'a [u8],
    level: i32,
) -> std::io::Result<(Compression, Cow<'a, [u8]>)> {
    let (compression, stored) = match super::compress::compress(plain, level)? {
        Some(c) => (Compression::Zstd, Cow::Owned(c)),
        None => (Compression::Raw, Cow::Borrowed(plain)),
    };
    let sealed = match crypto.seal(Sealed::Blob { kind, id }, &stored) {
        Cow::Borrowed(_) => stored,
        Cow::Owned(s) => Cow::Owned(s),
    };
    Ok((compression, sealed))
}

/// Plaintext of a stored blob, checked against its id.
pub fn decode_blob(crypto: &Crypto, entry: &PackEntry, stored: &[u8]) -> anyhow::Result<Vec<u8>> {
    let stored = crypto.open(Sealed::Blob { kind: entry.kind, id: &entry.id }, stored)?;
    let plain = match entry.compression {
        Compression::Raw => stored.into_owned(),
        Compression::Zstd => super::compress::decompress(&stored, entry.raw_length as usize)
            .with_context(|| format!("blob {} does not decompress", entry.id))?,
    };
    if plain.len() != entry.raw_length as usize || crypto.id_of(&plain) != entry.id {
        return Err(super::Damaged(format!("blob {} is damaged: its content does not match its id", entry.id)).into());
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::crypto::Keys;

    fn round_trip(crypto: &Crypto) -> SealedPack {
        let mut b = PackBuilder::new(1024);
        let blobs: Vec<Vec<u8>> = vec![b"alpha".to_vec(), vec![0u8; 300], b"".to_vec()];
        for (i, blob) in blobs.iter().enumerate() {
            let kind = if i == 1 { BlobKind::Tree } else { BlobKind::Data };
            let id = crypto.id_of(blob);
            let (comp, stored) = encode_blob(crypto, kind, &id, blob, 3).unwrap();
            b.add(kind, comp, id, &stored, blob.len());
        }
        let sealed = b.seal(crypto);
        assert_eq!(sealed.id, Id::of(&sealed.bytes));
        assert_eq!(pack_len(&sealed.entries, crypto.overhead()), sealed.bytes.len() as u64);
        let parsed = parse_pack(crypto, &sealed.bytes).unwrap();
        assert_eq!(parsed, sealed.entries);
        for (e, blob) in parsed.iter().zip(&blobs) {
            let stored = &sealed.bytes[e.offset as usize..(e.offset + e.length) as usize];
            assert_eq!(&decode_blob(crypto, e, stored).unwrap(), blob);
        }
        let mut bad = sealed.bytes.clone();
        bad[9] ^= 1;
        let e = &parsed[0];
        assert!(decode_blob(crypto, e, &bad[e.offset as usize..(e.offset + e.length) as usize]).is_err());
        assert!(parse_pack(crypto, &sealed.bytes[..sealed.bytes.len() - 1]).is_err());
        sealed
    }

    #[test]
    fn pack_round_trip() {
        round_trip(&Crypto::None);
    }

    #[test]
    fn encrypted_pack_round_trip_hides_its_entries() {
        let crypto = Crypto::Sealed(Box::new(Keys::derive(&[3u8; 32])));
        let sealed = round_trip(&crypto);
        assert!(!sealed.bytes.windows(5).any(|w| w == b"alpha"));
        assert!(!sealed.bytes.windows(32).any(|w| sealed.entries.iter().any(|e| w == e.id.0)), "ids are sealed too");
        assert!(parse_pack(&Crypto::None, &sealed.bytes).is_err());
        let other = Crypto::Sealed(Box::new(Keys::derive(&[4u8; 32])));
        assert!(parse_pack(&other, &sealed.bytes).is_err());
    }
}
