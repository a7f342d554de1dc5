#!/usr/bin/env python3
"""Regenerates the image test files and prints ImageHash's hashes of them.

Run from this folder with Pillow and ImageHash installed
(`pip install pillow imagehash`); the hashes printed are the expected values
in tests/images.rs (generated with Pillow 13.0.0, ImageHash 4.3.2).
"""
import random

import imagehash
from PIL import Image

random.seed(13)
orig = Image.open("imagehash.png")

def save(im, name, **kw):
    im.save(name, **kw)
    print(f"{name:28} {Image.open(name).mode:5} {imagehash.average_hash(Image.open(name))}")

# A diagonal gradient, gray 8-bit.
g = Image.new("L", (37, 23))
g.putdata([(x * 7 + y * 5) % 256 for y in range(23) for x in range(37)])
save(g, "gradient.png")
# Noise, RGB.
n = Image.new("RGB", (61, 47))
n.putdata([tuple(random.randrange(256) for _ in range(3)) for _ in range(61 * 47)])
save(n, "noise_rgb.png")
# The test image quantised to a 16-colour palette with a transparent entry, 4 bits per pixel.
p = orig.convert("RGB").resize((150, 75), Image.Resampling.LANCZOS).quantize(16)
save(p, "palette.png", transparency=3, bits=4)
# RGBA with varying alpha.
a = Image.new("RGBA", (40, 40))
a.putdata([(x * 6, y * 6, (x * y) % 256, (x + y) * 3) for y in range(40) for x in range(40)])
save(a, "rgba.png")
# 16-bit gray: values above 255 clip when Pillow converts to L.
i16 = Image.new("I;16", (30, 20))
i16.putdata([(x * 17 + y * 3) * 3 for y in range(20) for x in range(30)])
save(i16, "gray16.png")
# A half-size copy, and JPEGs of it at several qualities; a gray JPEG.
half = orig.convert("RGB").resize((600, 300), Image.Resampling.LANCZOS)
save(half, "imagehash_half.png")
for q in (90, 75, 20):
    save(half, f"imagehash_half_q{q}.jpg", quality=q)
save(half.convert("L"), "imagehash_half_gray.jpg", quality=75)
save(half, "imagehash_half_444.jpg", quality=75, subsampling=0)
# Noise as a 4:2:0 JPEG of odd size: its hash is sensitive to every decoded
# pixel; Pillow's (libjpeg-turbo's) decoded pixels are kept to compare with ours.
save(n, "noise_q85.jpg", quality=85)
with open("noise_q85.pillow.rgb", "wb") as f:
    f.write(Image.open("noise_q85.jpg").tobytes())
