//! Trees: one blob per directory, a JSON list of its entries sorted by name bytes.
//!
//! The same directory with the same metadata gives the same bytes and so the same id, which is
//! why an unchanged directory costs nothing in a later push.

use super::id::Id;
use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The name, when it is valid UTF-8 (else lossy, and `name_hex` holds the bytes).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits, setuid/setgid/sticky included (no file-type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub ctime: i64,
    pub ctime_nsec: u32,
    #[serde(default)]
    pub size: u64,
    pub inode: u64,
    pub dev: u64,
    pub nlink: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
}

fn encode_os(s: &OsStr) -> (String, Option<String>) {
    match s.to_str() {
        Some(v) => (v.to_string(), None),
        None => (s.to_string_lossy().into_owned(), Some(hex::encode(s.as_bytes()))),
    }
}

fn decode_os(plain: &str, raw: &Option<String>) -> OsString {
    match raw.as_ref().and_then(|h| hex::decode(h).ok()) {
        Some(bytes) => OsString::from_vec(bytes),
        None => OsString::from(plain),
    }
}

impl Node {
    /// A node from `lstat` metadata; content, subtree and target are filled in by the caller.
    pub fn from_metadata(name: &OsStr, kind: NodeKind, m: &std::fs::Metadata) -> Node {
        use std::os::unix::fs::MetadataExt;
        let (name, name_hex) = encode_os(name);
        Node {
            name,
            name_hex,
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec() as u32,
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec() as u32,
            size: if kind == NodeKind::File { m.len() } else { 0 },
            inode: m.ino(),
            dev: m.dev(),
            nlink: m.nlink(),
            target: None,
            target_hex: None,
            content: Vec::new(),
            subtree: None,
        }
    }

    pub fn os_name(&self) -> OsString {
        decode_os(&self.name, &self.name_hex)
    }

    pub fn name_bytes(&self) -> Vec<u8> {
        self.os_name().into_vec()
    }

    /// Compares the name's bytes with `other`, allocating only for a non-UTF-8 name.
    fn cmp_name(&self, other: &[u8]) -> std::cmp::Ordering {
        match &self.name_hex {
            None => self.name.as_bytes().cmp(other),
            Some(_) => self.name_bytes().as_slice().cmp(other),
        }
    }

    pub fn set_target(&mut self, target: &OsStr) {
        let (t, h) = encode_os(target);
        self.target = Some(t);
        self.target_hex = h;
    }

    pub fn os_target(&self) -> Option<OsString> {
        self.target.as_ref().map(|t| decode_os(t, &self.target_hex))
    }

    /// True when a file's content can be taken from `parent` without reading it again.
    pub fn unchanged_since(&self, parent: &Node) -> bool {
        self.kind == NodeKind::File
            && parent.kind == NodeKind::File
            && self.size == parent.size
            && self.mtime == parent.mtime
            && self.mtime_nsec == parent.mtime_nsec
            && self.ctime == parent.ctime
            && self.ctime_nsec == parent.ctime_nsec
            && self.inode == parent.inode
            && (self.size == 0 || !parent.content.is_empty())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Sorts by name bytes (the order lookups rely on).
    pub fn sort(&mut self) {
        self.nodes.sort_by_cached_key(|n| n.name_bytes());
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.cmp_name(name)).ok().map(|i| &self.nodes[i])
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("trees serialize")
    }

    pub fn decode(bytes: &[u8]) -> anyhow::Result<Tree> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_names_round_trip() {
        let raw = OsStr::from_bytes(b"caf\xe9");
        let m = std::fs::metadata(".").unwrap();
        let mut n = Node::from_metadata(raw, NodeKind::Symlink, &m);
        n.set_target(OsStr::from_bytes(b"\xff/target"));
        let t = Tree { nodes: vec![n] };
        let back = Tree::decode(&t.encode()).unwrap();
        assert_eq!(back.nodes[0].os_name(), raw);
        assert_eq!(back.nodes[0].os_target().unwrap(), OsStr::from_bytes(b"\xff/target"));
        assert!(back.find(b"caf\xe9").is_some());
        assert!(back.find(b"cafe").is_none());
    }
}
