//! Decoded images in Pillow's modes, and decoding of PNG and JPEG files.
//!
//! [`DecodedImage`] is always built: it is what the hash works on, and tests
//! construct it directly. Reading files needs the optional `png` and
//! `zune-jpeg` crates, built only with the cargo feature `images`; without
//! it [`decode_file`] and [`decode_bytes`] return an error that says how to
//! rebuild.
//!
//! A file is decoded into the mode Pillow's plugins give it, because that is
//! what `convert("L")` then sees:
//!
//! | file | Pillow mode | here |
//! |---|---|---|
//! | PNG gray, 1 bit | `1` | [`Pixels::Bilevel`] |
//! | PNG gray, 2/4/8 bits | `L` (2 and 4 bits scaled by 85 and 17) | [`Pixels::L`] |
//! | PNG gray, 16 bits | `I;16` | [`Pixels::I16`] |
//! | PNG gray + alpha, 8 bits | `LA` | [`Pixels::La`] |
//! | PNG gray + alpha, 16 bits | `RGBA` (high bytes, gray copied) | [`Pixels::Rgba`] |
//! | PNG RGB / RGBA, 8 or 16 bits | `RGB` / `RGBA` (high bytes) | [`Pixels::Rgb`] / [`Pixels::Rgba`] |
//! | PNG palette, 1-8 bits | `P`, palette and `tRNS` kept | [`Pixels::P`] |
//! | JPEG gray / YCbCr | `L` / `RGB` | [`Pixels::L`] / [`Pixels::Rgb`] |
//! | JPEG CMYK / YCCK | `CMYK` | [`Pixels::Rgb`], converted by the decoder (see below) |
//!
//! Gamma, colour profiles and EXIF orientation are ignored, as ImageHash
//! does. JPEG pixels are those of `zune-jpeg`, which follows libjpeg-turbo's
//! integer IDCT and fancy upsampling; CMYK JPEGs are converted to RGB by
//! `zune-jpeg` rather than by Pillow's formula, so their hash may differ from
//! ImageHash's by a few bits.
//!
//! Decoding never panics on a corrupt or truncated file, and refuses images
//! wider or taller than [`MAX_SIDE`] or with more than [`MAX_PIXELS`] pixels
//! before allocating their pixels.

use std::path::Path;

use super::ahash::{AverageHash, average_hash};
use crate::error::{Error, Result};

/// The largest width or height accepted, in pixels (JPEG's own limit).
pub const MAX_SIDE: usize = 65_535;

/// The most pixels accepted (64 Mi; an RGBA image of this size is 256 MiB).
pub const MAX_PIXELS: usize = 1 << 26;

/// The error without the `images` feature.
pub const NOT_BUILT: &str = "image decoding is not built in: rebuild with `cargo build --release --features images` (see README)";

/// Pixels in one of Pillow's modes, row-major, channels interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pixels {
    /// Mode `1`: one byte per pixel, 0 is black, anything else white.
    Bilevel(Vec<u8>),
    /// Mode `L`: one gray byte per pixel.
    L(Vec<u8>),
    /// Mode `LA`: gray and alpha.
    La(Vec<u8>),
    /// Mode `RGB`.
    Rgb(Vec<u8>),
    /// Mode `RGBA`.
    Rgba(Vec<u8>),
    /// Mode `P`: palette indices; indices past the palette are black.
    P {
        /// One palette index per pixel.
        indices: Vec<u8>,
        /// Up to 256 RGB entries.
        palette: Vec<[u8; 3]>,
        /// The alpha of the first entries (PNG's `tRNS`), if any; it does
        /// not change the gray value, as in Pillow.
        transparency: Option<Vec<u8>>,
    },
    /// Mode `I;16`: one 16-bit gray value per pixel.
    I16(Vec<u16>),
    /// Mode `CMYK`: cyan, magenta, yellow, black (not inverted).
    Cmyk(Vec<u8>),
}

