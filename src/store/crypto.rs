//! Encryption at rest (format version 2): the master key and what is derived from it, sealing
//! of every stored object, keyed blob ids and the keyed chunker table.
//!
//! - A random 32-byte **master key** is made when the store is created. Three keys are derived
//!   from it with BLAKE3's `derive_key` (one context string each): the id key (blob ids are
//!   keyed BLAKE3 of the plaintext), the seal key, and the seed of the chunker's gear table.
//! - **Sealing** is AES-256-GCM (ring's, with the CPU's AES and carry-less multiply
//!   instructions) with a 24-byte random nonce: the first 12 bytes and the seal key give a
//!   one-time AES key (keyed BLAKE3), the last 12 are the GCM nonce. Random 96-bit GCM nonces
//!   under one key are safe for about 2^32 seals; with a key per seal that limit does not apply
//!   (the same idea as XChaCha20 and XAES-256-GCM), while AES keeps the hardware speed. Sealed
//!   bytes are `nonce (24) | ciphertext | tag (16)`.
//! - What an object is ([`Sealed`]) is bound as associated data: a tree blob cannot be served
//!   as a data blob, a blob cannot be served under another id, a snapshot not as an index.
//!
//! The master key is stored only wrapped (sealed) by key slots, see [`super::keys`].

use super::id::Id;
use super::pack::BlobKind;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use std::borrow::Cow;
use zeroize::Zeroizing;

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a seal adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

const CONTEXT_IDS: &str = "push-operator 2026-12-02 store v2 blob ids";
const CONTEXT_SEAL: &str = "push-operator 2026-12-02 store v2 sealing";
const CONTEXT_GEAR: &str = "push-operator 2026-12-02 store v2 chunker gear table";
const CONTEXT_CONFIG: &str = "push-operator 2026-12-02 store v2 config mac";

/// The kinds of whole objects that are sealed (blobs and pack trailers have their own [`Sealed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Index,
    Snapshot,
    Audit,
    PruneIndex,
    PrunePlan,
    PruneReady,
    /// The header of a consolidated index (see [`super::table`]).
    IndexTable,
    /// One page of a consolidated index.
    IndexPage,
    /// A snapshot catalogue (see [`super::catalog`]).
    Catalog,
}

impl ObjectKind {
    fn tag(self) -> u8 {
        match self {
            ObjectKind::Index => 1,
            ObjectKind::Snapshot => 2,
            ObjectKind::Audit => 3,
            ObjectKind::PruneIndex => 5,
            ObjectKind::PrunePlan => 6,
            ObjectKind::PruneReady => 7,
            ObjectKind::IndexTable => 8,
            ObjectKind::IndexPage => 9,
            ObjectKind::Catalog => 10,
        }
    }
}

/// What is being sealed: bound into the seal, so it cannot be opened as something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed<'a> {
    Blob {
        kind: BlobKind,
        id: &'a Id,
    },
    PackTrailer,
    Object(ObjectKind),
    /// A wrapped master key, bound to the store it belongs to.
    KeySlot {
        store: &'a Id,
    },
}

impl Sealed<'_> {
    fn associated_data(&self) -> Vec<u8> {
        let mut ad = b"push-operator/2/".to_vec();
        match self {
            Sealed::Blob { kind, id } => {
                ad.push(b'b');
                ad.push(*kind as u8);
                ad.extend_from_slice(&id.0);
            }
            Sealed::PackTrailer => ad.push(b't'),
            Sealed::Object(kind) => {
                ad.push(b'o');
                ad.push(kind.tag());
            }
            Sealed::KeySlot { store } => {
                ad.push(b'k');
                ad.extend_from_slice(&store.0);
            }
        }
        ad
    }
}

/// A sealed object failed to open: it was changed, swapped for another, or sealed with
/// another key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} does not open with this store's key: it is damaged, was replaced, or belongs to another store")]
pub struct OpenFailed {
    pub what: String,
}

/// A 32-byte secret that is wiped when dropped.
pub type Key32 = Zeroizing<[u8; 32]>;

pub fn random_key() -> Key32 {
    let mut k = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut k[..]).expect("the operating system has no random source");
    k
}

