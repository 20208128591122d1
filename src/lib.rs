//! push-operator: backs up application volumes to object storage with content-defined
//! deduplication. The store engine lives in [`store`] and knows nothing of Kubernetes.

pub mod api;
pub mod cli;
pub mod controller;
pub mod location;
pub mod metrics;
pub mod progress;
pub mod restore_worker;
pub mod store;
pub mod test_hooks;
pub mod wait;
pub mod worker;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary. Kubernetes
/// limits (Event notes, termination messages) count bytes, and `String::truncate` panics inside
/// a character.
pub fn prefix_within(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_end_on_a_character_boundary_within_the_byte_limit() {
        assert_eq!(super::prefix_within("short", 1024), "short");
        assert_eq!(super::prefix_within(&"x".repeat(3000), 1024).len(), 1024);
        let wide = "ü".repeat(1000); // 2000 bytes
        let p = super::prefix_within(&wide, 1023);
        assert_eq!(p.len(), 1022);
        assert!(p.chars().all(|c| c == 'ü'));
        assert_eq!(super::prefix_within("€", 2), "");
    }
}
