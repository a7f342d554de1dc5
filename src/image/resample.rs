//! Pillow's `resize(size, Image.Resampling.LANCZOS)` for 8-bit gray images.
//!
//! This follows the arithmetic of Pillow's `libImaging/Resample.c`, since the
//! hash depends on every rounding:
//!
//! * **Coefficients**, per output pixel and axis, in `f64`: the scale is
//!   `in / out`; the filter is stretched by `max(scale, 1)`, so the Lanczos-3
//!   support of 3 input pixels becomes `3 · scale` when shrinking. The
//!   output pixel `i` is centred at `(i + 0.5) · scale`; the input window is
//!   `[trunc(centre - support + 0.5), trunc(centre + support + 0.5))`
//!   clamped to the image, and input pixel `x` gets the weight
//!   `lanczos((x - centre + 0.5) / max(scale, 1))`, with
//!   `lanczos(t) = sinc(t) · sinc(t / 3)` on `[-3, 3)`. The weights are
//!   divided by their sum.
//! * **Fixed point**: each weight becomes `round(w · 2²²)` (rounded half
//!   away from zero, as Pillow's `(int)(w * (1 << 22) ± 0.5)`); a pixel is
//!   `(2²¹ + Σ pixel · weight) >> 22`, clipped to 0..=255.
//! * **Order**: the horizontal pass runs first, into an 8-bit intermediate
//!   (rounded and clipped as above), then the vertical pass on it. An axis
//!   whose size does not change is not resampled at all.
//!
//! Caveat, found by the tests against Pillow 13.0.0: for some sizes that
//! Pillow build runs the vertical pass first (e.g. 23×17 → 30×9, and some
//! portrait images shrunk on both axes), which moves a few pixels by 1.
//! Every case compared matched one of the two orders exactly, but the rule
//! that picks the order is not yet known; the horizontal-first order is the
//! one of Pillow's published `Resample.c`, and gives ImageHash's test vector.

use super::convert::GrayImage;

/// Bits of the fixed-point weights: Pillow's `PRECISION_BITS = 32 - 8 - 2`.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The support of the Lanczos filter, in input pixels at scale 1.
const LANCZOS_SUPPORT: f64 = 3.0;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 }
}

/// The fixed-point weights of one axis: for each output pixel, the first
/// input pixel of its window and the weights of the window.
struct Coefficients {
    windows: Vec<(usize, Vec<i32>)>,
}

fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = LANCZOS_SUPPORT * filterscale;
    let ss = 1.0 / filterscale;
    let mut windows = Vec::with_capacity(out_size);
    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        // `as` truncates toward zero, like C's (int) cast.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut weights: Vec<f64> = (0..n).map(|x| lanczos(((x + xmin) as f64 - center + 0.5) * ss)).collect();
        let total: f64 = weights.iter().sum();
        if total != 0.0 {
            for w in &mut weights {
                *w /= total;
            }
        }
        let fixed = weights
            .iter()
            .map(|&w| {
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                if w < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 }
            })
            .collect();
        windows.push((xmin, fixed));
    }
    Coefficients { windows }
}

/// Pillow's `clip8`: the accumulator back to 8 bits.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

fn pass<F: Fn(usize) -> i64>(weights: &[i32], start: usize, pixel: F) -> u8 {
    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
    for (k, &w) in weights.iter().enumerate() {
        acc += pixel(start + k) * i64::from(w);
    }
    clip8(acc)
}

