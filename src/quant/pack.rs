//! Bit packing of codes (docs/algorithms.md §2): a little-endian bit stream along the input
//! dimension, so code i of a 2-bit row sits in bits 2i..2i+1 of byte i/4, 4-bit codes two per
//! byte, and 3-bit codes 8 per 3 bytes.

use super::grid::Bits;
use crate::error::{Error, Result};

/// Packs `codes` (each below `2^bits`) into `ceil(len·bits/8)` bytes.
pub fn pack(codes: &[u8], bits: Bits) -> Result<Vec<u8>> {
    let b = usize::from(bits.get());
    let mut out = vec![0u8; (codes.len() * b).div_ceil(8)];
    for (i, &code) in codes.iter().enumerate() {
        if u32::from(code) > bits.max_code() {
            return Err(Error::Internal(format!(
                "code {code} at {i} does not fit in {b} bits"
            )));
        }
        let bit = i * b;
        let word = u16::from(code) << (bit % 8);
        out[bit / 8] |= word as u8;
        if bit % 8 + b > 8 {
            out[bit / 8 + 1] |= (word >> 8) as u8;
        }
    }
    Ok(out)
}

/// Unpacks `count` codes of `bits` bits.
pub fn unpack(bytes: &[u8], bits: Bits, count: usize) -> Result<Vec<u8>> {
    let b = usize::from(bits.get());
    if bytes.len() < (count * b).div_ceil(8) {
        return Err(Error::InvalidData(format!(
            "{} bytes cannot hold {count} codes of {b} bits",
            bytes.len()
        )));
    }
    let mask = bits.max_code() as u16;
    Ok((0..count)
        .map(|i| {
            let bit = i * b;
            let low = u16::from(bytes[bit / 8]);
            let high = bytes.get(bit / 8 + 1).map_or(0, |&h| u16::from(h));
            (((low | high << 8) >> (bit % 8)) & mask) as u8
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_the_spec() {
        let two = Bits::new(2).unwrap();
        assert_eq!(pack(&[1, 2, 3, 0, 3], two).unwrap(), [0b00_11_10_01, 0b11]);
        let four = Bits::new(4).unwrap();
        assert_eq!(pack(&[0xA, 0x5, 0xF], four).unwrap(), [0x5A, 0x0F]);
        let three = Bits::new(3).unwrap();
        assert_eq!(
            pack(&[7; 8], three).unwrap(),
            [0xFF; 3],
            "8 codes in 3 bytes"
        );
        assert!(pack(&[4], two).is_err());
    }

    #[test]
    fn round_trips_at_every_width() {
        for b in 2..=8 {
            let bits = Bits::new(b).unwrap();
            let codes: Vec<u8> = (0..1000u32)
                .map(|i| ((i * 2654435761) % (bits.max_code() + 1)) as u8)
                .collect();
            for len in [0, 1, 7, 999, 1000] {
                let packed = pack(&codes[..len], bits).unwrap();
                assert_eq!(packed.len(), (len * usize::from(b)).div_ceil(8));
                assert_eq!(
                    unpack(&packed, bits, len).unwrap(),
                    &codes[..len],
                    "b={b} len={len}"
                );
            }
        }
        assert!(unpack(&[0], Bits::new(3).unwrap(), 3).is_err());
    }
}