/// Seals `plain` under `key` (one fresh nonce per call).
pub fn seal_with(key: &[u8; 32], what: Sealed, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the operating system has no random source");
    let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = one_time_cipher(key, &nonce)
        .seal_in_place_separate_tag(gcm_nonce(&nonce), Aad::from(what.associated_data()), &mut out[NONCE_LEN..])
        .expect("AES-GCM seals any length this store writes");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens what [`seal_with`] sealed under the same key and the same `what`.
pub fn open_with(key: &[u8; 32], what: Sealed, sealed: &[u8]) -> Result<Vec<u8>, OpenFailed> {
    let failed = || OpenFailed { what: describe(&what) };
    if sealed.len() < OVERHEAD {
        return Err(failed());
    }
    let (nonce, body_and_tag) = sealed.split_at(NONCE_LEN);
    let mut out = body_and_tag.to_vec();
    let plain_len = one_time_cipher(key, nonce)
        .open_in_place(gcm_nonce(nonce), Aad::from(what.associated_data()), &mut out)
        .map_err(|_| failed())?
        .len();
    out.truncate(plain_len);
    Ok(out)
}

fn one_time_cipher(key: &[u8; 32], nonce: &[u8]) -> LessSafeKey {
    let one_time = Zeroizing::new(*blake3::keyed_hash(key, &nonce[..12]).as_bytes());
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &one_time[..]).expect("a 32-byte key"))
}

/// The GCM nonce: the last 12 bytes of the 24-byte nonce (each one-time key seals once).
fn gcm_nonce(nonce: &[u8]) -> Nonce {
    Nonce::try_assume_unique_for_key(&nonce[12..NONCE_LEN]).expect("12 bytes")
}

fn describe(what: &Sealed) -> String {
    match what {
        Sealed::Blob { kind: BlobKind::Data, id } => format!("data blob {id}"),
        Sealed::Blob { kind: BlobKind::Tree, id } => format!("tree blob {id}"),
        Sealed::PackTrailer => "a pack trailer".into(),
        Sealed::Object(kind) => format!("{} object", format!("{kind:?}").to_lowercase()),
        Sealed::KeySlot { .. } => "a key slot".into(),
    }
}

/// The keys derived from a store's master key.
pub struct Keys {
    id_key: Key32,
    seal_key: Key32,
    config_key: Key32,
    gear: Box<[u64; 256]>,
}

