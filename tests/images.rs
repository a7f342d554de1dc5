//! The image hash on real files (needs `--features images`).
//!
//! Expected hashes are ImageHash 4.3.2's `average_hash` on Pillow 13.0.0, as
//! printed by `tests/data/make_refs.py`, which also generated the files.

use std::path::PathBuf;

use quorumkv::image::{AverageHash, Pixels, average_hash, decode_bytes, decode_file, hash_file};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn hash(name: &str) -> String {
    hash_file(&data(name)).unwrap_or_else(|e| panic!("{name}: {e}")).to_hex()
}

#[test]
fn imagehash_test_vector() {
    // ImageHash's own test value for its test image.
    assert_eq!(hash("imagehash.png"), "ffd7918181c9ffff");
}

#[test]
fn files_hash_as_imagehash_does() {
    for (name, mode, expected) in [
        ("imagehash.png", "RGBA", "ffd7918181c9ffff"),
        ("gradient.png", "L", "0f1e1e1e3c3c7878"),
        ("noise_rgb.png", "RGB", "25fa691901cd6dcd"),
        ("palette.png", "P", "ffd7918181c9ffff"),
        ("rgba.png", "RGBA", "000001071f7fffff"),
        ("gray16.png", "I;16", "3f7f7f7f7f7f7f7f"),
        ("imagehash_half.png", "RGB", "ffd7918181c9ffff"),
        ("imagehash_half_q90.jpg", "RGB", "ffd7918181c9ffff"),
        ("imagehash_half_q75.jpg", "RGB", "ffd7918181c9ffff"),
        ("imagehash_half_q20.jpg", "RGB", "ffd7918181c9ffff"),
        ("imagehash_half_gray.jpg", "L", "ffd7918181c9ffff"),
        ("imagehash_half_444.jpg", "RGB", "ffd7918181c9ffff"),
        ("noise_q85.jpg", "RGB", "25fa691901cd6dcd"),
    ] {
        let image = decode_file(&data(name)).unwrap();
        assert_eq!(image.pixels().mode(), mode, "{name}");
        assert_eq!(average_hash(&image).to_hex(), expected, "{name}");
    }
}

#[test]
fn palette_png_keeps_palette_and_transparency() {
    let image = decode_file(&data("palette.png")).unwrap();
    let Pixels::P { indices, palette, transparency } = image.pixels() else { panic!("not P") };
    assert_eq!((image.width(), image.height()), (150, 75));
    assert_eq!(palette.len(), 16);
    assert!(indices.iter().all(|&i| i < 16));
    assert_eq!(transparency.as_deref().map(|t| t[3]), Some(0));
}

#[test]
fn jpeg_pixels_are_close_to_libjpeg_turbo() {
    // zune-jpeg is not bit-exact with the libjpeg-turbo inside Pillow: a
    // few pixels differ by up to 3 (IDCT and colour-conversion rounding).
    // Pillow's decoded bytes of the same file are in noise_q85.pillow.rgb.
    let image = decode_file(&data("noise_q85.jpg")).unwrap();
    let Pixels::Rgb(ours) = image.pixels() else { panic!("not RGB") };
    let pillow = std::fs::read(data("noise_q85.pillow.rgb")).unwrap();
    assert_eq!(ours.len(), pillow.len());
    let diffs: Vec<u8> = ours.iter().zip(&pillow).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = diffs.iter().max().copied().unwrap_or(0);
    let differing = diffs.iter().filter(|&&d| d != 0).count();
    assert!(max <= 3, "a pixel differs by {max}");
    assert!(differing * 2 < diffs.len(), "{differing} of {} bytes differ", diffs.len());
}

#[test]
fn resized_and_reencoded_copies_stay_close() {
    let original = AverageHash::from_hex("ffd7918181c9ffff").unwrap();
    for name in ["imagehash_half.png", "imagehash_half_q75.jpg", "imagehash_half_q20.jpg", "imagehash_half_gray.jpg"] {
        let h = hash_file(&data(name)).unwrap();
        assert!(h.distance(original) <= 4, "{name}: {h} is {} bits from {original}", h.distance(original));
    }
}

#[test]
fn corrupt_files_are_errors_not_panics() {
    let png = std::fs::read(data("imagehash.png")).unwrap();
    let jpg = std::fs::read(data("imagehash_half_q75.jpg")).unwrap();
    for whole in [&png, &jpg] {
        for cut in [0, 2, 8, 20, 33, 60, 100, 1000, whole.len() / 2, whole.len() - 20] {
            assert!(decode_bytes(&whole[..cut]).is_err(), "truncated at {cut} decoded");
        }
        // Garbage after the signature, and flipped bytes in the middle: an
        // error or some image, never a panic.
        let mut garbage = whole[..16].to_vec();
        garbage.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        assert!(decode_bytes(&garbage).is_err());
        for step in [7usize, 101, 997] {
            let mut flipped = whole.clone();
            for i in (whole.len() / 4..whole.len()).step_by(step) {
                flipped[i] ^= 0x5a;
            }
            let _ = decode_bytes(&flipped);
        }
    }
    assert!(decode_bytes(b"GIF89a").unwrap_err().to_string().contains("not a PNG or JPEG"));
    let err = decode_file(&data("no-such-file.png")).unwrap_err().to_string();
    assert!(err.contains("no-such-file.png"), "{err}");
}

#[test]
fn absurd_dimensions_are_refused_before_allocating() {
    // A valid PNG header claiming 60000 x 60000 pixels, no data.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(60_000u32.to_be_bytes());
    ihdr.extend(60_000u32.to_be_bytes());
    ihdr.extend([8, 6, 0, 0, 0]);
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    let err = decode_bytes(&png).unwrap_err().to_string();
    assert!(err.contains("too large") || err.contains("limit"), "{err}");
    // A JPEG SOF0 claiming 65000 x 65000.
    let jpg = [
        0xff, 0xd8, 0xff, 0xc0, 0x00, 0x11, 0x08, 0xfd, 0xe8, 0xfd, 0xe8, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01, 0xff,
        0xd9,
    ];
    assert!(decode_bytes(&jpg).is_err());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
