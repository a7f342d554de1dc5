//! Pillow's `convert("L")`: any decoded mode to 8-bit gray.
//!
//! The luma of an RGB pixel is Pillow's fixed-point ITU-R 601-2 formula,
//! `(19595 R + 38470 G + 7471 B + 0x8000) >> 16` (the weights are 0.299,
//! 0.587 and 0.114 in 16-bit fixed point, and `0x8000` rounds). The other
//! modes follow Pillow's converters in `Convert.c`:
//!
//! * `RGBA`: the alpha channel is ignored (no compositing on a background);
//! * `LA`: the `L` channel as is;
//! * `P`: the luma of the palette entry; an index past the palette is black,
//!   as Pillow pads a short palette with zeros; transparency is ignored;
//! * `1`: 0 or 255;
//! * `I;16`: the value, clipped at 255 (Pillow clips, it does not scale);
//! * `CMYK`: Pillow's CMYK→RGB, `255 - K - C·(255 - K)/255` per channel with
//!   its rounding division by 255, then the luma.

use super::decode::{DecodedImage, Pixels};

/// An 8-bit grayscale image (Pillow mode `L`), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` gray values, row after row.
    pub pixels: Vec<u8>,
}

/// Pillow's luma of one RGB pixel (`L24(rgb) >> 16` in `Convert.c`).
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// Pillow's `MULDIV255(a, b)`: `a * b / 255`, rounded, in integers.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// Pillow's CMYK→RGB of one pixel.
pub fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = 255 - u32::from(k);
    let ch = |v: u8| nk.saturating_sub(muldiv255(u32::from(v), nk)) as u8;
    [ch(c), ch(m), ch(y)]
}

/// Converts a decoded image to gray exactly as Pillow's `convert("L")` does.
pub fn to_luma(image: &DecodedImage) -> GrayImage {
    let pixels = match image.pixels() {
        Pixels::Bilevel(p) => p.iter().map(|&v| if v != 0 { 255 } else { 0 }).collect(),
        Pixels::L(p) => p.clone(),
        Pixels::La(p) => p.chunks_exact(2).map(|c| c[0]).collect(),
        Pixels::Rgb(p) => p.chunks_exact(3).map(|c| luma(c[0], c[1], c[2])).collect(),
        Pixels::Rgba(p) => p.chunks_exact(4).map(|c| luma(c[0], c[1], c[2])).collect(),
        Pixels::P { indices, palette, .. } => {
            let mut lut = [0u8; 256];
            for (slot, rgb) in lut.iter_mut().zip(palette) {
                *slot = luma(rgb[0], rgb[1], rgb[2]);
            }
            indices.iter().map(|&i| lut[usize::from(i)]).collect()
        }
        Pixels::I16(p) => p.iter().map(|&v| v.min(255) as u8).collect(),
        Pixels::Cmyk(p) => p
            .chunks_exact(4)
            .map(|c| {
                let [r, g, b] = cmyk_to_rgb(c[0], c[1], c[2], c[3]);
                luma(r, g, b)
            })
            .collect(),
    };
    GrayImage { width: image.width(), height: image.height(), pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: usize, h: usize, p: Pixels) -> DecodedImage {
        DecodedImage::new(w, h, p).unwrap()
    }

    #[test]
    fn luma_matches_pillow_fixed_point() {
        // Hand-derived: (255*19595 + 0x8000) >> 16 = 76; 38470*255 -> 150; 7471*255 -> 29.
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(0, 0, 0), 0);
        // Values printed by Pillow 13: Image.new("RGB", (1, 1), c).convert("L").
        assert_eq!(luma(10, 20, 30), 18);
        assert_eq!(luma(200, 100, 50), 124);
        assert_eq!(luma(1, 1, 1), 1);
        assert_eq!(luma(128, 64, 32), 79);
    }

    #[test]
    fn modes_convert_as_pillow_does() {
        // P: palette of two entries; index 5 and 255 are past it and black (Pillow 13).
        let p = img(4, 1, Pixels::P { indices: vec![0, 1, 5, 255], palette: vec![[10, 20, 30], [200, 100, 50]], transparency: None });
        assert_eq!(to_luma(&p).pixels, vec![18, 124, 0, 0]);
        // I;16 clips (Pillow 13 gives 0, 200, 255, 255).
        assert_eq!(to_luma(&img(4, 1, Pixels::I16(vec![0, 200, 255, 256]))).pixels, vec![0, 200, 255, 255]);
        // CMYK via RGB (Pillow 13 gives 200, 118, 0).
        let cmyk = img(3, 1, Pixels::Cmyk(vec![10, 20, 30, 40, 200, 100, 50, 25, 0, 0, 0, 255]));
        assert_eq!(to_luma(&cmyk).pixels, vec![200, 118, 0]);
        // 1: nonzero is white.
        assert_eq!(to_luma(&img(3, 1, Pixels::Bilevel(vec![1, 0, 1]))).pixels, vec![255, 0, 255]);
        // RGBA ignores alpha; LA keeps L.
        assert_eq!(to_luma(&img(1, 1, Pixels::Rgba(vec![200, 100, 50, 0]))).pixels, vec![124]);
        assert_eq!(to_luma(&img(2, 1, Pixels::La(vec![7, 0, 9, 255]))).pixels, vec![7, 9]);
    }
}
