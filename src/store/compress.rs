//! zstd with one reusable context per thread (a context per call would cost more than
//! compressing a small file).

use std::cell::RefCell;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compressed bytes, or `None` when compression does not save at least 1/32 (stored raw then).
pub fn compress(data: &[u8], level: i32) -> std::io::Result<Option<Vec<u8>>> {
    if data.len() < 64 {
        return Ok(None);
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, comp) = c.as_mut().unwrap();
        let limit = data.len() - data.len() / 32;
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        comp.compress_to_buffer(data, &mut out)?;
        Ok(if out.len() < limit { Some(out) } else { None })
    })
}

pub fn decompress(data: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        let mut out = Vec::with_capacity(raw_len);
        d.as_mut().unwrap().decompress_to_buffer(data, &mut out)?;
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_raw_fallback() {
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(100);
        let c = super::compress(&text, 3).unwrap().expect("text compresses");
        assert!(c.len() < text.len() / 4);
        assert_eq!(super::decompress(&c, text.len()).unwrap(), text);
        let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let _ = super::compress(&noise, 3).unwrap();
        assert!(super::decompress(b"not zstd", 10).is_err());
    }
}