impl Pixels {
    /// Pillow's name of the mode.
    pub fn mode(&self) -> &'static str {
        match self {
            Pixels::Bilevel(_) => "1",
            Pixels::L(_) => "L",
            Pixels::La(_) => "LA",
            Pixels::Rgb(_) => "RGB",
            Pixels::Rgba(_) => "RGBA",
            Pixels::P { .. } => "P",
            Pixels::I16(_) => "I;16",
            Pixels::Cmyk(_) => "CMYK",
        }
    }

    /// The number of pixels the buffer holds.
    fn count(&self) -> Option<usize> {
        let (len, per) = match self {
            Pixels::Bilevel(p) | Pixels::L(p) => (p.len(), 1),
            Pixels::La(p) => (p.len(), 2),
            Pixels::Rgb(p) => (p.len(), 3),
            Pixels::Rgba(p) | Pixels::Cmyk(p) => (p.len(), 4),
            Pixels::P { indices, palette, .. } => {
                if palette.len() > 256 {
                    return None;
                }
                (indices.len(), 1)
            }
            Pixels::I16(p) => (p.len(), 1),
        };
        (len % per == 0).then_some(len / per)
    }
}

/// A decoded image: its size and its pixels in a Pillow mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    width: usize,
    height: usize,
    pixels: Pixels,
}

impl DecodedImage {
    /// An image of `width × height` pixels; fails if the buffer does not hold
    /// exactly that many pixels, if a side is zero or above [`MAX_SIDE`], if
    /// there are more than [`MAX_PIXELS`], or if a palette has more than 256
    /// entries.
    pub fn new(width: usize, height: usize, pixels: Pixels) -> Result<DecodedImage> {
        check_size(width, height)?;
        if pixels.count() != Some(width * height) {
            return Err(Error::InvalidRequest(format!(
                "{} image of {width}x{height}: the pixel buffer does not match the size",
                pixels.mode()
            )));
        }
        Ok(DecodedImage { width, height, pixels })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixels.
    pub fn pixels(&self) -> &Pixels {
        &self.pixels
    }
}

/// Refuses empty and absurd sizes before anything is allocated.
pub fn check_size(width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidRequest(format!("empty image ({width}x{height})")));
    }
    if width > MAX_SIDE || height > MAX_SIDE || width.saturating_mul(height) > MAX_PIXELS {
        return Err(Error::InvalidRequest(format!(
            "image too large: {width}x{height} (at most {MAX_SIDE} per side and {MAX_PIXELS} pixels)"
        )));
    }
    Ok(())
}

/// Reads and decodes a PNG or JPEG file (by its contents, not its name).
///
/// Errors name the file and what failed. Without the `images` feature this
/// always fails with a message saying how to rebuild.
pub fn decode_file(path: &Path) -> Result<DecodedImage> {
    if !cfg!(feature = "images") {
        return Err(Error::InvalidRequest(NOT_BUILT.to_string()));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::InvalidRequest(format!("{}: {e}", path.display())))?;
    decode_bytes(&bytes).map_err(|e| Error::InvalidRequest(format!("{}: {}", path.display(), e.message())))
}

/// The average hash of a PNG or JPEG file, as `imagehash.average_hash`
/// gives it for `Image.open(path)`.
pub fn hash_file(path: &Path) -> Result<AverageHash> {
    decode_file(path).map(|image| average_hash(&image))
}

/// Decodes PNG or JPEG bytes, told apart by their signature.
pub fn decode_bytes(bytes: &[u8]) -> Result<DecodedImage> {
    #[cfg(feature = "images")]
    {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            formats::png(bytes)
        } else if bytes.starts_with(&[0xff, 0xd8]) {
            formats::jpeg(bytes)
        } else {
            Err(Error::InvalidRequest("not a PNG or JPEG file".to_string()))
        }
    }
    #[cfg(not(feature = "images"))]
    {
        let _ = bytes;
        Err(Error::InvalidRequest(NOT_BUILT.to_string()))
    }
}

