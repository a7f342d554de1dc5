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
//! * **Order**: one pass runs first, into an 8-bit intermediate (rounded and
//!   clipped as above), then the other on it. As in Pillow 13's
//!   `ImagingResampleInner`: the vertical pass first when the height shrinks
//!   by more than twice as many pixels as the width does
//!   (`in_h - out_h > 0 && in_h - out_h > 2 · (in_w - out_w)`, so also when
//!   the width grows), else the horizontal one (Pillow 12 and earlier always
//!   ran it first; the order moves a few pixels by 1). An axis whose size does
//!   not change is not resampled at all.

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
    let (shrink_h, shrink_w) = (src.height as i64 - height as i64, src.width as i64 - width as i64);
    if shrink_h > 0 && shrink_h > shrink_w * 2 {
        horizontal(&vertical(src, height), width)
    } else {
        vertical(&horizontal(src, width), height)
    }
}

/// The horizontal pass: every row to `width` pixels (a copy if it is the width already).
fn horizontal(src: &GrayImage, width: usize) -> GrayImage {
    if width == src.width {
        return src.clone();
    }
    let coeffs = coefficients(src.width, width);
    let mut out = Vec::with_capacity(width * src.height);
    for row in src.pixels.chunks_exact(src.width) {
        for (start, weights) in &coeffs.windows {
            out.push(pass(weights, *start, |x| i64::from(row[x])));
        }
    }
    GrayImage { width, height: src.height, pixels: out }
}

/// The vertical pass: every column to `height` pixels (a copy if it is the height already).
fn vertical(src: &GrayImage, height: usize) -> GrayImage {
    if height == src.height {
        return src.clone();
    }
    let coeffs = coefficients(src.height, height);
    let width = src.width;
    let mut out = Vec::with_capacity(width * height);
    for (start, weights) in &coeffs.windows {
        for x in 0..width {
            out.push(pass(weights, *start, |y| i64::from(src.pixels[y * width + x])));
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

    /// Pillow 13.0.0's outputs (`im.resize(size, Image.Resampling.LANCZOS)`)
    /// for the image `(3x² + 7y + 5xy) % 251` at several sizes, the pass order
    /// each way: vertical first for 23×17 → 30×9 (the width grows), 17×40,
    /// 40×90 → 8×8 and 12×30 → 12×8; horizontal first for 23×17 → 8×8.
    #[test]
    fn matches_pillow_13_in_either_pass_order() {
        let synth = |w: usize, h: usize| {
            gray(w, h, (0..h).flat_map(|y| (0..w).map(move |x| ((3 * x * x + 7 * y + 5 * x * y) % 251) as u8)).collect())
        };
        type Case = ((usize, usize), (usize, usize), Vec<u8>);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ((23, 17), (30, 9), vec![3, 5, 12, 22, 36, 53, 74, 95, 125, 173, 210, 195, 129, 73, 114, 204, 181, 42, 105, 133, 68, 74, 129, 166, 146, 116, 138, 123, 120, 145, 15, 24, 39, 55, 77, 101, 124, 163, 196, 163, 94, 71, 120, 178, 172, 133, 132, 167, 173, 137, 107, 113, 120, 89, 77, 103, 76, 84, 109, 112, 29, 43, 67, 90, 119, 141, 211, 188, 45, 30, 110, 160, 122, 72, 95, 127, 114, 107, 128, 175, 171, 117, 166, 144, 128, 184, 151, 94, 84, 105, 42, 61, 94, 121, 155, 230, 157, 42, 74, 153, 191, 109, 37, 130, 186, 135, 80, 107, 113, 144, 160, 110, 78, 102, 119, 107, 144, 194, 141, 60, 54, 80, 116, 167, 216, 114, 42, 92, 168, 193, 81, 77, 179, 79, 64, 138, 151, 79, 101, 146, 150, 136, 96, 144, 186, 139, 110, 132, 144, 127, 67, 97, 149, 192, 204, 80, 68, 169, 175, 55, 118, 167, 70, 91, 171, 145, 89, 165, 120, 125, 170, 130, 108, 98, 138, 173, 83, 80, 158, 193, 79, 107, 206, 192, 32, 63, 206, 183, 31, 125, 127, 63, 102, 187, 117, 114, 189, 120, 68, 107, 154, 132, 138, 129, 110, 119, 162, 111, 104, 162, 92, 131, 215, 197, 81, 141, 156, 98, 116, 196, 114, 89, 178, 80, 144, 168, 81, 86, 123, 143, 147, 159, 137, 160, 134, 56, 117, 124, 121, 149, 100, 179, 129, 22, 109, 223, 129, 66, 181, 67, 122, 146, 54, 175, 109, 123, 217, 107, 127, 180, 161, 122, 162, 114, 83, 144, 109, 153, 163, 110]),
            ((17, 40), (8, 8), vec![19, 66, 134, 135, 127, 137, 132, 117, 71, 159, 123, 118, 108, 119, 121, 143, 132, 141, 122, 122, 114, 138, 119, 139, 152, 121, 123, 132, 124, 129, 133, 154, 116, 119, 136, 128, 134, 127, 110, 125, 133, 128, 137, 125, 121, 127, 129, 113, 161, 100, 136, 119, 121, 125, 129, 122, 138, 113, 99, 134, 118, 119, 103, 114]),
            ((23, 17), (8, 8), vec![10, 56, 165, 144, 132, 95, 131, 126, 31, 124, 134, 123, 151, 135, 98, 92, 64, 155, 101, 111, 116, 141, 147, 125, 99, 140, 120, 120, 116, 123, 117, 133, 126, 138, 124, 109, 126, 133, 138, 137, 129, 130, 106, 123, 135, 127, 119, 130, 151, 137, 128, 129, 113, 139, 128, 120, 122, 129, 118, 123, 144, 151, 117, 136]),
            ((40, 90), (8, 8), vec![98, 126, 125, 125, 131, 129, 124, 129, 134, 125, 129, 130, 122, 131, 130, 126, 131, 126, 124, 125, 126, 118, 125, 123, 120, 121, 118, 125, 127, 118, 120, 121, 113, 128, 117, 120, 113, 121, 130, 126, 141, 122, 125, 136, 124, 125, 125, 129, 123, 130, 130, 123, 132, 123, 119, 128, 117, 129, 130, 121, 121, 129, 124, 119]),
            ((12, 30), (12, 8), vec![10, 20, 36, 56, 86, 139, 151, 144, 142, 133, 121, 149, 35, 64, 97, 145, 186, 135, 82, 122, 124, 96, 114, 138, 62, 110, 168, 196, 72, 104, 149, 124, 115, 110, 101, 137, 88, 150, 210, 58, 147, 162, 93, 137, 97, 115, 142, 134, 115, 217, 56, 143, 124, 94, 153, 120, 144, 122, 103, 131, 141, 144, 96, 180, 69, 180, 108, 133, 126, 130, 144, 128, 168, 22, 179, 50, 200, 87, 155, 135, 117, 131, 131, 127, 193, 88, 175, 132, 97, 205, 109, 113, 99, 160, 124, 116]),
        ];
        for ((w, h), (ow, oh), want) in cases {
            assert_eq!(resize_lanczos(&synth(w, h), ow, oh).pixels, want, "{w}x{h} -> {ow}x{oh}");
        }
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
