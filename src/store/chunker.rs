//! Content-defined chunking: FastCDC (v2020, normalization level 1) with the store's parameters.
//!
//! Cut points depend only on the bytes of the file, so an insertion shifts at most the chunks
//! around it. Masks are computed once per store; a cut decision looks at most `max_size` bytes
//! ahead, which lets large files be chunked in bounded segments with the same result as in one
//! piece (see [`Chunker::cut_points`]).

use fastcdc::v2020;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ChunkerAlgorithm {
    #[default]
    #[serde(rename = "fastcdc-v2020")]
    FastCdcV2020,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub algorithm: ChunkerAlgorithm,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 128 KiB / 512 KiB / 2 MiB: small enough that a database volume with scattered page
    /// writes does not re-upload megabytes per changed page, large enough that the index of a
    /// terabyte stays in the hundreds of megabytes.
    fn default() -> Self {
        ChunkerParams {
            algorithm: ChunkerAlgorithm::FastCdcV2020,
            min_size: 128 << 10,
            avg_size: 512 << 10,
            max_size: 2 << 20,
        }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<(), String> {
        let (min, avg, max) = (self.min_size, self.avg_size, self.max_size);
        let in_range = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max;
        if !in_range {
            return Err(format!(
                "chunk sizes {min}/{avg}/{max} out of range: need {}..={} <= {}..={} <= {}..={}",
                v2020::MINIMUM_MIN,
                v2020::MINIMUM_MAX,
                v2020::AVERAGE_MIN,
                v2020::AVERAGE_MAX,
                v2020::MAXIMUM_MIN,
                v2020::MAXIMUM_MAX
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl Chunker {
    /// `gear`: a keyed gear table (encrypted stores, see [`super::crypto`]); the standard
    /// table when `None`.
    pub fn new(p: &ChunkerParams, gear: Option<&[u64; 256]>) -> Chunker {
        p.validate().expect("chunker parameters are validated when the store is opened");
        let bits = v2020::logarithm2(p.avg_size);
        let norm = v2020::Normalization::Level1.bits();
        let (gear, gear_ls) = match gear {
            None => v2020::get_gear_with_seed(0),
            Some(g) => (Box::new(*g), Box::new(g.map(|v| v << 1))),
        };
        Chunker {
            min: p.min_size as usize,
            avg: p.avg_size as usize,
            max: p.max_size as usize,
            mask_s: v2020::MASKS[(bits + norm) as usize],
            mask_l: v2020::MASKS[(bits - norm) as usize],
            gear,
            gear_ls,
        }
    }

    pub fn max_size(&self) -> usize {
        self.max
    }

    /// Chunk ends (exclusive offsets) in `data`. With `eof` false, stops before the bytes whose
    /// cut could depend on data not yet read (fewer than `max_size` left); the caller carries
    /// them over to the next segment. With `eof` true, every byte is covered.
    pub fn cut_points(&self, data: &[u8], eof: bool) -> Vec<usize> {
        let mut out = Vec::with_capacity(data.len() / self.avg + 1);
        let mut pos = 0;
        while pos < data.len() && (eof || data.len() - pos >= self.max) {
            let end = (pos + self.max).min(data.len());
            let (_, n) = v2020::cut_gear(
                &data[pos..end],
                self.min,
                self.avg,
                self.max,
                self.mask_s,
                self.mask_l,
                self.mask_s << 1,
                self.mask_l << 1,
                &self.gear,
                &self.gear_ls,
            );
            let n = if n == 0 { end - pos } else { n };
            pos += n;
            out.push(pos);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::testdata::seeded_bytes;

    fn chunks(c: &Chunker, data: &[u8]) -> Vec<(usize, String)> {
        let mut start = 0;
        c.cut_points(data, true)
            .into_iter()
            .map(|end| {
                let r = (end - start, crate::store::id::Id::of(&data[start..end]).short());
                start = end;
                r
            })
            .collect()
    }

    /// Pinned: a change of algorithm or default parameters changes every chunk id in every
    /// store and breaks deduplication against existing data. This test must fail loudly then.
    #[test]
    fn pinned_chunks_of_seeded_data() {
        let data = seeded_bytes(42, 6 << 20);
        let got = chunks(&Chunker::new(&ChunkerParams::default(), None), &data);
        let want: Vec<(usize, &str)> = vec![
            (200872, "6e9abaec"),
            (1488248, "9a3d6a67"),
            (757820, "a26fc8c1"),
            (842203, "5894aad3"),
            (1003927, "2b5f7bcf"),
            (180974, "df208ab8"),
            (565037, "6ee528d8"),
            (801095, "fa2130a1"),
            (369045, "0ce39bba"),
            (82235, "dec4c19f"),
        ];
        let got_ref: Vec<(usize, &str)> = got.iter().map(|(l, h)| (*l, h.as_str())).collect();
        assert_eq!(got_ref, want, "chunk boundaries or ids moved");
    }

    #[test]
    fn small_parameters_pinned() {
        let data = seeded_bytes(7, 64 << 10);
        let p = ChunkerParams {
            algorithm: ChunkerAlgorithm::FastCdcV2020,
            min_size: 2048,
            avg_size: 8192,
            max_size: 32768,
        };
        let got = chunks(&Chunker::new(&p, None), &data);
        let lens: Vec<usize> = got.iter().map(|c| c.0).collect();
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        assert_eq!(lens, vec![10041, 9791, 11339, 8311, 9401, 12858, 3795]);
    }

    #[test]
    fn segmented_chunking_equals_whole() {
        let data = seeded_bytes(1, 9 << 20);
        let c = Chunker::new(&ChunkerParams::default(), None);
        let whole = c.cut_points(&data, true);
        // Feed the same data in 3 MiB segments with carry-over, as the pusher does.
        let mut ends = Vec::new();
        let mut base = 0;
        let mut buf: Vec<u8> = Vec::new();
        for seg in data.chunks(3 << 20) {
            buf.extend_from_slice(seg);
            let eof = base + buf.len() == data.len();
            let cuts = c.cut_points(&buf, eof);
            let consumed = cuts.last().copied().unwrap_or(0);
            ends.extend(cuts.iter().map(|e| base + e));
            buf.drain(..consumed);
            base += consumed;
        }
        assert_eq!(ends, whole);
    }

    #[test]
    fn bounds_hold_and_tail_is_covered() {
        let c = Chunker::new(&ChunkerParams::default(), None);
        let data = seeded_bytes(3, 5 << 20);
        let cuts = c.cut_points(&data, true);
        assert_eq!(*cuts.last().unwrap(), data.len());
        let mut prev = 0;
        for (i, &e) in cuts.iter().enumerate() {
            let len = e - prev;
            assert!(len <= 2 << 20);
            if i + 1 < cuts.len() {
                assert!(len >= 128 << 10);
            }
            prev = e;
        }
        assert!(c.cut_points(&[], true).is_empty());
        assert_eq!(c.cut_points(&[1, 2, 3], true), vec![3]);
        assert!(c.cut_points(&data[..1 << 20], false).is_empty());
    }

    /// The precomputed-mask cutter gives exactly the crate's own FastCDC v2020 iterator.
    #[test]
    fn equals_the_reference_fastcdc_v2020() {
        let data = seeded_bytes(11, 7 << 20);
        let p = ChunkerParams::default();
        let reference: Vec<usize> =
            v2020::FastCDC::new(&data, p.min_size, p.avg_size, p.max_size).map(|c| c.offset + c.length).collect();
        assert_eq!(Chunker::new(&p, None).cut_points(&data, true), reference);
    }

    /// A keyed table moves the cut points (what an encrypted store uses), and the segmented
    /// cutting still equals the whole.
    #[test]
    fn a_keyed_gear_table_moves_the_cut_points() {
        let data = seeded_bytes(11, 7 << 20);
        let p = ChunkerParams::default();
        let keys = crate::store::crypto::Crypto::Sealed(Box::new(crate::store::crypto::Keys::derive(&[9u8; 32])));
        let keyed = Chunker::new(&p, keys.gear());
        let cuts = keyed.cut_points(&data, true);
        assert_ne!(cuts, Chunker::new(&p, None).cut_points(&data, true));
        assert_eq!(*cuts.last().unwrap(), data.len());
        let avg = data.len() / cuts.len();
        assert!((256 << 10..=1 << 20).contains(&avg), "average chunk {avg} is far from 512 KiB");
        let mut ends = keyed.cut_points(&data[..4 << 20], false);
        let consumed = *ends.last().unwrap();
        ends.extend(keyed.cut_points(&data[consumed..], true).into_iter().map(|e| e + consumed));
        assert_eq!(ends, cuts);
    }

    #[test]
    fn rejects_bad_parameters() {
        let p = ChunkerParams {
            algorithm: ChunkerAlgorithm::FastCdcV2020,
            min_size: 8192,
            avg_size: 4096,
            max_size: 65536,
        };
        assert!(p.validate().is_err());
    }
}