#[cfg(feature = "images")]
mod formats {
    use super::{DecodedImage, MAX_PIXELS, MAX_SIDE, Pixels, check_size};
    use crate::error::{Error, Result};

    fn bad(what: &str, e: impl std::fmt::Display) -> Error {
        Error::InvalidRequest(format!("cannot decode {what}: {e}"))
    }

    /// Unpacks `bits`-deep samples (1, 2 or 4) of `width` pixels per row.
    fn unpack(buf: &[u8], line: usize, width: usize, height: usize, bits: usize, scale: u8) -> Vec<u8> {
        let mask = (1u8 << bits) - 1;
        let mut out = Vec::with_capacity(width * height);
        for row in buf.chunks(line).take(height) {
            for x in 0..width {
                let bit = x * bits;
                let byte = row.get(bit / 8).copied().unwrap_or(0);
                let v = (byte >> (8 - bits - bit % 8)) & mask;
                out.push(v * scale);
            }
        }
        out
    }

    /// The high byte of each big-endian 16-bit sample (Pillow's `;16B` modes).
    fn high_bytes(buf: &[u8]) -> Vec<u8> {
        buf.chunks_exact(2).map(|s| s[0]).collect()
    }

    pub(super) fn png(bytes: &[u8]) -> Result<DecodedImage> {
        use png::{BitDepth, ColorType, Decoder, Limits, Transformations};
        // Limit: the largest frame we accept, 16-bit RGBA.
        // The size from IHDR (always the first chunk), checked before the
        // decoder allocates anything.
        if let Some(ihdr) = bytes.get(16..24) {
            let width = u32::from_be_bytes([ihdr[0], ihdr[1], ihdr[2], ihdr[3]]) as usize;
            let height = u32::from_be_bytes([ihdr[4], ihdr[5], ihdr[6], ihdr[7]]) as usize;
            check_size(width, height)?;
        }
        let limits = Limits { bytes: MAX_PIXELS * 8 };
        let mut decoder = Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
        decoder.set_transformations(Transformations::IDENTITY);
        let mut reader = decoder.read_info().map_err(|e| bad("PNG", e))?;
        let (width, height) = {
            let info = reader.info();
            (info.width as usize, info.height as usize)
        };
        check_size(width, height)?;
        let mut buf = vec![0; reader.output_buffer_size()];
        let frame = reader.next_frame(&mut buf).map_err(|e| bad("PNG", e))?;
        buf.truncate(frame.buffer_size());
        let (line, bits) = (frame.line_size, frame.bit_depth as usize);
        let info = reader.info();
        let pixels = match (frame.color_type, frame.bit_depth) {
            (ColorType::Grayscale, BitDepth::One) => Pixels::Bilevel(unpack(&buf, line, width, height, 1, 1)),
            (ColorType::Grayscale, BitDepth::Two) => Pixels::L(unpack(&buf, line, width, height, 2, 85)),
            (ColorType::Grayscale, BitDepth::Four) => Pixels::L(unpack(&buf, line, width, height, 4, 17)),
            (ColorType::Grayscale, BitDepth::Eight) => Pixels::L(buf),
            (ColorType::Grayscale, BitDepth::Sixteen) => {
                Pixels::I16(buf.chunks_exact(2).map(|s| u16::from_be_bytes([s[0], s[1]])).collect())
            }
            (ColorType::GrayscaleAlpha, BitDepth::Eight) => Pixels::La(buf),
            (ColorType::GrayscaleAlpha, BitDepth::Sixteen) => {
                Pixels::Rgba(high_bytes(&buf).chunks_exact(2).flat_map(|la| [la[0], la[0], la[0], la[1]]).collect())
            }
            (ColorType::Rgb, BitDepth::Eight) => Pixels::Rgb(buf),
            (ColorType::Rgb, BitDepth::Sixteen) => Pixels::Rgb(high_bytes(&buf)),
            (ColorType::Rgba, BitDepth::Eight) => Pixels::Rgba(buf),
            (ColorType::Rgba, BitDepth::Sixteen) => Pixels::Rgba(high_bytes(&buf)),
            (ColorType::Indexed, depth) => {
                let indices = if depth == BitDepth::Eight { buf } else { unpack(&buf, line, width, height, bits, 1) };
                let palette = info
                    .palette
                    .as_ref()
                    .ok_or_else(|| bad("PNG", "palette image without a palette"))?
                    .chunks_exact(3)
                    .take(256)
                    .map(|c| [c[0], c[1], c[2]])
                    .collect();
                let transparency = info.trns.as_ref().map(|t| t.to_vec());
                Pixels::P { indices, palette, transparency }
            }
            (color, depth) => return Err(bad("PNG", format!("unsupported {color:?} at {depth:?}"))),
        };
        DecodedImage::new(width, height, pixels).map_err(|e| bad("PNG", e.message()))
    }