/// Resizes a gray image to `width × height` as Pillow's
/// `resize((width, height), Image.Resampling.LANCZOS)` does.
///
/// An empty source or target gives an image of the target size filled with
/// zeros (Pillow refuses those; callers never ask for them).
pub fn resize_lanczos(src: &GrayImage, width: usize, height: usize) -> GrayImage {
    if src.width == 0 || src.height == 0 || width == 0 || height == 0 {
        return GrayImage { width, height, pixels: vec![0; width * height] };
    }
    // Horizontal pass first, into an 8-bit intermediate of src.height rows.
    let horizontal = if width != src.width {
        let coeffs = coefficients(src.width, width);
        let mut out = Vec::with_capacity(width * src.height);
        for row in src.pixels.chunks_exact(src.width) {
            for (start, weights) in &coeffs.windows {
                out.push(pass(weights, *start, |x| i64::from(row[x])));
            }
        }
        GrayImage { width, height: src.height, pixels: out }
    } else {
        src.clone()
    };
    if height == src.height {
        return horizontal;
    }
    let coeffs = coefficients(src.height, height);
    let mut out = Vec::with_capacity(width * height);
    for (start, weights) in &coeffs.windows {
        for x in 0..width {
            out.push(pass(weights, *start, |y| i64::from(horizontal.pixels[y * width + x])));
        }
    }
    GrayImage { width, height, pixels: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(width: usize, height: usize, pixels: Vec<u8>) -> GrayImage {
        GrayImage { width, height, pixels }
    }

    #[test]
    fn two_pixels_to_one_is_their_mean_rounded_half_up() {
        // Hand-derived: scale 2, centre 1.0, both weights lanczos(±0.25) and
        // so 2^21 each: (2^21 + 2^21 (a + b)) >> 22 = (a + b + 1) / 2.
        assert_eq!(resize_lanczos(&gray(2, 1, vec![10, 21]), 1, 1).pixels, vec![16]);
        assert_eq!(resize_lanczos(&gray(2, 1, vec![10, 20]), 1, 1).pixels, vec![15]);
        assert_eq!(resize_lanczos(&gray(1, 2, vec![0, 255]), 1, 1).pixels, vec![128]);
    }

    #[test]
    fn constant_images_stay_constant_and_same_size_is_a_copy() {
        for c in [0u8, 1, 127, 254, 255] {
            let out = resize_lanczos(&gray(37, 29, vec![c; 37 * 29]), 8, 8);
            assert!(out.pixels.iter().all(|&p| p == c), "{c}: {:?}", out.pixels);
        }
        let src = gray(3, 2, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(resize_lanczos(&src, 3, 2), src);
    }

    #[test]
    fn overshoot_is_clipped() {
        // A sharp edge upscaled rings below 0 and above 255: clipped, not
        // wrapped (Pillow 13's output for the same resize).
        let out = resize_lanczos(&gray(4, 1, vec![0, 0, 255, 255]), 16, 1);
        assert_eq!(out.pixels, vec![12, 6, 0, 0, 0, 0, 23, 89, 166, 232, 255, 255, 255, 255, 249, 243]);
    }

    /// Outputs of Pillow 13.0.0's `im.resize(size, Image.Resampling.LANCZOS)`
    /// for the 23×17 image `(3x² + 7y + 5xy) % 251`: downscaling both axes
    /// and each axis alone.
    #[test]
    fn matches_pillow_on_a_synthetic_image() {
        let (w, h) = (23, 17);
        let src = gray(w, h, (0..h).flat_map(|y| (0..w).map(move |x| ((3 * x * x + 7 * y + 5 * x * y) % 251) as u8)).collect());
        let cases: Vec<((usize, usize), Vec<u8>)> = vec![
            (
                (8, 8),
                vec![
                    10, 56, 165, 144, 132, 95, 131, 126, 31, 124, 134, 123, 151, 135, 98, 92, 64, 155, 101, 111, 116, 141, 147, 125, 99,
                    140, 120, 120, 116, 123, 117, 133, 126, 138, 124, 109, 126, 133, 138, 137, 129, 130, 106, 123, 135, 127, 119, 130, 151,
                    137, 128, 129, 113, 139, 128, 120, 122, 129, 118, 123, 144, 151, 117, 136,
                ],
            ),
            ((5, 3), vec![61, 133, 130, 125, 116, 125, 123, 116, 130, 131, 136, 123, 129, 134, 125]),
            (
                (23, 8),
                vec![
                    4, 10, 22, 40, 63, 91, 138, 192, 194, 127, 90, 168, 190, 55, 148, 74, 83, 137, 152, 108, 134, 116, 139, 19, 35, 57, 85,
                    117, 171, 172, 112, 71, 132, 163, 127, 135, 159, 155, 139, 111, 131, 74, 123, 75, 86, 109, 34, 61, 94, 133, 192, 183,
                    33, 76, 182, 80, 84, 157, 84, 115, 138, 171, 115, 154, 120, 167, 158, 115, 93, 49, 86, 130, 178, 176, 38, 112, 204, 86,
                    100, 134, 116, 139, 74, 123, 161, 122, 71, 146, 102, 138, 177, 76, 63, 112, 165, 234, 29, 111, 200, 85, 118, 142, 51,
                    164, 99, 144, 109, 158, 128, 110, 159, 179, 77, 131, 182, 78, 137, 205, 68, 101, 202, 66, 103, 131, 57, 189, 104, 166,
                    126, 89, 154, 136, 124, 97, 134, 128, 99, 165, 93, 163, 230, 59, 157, 146, 89, 199, 48, 178, 91, 166, 108, 97, 110,
                    148, 148, 140, 162, 66, 146, 99, 149, 108, 188, 48, 118, 214, 46, 179, 67, 169, 66, 167, 92, 202, 93, 165, 165, 132,
                    160, 81, 130, 106, 174, 119,
                ],
            ),
            (
                (8, 17),
                vec![
                    3, 38, 150, 158, 89, 91, 141, 142, 15, 68, 172, 134, 159, 87, 135, 109, 24, 106, 158, 126, 163, 147, 94, 112, 34, 137,
                    123, 127, 144, 106, 70, 85, 52, 138, 90, 119, 116, 175, 171, 103, 63, 168, 116, 80, 110, 145, 150, 122, 88, 132, 112,
                    153, 141, 95, 116, 170, 98, 168, 104, 115, 94, 138, 91, 97, 114, 106, 148, 90, 139, 148, 158, 136, 124, 139, 104, 131,
                    91, 97, 157, 163, 135, 169, 126, 102, 177, 154, 95, 111, 124, 96, 110, 125, 101, 141, 115, 133, 133, 134, 90, 140, 142,
                    94, 142, 143, 145, 158, 143, 96, 122, 156, 137, 104, 170, 122, 138, 174, 98, 140, 99, 113, 108, 119, 95, 81, 137, 163,
                    136, 160, 120, 145, 134, 145, 169, 137, 110, 118,
                ],
            ),
        ];
        for ((ow, oh), expected) in cases {
            assert_eq!(resize_lanczos(&src, ow, oh).pixels, expected, "{ow}x{oh}");
        }
    }
}
