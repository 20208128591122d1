//! Key slots: the store's master key, wrapped by a passphrase (Argon2id) or by a raw 32-byte
//! key, one `keys/<64 hex>` JSON object per slot. Any slot opens the store; adding, removing or
//! changing a slot never re-encrypts data (the master key stays the same).
//!
//! A wrapped key is sealed with the store's id as associated data, so a slot copied from
//! another store (or left by a creation that lost a race) opens nothing here.

use super::backend::{Backend, BackendError, Retention};
use super::crypto::{Key32, Sealed, open_with, random_key, seal_with};
use super::id::Id;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const KEYS_PREFIX: &str = "keys/";

/// Argon2id cost of new passphrase slots: 64 MiB, 3 passes, 1 lane (RFC 9106's second
/// recommendation, with one lane so a 1-CPU worker pays no more than a laptop).
const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
const ARGON2_ITERATIONS: u32 = 3;
const ARGON2_LANES: u32 = 1;

/// A secret that opens a key slot. Its `Debug` shows only its kind.
pub enum Secret {
    /// A passphrase, stretched with Argon2id.
    Password(Zeroizing<String>),
    /// A random 32-byte key (a Kubernetes Secret made by a tool, say): used as is.
    Raw(Key32),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}, redacted)", self.kind())
    }
}

impl Secret {
    /// A raw key given as 64 hex digits or as base64 of 32 bytes (surrounding blanks ignored).
    pub fn parse_raw(text: &str) -> anyhow::Result<Secret> {
        let text = text.trim();
        let mut key = Zeroizing::new([0u8; 32]);
        if hex::decode_to_slice(text, &mut key[..]).is_ok() {
            return Ok(Secret::Raw(key));
        }
        use base64::Engine;
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| anyhow::anyhow!("a raw key must be 64 hex digits or the base64 of 32 bytes"))?,
        );
        if decoded.len() != 32 {
            bail!("a raw key must be 32 bytes; this one has {}", decoded.len());
        }
        key.copy_from_slice(&decoded);
        Ok(Secret::Raw(key))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Password(_) => "passphrase",
            Secret::Raw(_) => "raw key",
        }
    }
}

/// The secrets a command was given: the one to use, and optionally the one it replaces (a
/// rotation: a store that only the previous secret opens gets a slot for the current one, and
/// the previous slot is removed).
#[derive(Default)]
pub struct Credentials {
    pub current: Option<Secret>,
    pub previous: Option<Secret>,
}

impl Credentials {
    pub fn none() -> Credentials {
        Credentials::default()
    }

    pub fn given(secret: Secret) -> Credentials {
        Credentials { current: Some(secret), previous: None }
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.previous.is_none()
    }
}

/// How a slot's wrapping key is made from its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum Kdf {
    Argon2id {
        memory_kib: u32,
        iterations: u32,
        lanes: u32,
        salt: String,
    },
    /// keyed BLAKE3 of the salt under the raw key.
    Raw {
        salt: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub created: chrono::DateTime<chrono::Utc>,
    pub host: String,
    pub kdf: Kdf,
    /// The master key sealed with the wrapping key (hex).
    pub wrapped: String,
}

impl KeySlot {
    pub fn kind(&self) -> &'static str {
        match self.kdf {
            Kdf::Argon2id { .. } => "passphrase",
            Kdf::Raw { .. } => "raw key",
        }
    }
}

fn wrapping_key(secret: &Secret, kdf: &Kdf) -> anyhow::Result<Option<Key32>> {
    let mut out = Zeroizing::new([0u8; 32]);
    match (secret, kdf) {
        (Secret::Password(p), Kdf::Argon2id { memory_kib, iterations, lanes, salt }) => {
            let salt = hex::decode(salt).context("key slot salt is not hex")?;
            let params = argon2::Params::new(*memory_kib, *iterations, *lanes, Some(32))
                .map_err(|e| anyhow::anyhow!("key slot has invalid Argon2 parameters: {e}"))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(p.as_bytes(), &salt, &mut out[..])
                .map_err(|e| anyhow::anyhow!("Argon2id failed: {e}"))?;
        }
        (Secret::Raw(k), Kdf::Raw { salt }) => {
            let salt = hex::decode(salt).context("key slot salt is not hex")?;
            out.copy_from_slice(blake3::keyed_hash(k, &salt).as_bytes());
        }
        _ => return Ok(None),
    }
    Ok(Some(out))
}