    pub(super) fn jpeg(bytes: &[u8]) -> Result<DecodedImage> {
        use zune_jpeg::JpegDecoder;
        use zune_jpeg::zune_core::colorspace::ColorSpace;
        use zune_jpeg::zune_core::options::DecoderOptions;
        // Strict: a truncated file is an error (as in Pillow), not gray rows.
        let options = DecoderOptions::default().set_max_width(MAX_SIDE).set_max_height(MAX_SIDE).set_strict_mode(true);
        let mut decoder = JpegDecoder::new_with_options(bytes, options);
        decoder.decode_headers().map_err(|e| bad("JPEG", format!("{e:?}")))?;
        let info = decoder.info().ok_or_else(|| bad("JPEG", "no frame header"))?;
        let (width, height) = (usize::from(info.width), usize::from(info.height));
        check_size(width, height)?;
        let gray = decoder.get_input_colorspace() == Some(ColorSpace::Luma);
        let out = if gray { ColorSpace::Luma } else { ColorSpace::RGB };
        decoder.set_options(options.jpeg_set_out_colorspace(out));
        // zune-jpeg fills a truncated scan with gray; libjpeg warns and
        // Pillow refuses the file. The end-of-image marker must follow the
        // last start-of-scan (markers cannot occur inside entropy-coded data).
        let last_scan = bytes.windows(2).rposition(|w| w == [0xff, 0xda]).unwrap_or(0);
        if !bytes[last_scan..].windows(2).any(|w| w == [0xff, 0xd9]) {
            return Err(bad("JPEG", "the file is truncated (no end-of-image marker)"));
        }
        let buf = decoder.decode().map_err(|e| bad("JPEG", format!("{e:?}")))?;
        let pixels = if gray { Pixels::L(buf) } else { Pixels::Rgb(buf) };
        DecodedImage::new(width, height, pixels).map_err(|e| bad("JPEG", e.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert!(DecodedImage::new(2, 2, Pixels::L(vec![0; 4])).is_ok());
        assert!(DecodedImage::new(2, 2, Pixels::Rgb(vec![0; 11])).is_err());
        assert!(DecodedImage::new(0, 2, Pixels::L(vec![])).is_err());
        assert!(check_size(MAX_SIDE + 1, 1).is_err());
        assert!(check_size(10_000, 10_000).is_err());
        let palette = vec![[0u8; 3]; 257];
        assert!(DecodedImage::new(1, 1, Pixels::P { indices: vec![0], palette, transparency: None }).is_err());
    }

    #[cfg(not(feature = "images"))]
    #[test]
    fn without_the_feature_decoding_says_how_to_enable_it() {
        let err = decode_file(Path::new("tests/data/imagehash.png")).unwrap_err().to_string();
        assert!(err.contains("--features images"), "{err}");
        assert!(decode_bytes(b"\x89PNG\r\n\x1a\n").unwrap_err().to_string().contains("not built in"));
    }
}
