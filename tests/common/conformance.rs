//! One conformance suite for every backend (the local directory and S3 run the same checks).

use push_operator::store::backend::{Backend, BackendError};
use std::sync::Arc;

pub fn run_suite(b: Arc<dyn Backend>) {
    // Empty to start with.
    assert!(b.list("").unwrap().is_empty(), "suite needs an empty location");
    assert!(matches!(b.get("config"), Err(BackendError::NotFound(_))));
    assert_eq!(b.stat("config").unwrap(), None);

    // put-if-absent: the first write wins, a second leaves the object as it was.
    assert!(b.put_if_absent("config", b"first").unwrap());
    assert!(!b.put_if_absent("config", b"second").unwrap());
    assert_eq!(b.get("config").unwrap(), b"first");
    assert_eq!(b.stat("config").unwrap(), Some(5));

    // Ranges.
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    assert!(b.put_if_absent("packs/ab/abcdef", &data).unwrap());
    assert_eq!(b.get_range("packs/ab/abcdef", 0, 10).unwrap(), &data[..10]);
    assert_eq!(b.get_range("packs/ab/abcdef", 99_990, 10).unwrap(), &data[99_990..]);
    assert_eq!(b.get_range("packs/ab/abcdef", 12_345, 50_000).unwrap(), &data[12_345..62_345]);
    assert!(b.get_range("packs/ab/abcdef", 99_990, 20).is_err(), "a range past the end is an error");
    assert!(matches!(b.get_range("packs/zz/missing", 0, 1), Err(BackendError::NotFound(_))));

    // Empty objects.
    assert!(b.put_if_absent("snapshots/empty", b"").unwrap());
    assert_eq!(b.get("snapshots/empty").unwrap(), b"");

    // A large object (bigger than any single read buffer).
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    assert!(b.put_if_absent("packs/cd/big", &big).unwrap());
    assert_eq!(b.get("packs/cd/big").unwrap(), big);
    assert_eq!(b.stat("packs/cd/big").unwrap(), Some(big.len() as u64));

    // Listing by prefix, with sizes.
    b.put_if_absent("index/one", b"1").unwrap();
    let mut packs: Vec<(String, u64)> = b.list("packs/").unwrap().into_iter().map(|o| (o.key, o.size)).collect();
    packs.sort();
    assert_eq!(packs, vec![("packs/ab/abcdef".to_string(), 100_000), ("packs/cd/big".to_string(), big.len() as u64)]);
    assert_eq!(b.list("index/").unwrap().len(), 1);
    assert_eq!(b.list("packs/ab/").unwrap().len(), 1);
    assert!(b.list("locks/").unwrap().is_empty());

    // Listing pages (S3 returns at most 1000 keys a page).
    std::thread::scope(|s| {
        for t in 0..8 {
            let b = &b;
            s.spawn(move || {
                for i in (t..1100).step_by(8) {
                    assert!(b.put_if_absent(&format!("many/{i:05}"), b"x").unwrap());
                }
            });
        }
    });
    assert_eq!(b.list("many/").unwrap().len(), 1100);

    // A race of writers on one key: exactly one wins, and the object is the winner's.
    let winners: Vec<(usize, bool)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let b = &b;
                s.spawn(move || (i, b.put_if_absent("race/key", format!("writer {i}").as_bytes()).unwrap()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<usize> = winners.iter().filter(|(_, w)| *w).map(|(i, _)| *i).collect();
    assert_eq!(won.len(), 1, "exactly one writer must win: {winners:?}");
    assert_eq!(b.get("race/key").unwrap(), format!("writer {}", won[0]).as_bytes());

    // Delete: gone, and deleting again is fine.
    b.delete("index/one").unwrap();
    assert_eq!(b.stat("index/one").unwrap(), None);
    b.delete("index/one").unwrap();
    assert!(b.list("index/").unwrap().is_empty());
    // A deleted key can be written again.
    assert!(b.put_if_absent("index/one", b"again").unwrap());
    assert_eq!(b.get("index/one").unwrap(), b"again");
}
