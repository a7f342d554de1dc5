//! ImageHash's `average_hash` with `hash_size = 8`, and its hex string.
//!
//! ImageHash takes `numpy.mean` of the 64 pixels of the 8×8 gray image and
//! sets a bit for each pixel strictly greater than the mean. The mean of 64
//! bytes is exact in `f64` (the sum is at most 16,320), so "pixel > mean" is
//! the integer test `64 · pixel > sum`, with no rounding to get wrong. The
//! bits are taken row by row, the top-left pixel first, and ImageHash's
//! `str()` reads them as one binary number: the top-left pixel is the most
//! significant bit of the `u64`, and the string is 16 lowercase hex digits.

use std::fmt;

use super::convert::{GrayImage, to_luma};
use super::decode::DecodedImage;
use super::resample::resize_lanczos;
use crate::error::{Error, Result};

/// Side of the hash's thumbnail: 8×8 pixels, 64 bits.
pub const HASH_SIDE: usize = 8;

/// A 64-bit average hash; bit 63 is the top-left pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AverageHash(pub u64);

impl AverageHash {
    /// The hash from an 8×8 gray thumbnail (ImageHash's steps after the resize).
    ///
    /// # Panics
    /// If `thumb` is not 8×8.
    pub fn from_thumbnail(thumb: &GrayImage) -> AverageHash {
        assert_eq!((thumb.width, thumb.height), (HASH_SIDE, HASH_SIDE), "thumbnail must be 8x8");
        let sum: u32 = thumb.pixels.iter().map(|&p| u32::from(p)).sum();
        let n = thumb.pixels.len() as u32;
        let bits = thumb.pixels.iter().fold(0u64, |acc, &p| (acc << 1) | u64::from(u32::from(p) * n > sum));
        AverageHash(bits)
    }

    /// The 16 lowercase hex digits ImageHash prints, e.g. `ffd7918181c9ffff`.
    pub fn to_hex(self) -> String {
        format!("{:016x}", self.0)
    }

    /// Parses 16 hex digits (either case) as printed by [`AverageHash::to_hex`].
    pub fn from_hex(s: &str) -> Result<AverageHash> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidRequest(format!("not an image hash (16 hex digits): {s:?}")));
        }
        u64::from_str_radix(s, 16).map(AverageHash).map_err(|e| Error::InvalidRequest(format!("not an image hash: {s:?}: {e}")))
    }

    /// The number of differing bits (ImageHash's `h1 - h2`).
    pub fn distance(self, other: AverageHash) -> u32 {
        (self.0 ^ other.0).count_ones()
    }
}

impl fmt::Display for AverageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// `imagehash.average_hash(image)`: gray as Pillow converts it, an 8×8
/// Lanczos thumbnail as Pillow resizes, each pixel against the mean.
pub fn average_hash(image: &DecodedImage) -> AverageHash {
    let gray = to_luma(image);
    AverageHash::from_thumbnail(&resize_lanczos(&gray, HASH_SIDE, HASH_SIDE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thumb(pixels: Vec<u8>) -> GrayImage {
        GrayImage { width: 8, height: 8, pixels }
    }

    #[test]
    fn top_left_is_most_significant_and_strictly_above_mean() {
        let mut p = vec![0u8; 64];
        p[0] = 255;
        let h = AverageHash::from_thumbnail(&thumb(p));
        assert_eq!(h.to_hex(), "8000000000000000");
        let mut p = vec![0u8; 64];
        p[63] = 1;
        assert_eq!(AverageHash::from_thumbnail(&thumb(p)).to_hex(), "0000000000000001");
        // All equal: nothing is strictly above the mean.
        assert_eq!(AverageHash::from_thumbnail(&thumb(vec![77; 64])).0, 0);
        // Left half 10, right half 11: mean 10.5, the right half is set.
        let p: Vec<u8> = (0..64).map(|i| if i % 8 >= 4 { 11 } else { 10 }).collect();
        assert_eq!(AverageHash::from_thumbnail(&thumb(p)).to_hex(), "0f0f0f0f0f0f0f0f");
    }

    #[test]
    fn hex_round_trip_and_distance() {
        let h = AverageHash::from_hex("FFD7918181C9FFFF").unwrap();
        assert_eq!(h.to_hex(), "ffd7918181c9ffff");
        assert_eq!(h.to_string(), "ffd7918181c9ffff");
        assert!(AverageHash::from_hex("ffd7918181c9fff").is_err());
        assert!(AverageHash::from_hex("+fd7918181c9ffff").is_err());
        assert_eq!(h.distance(AverageHash(h.0 ^ 0b1011)), 3);
    }
}