fn new_kdf(secret: &Secret) -> Kdf {
    let salt = hex::encode(random_key().as_slice());
    match secret {
        Secret::Password(_) => {
            Kdf::Argon2id { memory_kib: ARGON2_MEMORY_KIB, iterations: ARGON2_ITERATIONS, lanes: ARGON2_LANES, salt }
        }
        Secret::Raw(_) => Kdf::Raw { salt },
    }
}

fn slot_key(id: &Id) -> String {
    format!("{KEYS_PREFIX}{id}")
}

/// Writes a new slot for `master`, opened by `secret` (with `retention` in a store with Object
/// Lock); returns its id.
pub fn add_slot(
    backend: &dyn Backend,
    store: &Id,
    master: &[u8; 32],
    secret: &Secret,
    retention: Option<&Retention>,
) -> anyhow::Result<Id> {
    let kdf = new_kdf(secret);
    let wrapping = wrapping_key(secret, &kdf)?.expect("the kdf matches the secret it was made for");
    let slot = KeySlot {
        created: chrono::Utc::now(),
        host: hostname(),
        wrapped: hex::encode(seal_with(&wrapping, Sealed::KeySlot { store }, master)),
        kdf,
    };
    let id = Id::random();
    let bytes = serde_json::to_vec_pretty(&slot)?;
    super::backend::put_kept(backend, &slot_key(&id), &bytes, retention)?;
    Ok(id)
}

/// Every slot, by id. A slot that does not parse is an error: it could be the only good one.
pub fn list_slots(backend: &dyn Backend) -> anyhow::Result<Vec<(Id, KeySlot)>> {
    let mut out = Vec::new();
    for o in backend.list(KEYS_PREFIX)? {
        let id = Id::parse(o.key.trim_start_matches(KEYS_PREFIX))
            .map_err(|e| anyhow::anyhow!("stray object {} in the store: {e}", o.key))?;
        let bytes = match backend.get(&o.key) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let slot: KeySlot =
            serde_json::from_slice(&bytes).with_context(|| format!("key slot {} does not parse", o.key))?;
        out.push((id, slot));
    }
    out.sort_by(|a, b| a.1.created.cmp(&b.1.created).then(a.0.cmp(&b.0)));
    Ok(out)
}

/// The master key and the id of the first slot that `secret` opens; `None` when none does.
pub fn unlock(slots: &[(Id, KeySlot)], store: &Id, secret: &Secret) -> anyhow::Result<Option<(Id, Key32)>> {
    for (id, slot) in slots {
        let Some(wrapping) = wrapping_key(secret, &slot.kdf)? else { continue };
        let Ok(wrapped) = hex::decode(&slot.wrapped) else { continue };
        if let Ok(master) = open_with(&wrapping, Sealed::KeySlot { store }, &wrapped)
            && master.len() == 32
        {
            let mut key = Zeroizing::new([0u8; 32]);
            key.copy_from_slice(&master);
            return Ok(Some((*id, key)));
        }
    }
    Ok(None)
}

pub fn remove_slot(backend: &dyn Backend, id: &Id) -> anyhow::Result<()> {
    backend.delete(&slot_key(id))?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_keys_parse_from_hex_and_base64() {
        let hex_key = "11".repeat(32);
        assert!(matches!(Secret::parse_raw(&hex_key).unwrap(), Secret::Raw(k) if *k == [0x11; 32]));
        assert!(
            matches!(Secret::parse_raw(" ERERERERERERERERERERERERERERERERERERERERERE= \n").unwrap(), Secret::Raw(k) if *k == [0x11; 32])
        );
        assert!(Secret::parse_raw("abc").is_err());
        assert!(Secret::parse_raw("AAAA").unwrap_err().to_string().contains("32 bytes"));
    }

    #[test]
    fn a_slot_opens_only_with_its_secret_and_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let backend = super::super::backend::fs::FsBackend::new(dir.path());
        let (store, other_store) = (Id::random(), Id::random());
        let master = random_key();
        let raw = Secret::Raw(random_key());
        let id = add_slot(&backend, &store, &master, &raw, None).unwrap();
        let slots = list_slots(&backend).unwrap();
        assert_eq!(slots.len(), 1);
        let (got_id, got) = unlock(&slots, &store, &raw).unwrap().unwrap();
        assert_eq!((got_id, *got), (id, *master));
        assert!(unlock(&slots, &other_store, &raw).unwrap().is_none(), "bound to its store");
        assert!(unlock(&slots, &store, &Secret::Raw(random_key())).unwrap().is_none());
        assert!(unlock(&slots, &store, &Secret::Password(Zeroizing::new("x".into()))).unwrap().is_none());
        remove_slot(&backend, &id).unwrap();
        assert!(list_slots(&backend).unwrap().is_empty());
    }
}