impl Keys {
    pub fn derive(master: &[u8; 32]) -> Keys {
        let gear_seed = Zeroizing::new(blake3::derive_key(CONTEXT_GEAR, master));
        let mut table = Zeroizing::new([0u8; 256 * 8]);
        blake3::Hasher::new_keyed(&gear_seed).finalize_xof().fill(&mut table[..]);
        let mut gear = Box::new([0u64; 256]);
        for (g, b) in gear.iter_mut().zip(table.chunks_exact(8)) {
            *g = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        Keys {
            id_key: Zeroizing::new(blake3::derive_key(CONTEXT_IDS, master)),
            seal_key: Zeroizing::new(blake3::derive_key(CONTEXT_SEAL, master)),
            config_key: Zeroizing::new(blake3::derive_key(CONTEXT_CONFIG, master)),
            gear,
        }
    }
}

/// How a store's objects are protected: not at all (format 1, or a store created with
/// `--encryption none`), or sealed with the keys of its master key.
#[derive(Default)]
pub enum Crypto {
    #[default]
    None,
    Sealed(Box<Keys>),
}

impl Crypto {
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Crypto::Sealed(_))
    }

    /// The id of a blob: keyed BLAKE3 of its plaintext, or plain BLAKE3 in an unencrypted store.
    pub fn id_of(&self, plain: &[u8]) -> Id {
        match self {
            Crypto::None => Id::of(plain),
            Crypto::Sealed(k) => Id(*blake3::keyed_hash(&k.id_key, plain).as_bytes()),
        }
    }

    /// Bytes a seal adds.
    pub fn overhead(&self) -> usize {
        match self {
            Crypto::None => 0,
            Crypto::Sealed(_) => OVERHEAD,
        }
    }

    pub fn seal<'a>(&self, what: Sealed, plain: &'a [u8]) -> Cow<'a, [u8]> {
        match self {
            Crypto::None => Cow::Borrowed(plain),
            Crypto::Sealed(k) => Cow::Owned(seal_with(&k.seal_key, what, plain)),
        }
    }

    pub fn open<'a>(&self, what: Sealed, sealed: &'a [u8]) -> Result<Cow<'a, [u8]>, OpenFailed> {
        match self {
            Crypto::None => Ok(Cow::Borrowed(sealed)),
            Crypto::Sealed(k) => open_with(&k.seal_key, what, sealed).map(Cow::Owned),
        }
    }

    /// The chunker's gear table: keyed (random, from the master key) when encrypted.
    pub fn gear(&self) -> Option<&[u64; 256]> {
        match self {
            Crypto::None => None,
            Crypto::Sealed(k) => Some(&k.gear),
        }
    }

    /// A MAC of the store's config, so a storage owner cannot change it unnoticed.
    pub fn config_mac(&self, config_bytes: &[u8]) -> Option<String> {
        match self {
            Crypto::None => None,
            Crypto::Sealed(k) => Some(blake3::keyed_hash(&k.config_key, config_bytes).to_hex().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Crypto {
        Crypto::Sealed(Box::new(Keys::derive(&[7u8; 32])))
    }

    #[test]
    fn seal_round_trip_and_fresh_nonces() {
        let c = keys();
        let what = Sealed::Object(ObjectKind::Snapshot);
        let a = c.seal(what, b"hello world").into_owned();
        let b = c.seal(what, b"hello world").into_owned();
        assert_ne!(a, b, "every seal has a fresh nonce");
        assert_eq!(a.len(), 11 + OVERHEAD);
        assert_eq!(&*c.open(what, &a).unwrap(), b"hello world");
        assert!(!a.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn a_seal_opens_only_as_what_it_was_sealed_as() {
        let c = keys();
        let id = c.id_of(b"chunk");
        let other = c.id_of(b"other");
        let sealed = c.seal(Sealed::Blob { kind: BlobKind::Data, id: &id }, b"chunk").into_owned();
        assert!(c.open(Sealed::Blob { kind: BlobKind::Data, id: &id }, &sealed).is_ok());
        assert!(c.open(Sealed::Blob { kind: BlobKind::Tree, id: &id }, &sealed).is_err());
        assert!(c.open(Sealed::Blob { kind: BlobKind::Data, id: &other }, &sealed).is_err());
        assert!(c.open(Sealed::Object(ObjectKind::Index), &sealed).is_err());
        let mut flipped = sealed.clone();
        for i in [0, NONCE_LEN, sealed.len() - 1] {
            flipped[i] ^= 1;
            assert!(c.open(Sealed::Blob { kind: BlobKind::Data, id: &id }, &flipped).is_err(), "byte {i}");
            flipped[i] ^= 1;
        }
        let other_key = Crypto::Sealed(Box::new(Keys::derive(&[8u8; 32])));
        let e = other_key.open(Sealed::Blob { kind: BlobKind::Data, id: &id }, &sealed).unwrap_err();
        assert!(e.to_string().contains("data blob"), "{e}");
        assert!(c.open(Sealed::PackTrailer, &[0u8; OVERHEAD - 1]).is_err());
    }

    #[test]
    fn ids_and_gear_depend_on_the_key() {
        let (a, b) = (keys(), Crypto::Sealed(Box::new(Keys::derive(&[8u8; 32]))));
        assert_ne!(a.id_of(b"x"), Id::of(b"x"));
        assert_ne!(a.id_of(b"x"), b.id_of(b"x"));
        assert_eq!(a.id_of(b"x"), keys().id_of(b"x"), "ids are deterministic for one key");
        assert_ne!(a.gear().unwrap(), b.gear().unwrap());
        assert_eq!(a.gear().unwrap(), keys().gear().unwrap());
        assert!(Crypto::None.gear().is_none());
        assert_eq!(Crypto::None.id_of(b"x"), Id::of(b"x"));
        assert_eq!(&*Crypto::None.seal(Sealed::PackTrailer, b"x"), b"x");
    }
}
