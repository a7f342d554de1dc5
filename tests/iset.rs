//! `iset` / `iget` (seed 004) against a real murmur3 cluster: metadata with
//! spaces kept whole, an exact hash found, a near hash found through the
//! block index, a byte-ordered cluster refused. Decoding needs `--features
//! images`; without it the commands must say how to enable it.

mod common;

use std::path::PathBuf;

use common::Cluster;
use quorumkv::client::images::{iget, iset};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

#[cfg(feature = "images")]
#[test]
fn iset_then_iget_finds_the_image_its_copies_and_a_near_hash() {
    use quorumkv::client::images::{Found, index_keys, metadata_key};
    use quorumkv::cluster::consistency::Consistency::Serial;
    use quorumkv::image::AverageHash;
    let c = Cluster::start_murmur3(3, &[]);
    let mut client = c.client(0);
    let meta = "a photo of  two cats, taken 2026-12-02 (spaces kept)";
    let h = iset(&mut client, &data("imagehash.png"), meta).unwrap();
    assert_eq!(h.to_hex(), "ffd7918181c9ffff");
    // Through another coordinator: the exact image, and a resized JPEG copy.
    let mut other = c.client(2);
    for copy in ["imagehash.png", "imagehash_half_q75.jpg", "imagehash_half_q20.jpg"] {
        let (_, found) = iget(&mut other, &data(copy)).unwrap();
        let found = found.unwrap_or_else(|| panic!("{copy} not found"));
        assert_eq!(found.metadata, meta.as_bytes(), "{copy}");
        assert!(found.distance <= 4, "{copy}: {found:?}");
    }
    // A stored image 3 bits away from the gradient's hash, indexed as iset does
    // (its metadata under its own hash, its hash in its five index keys): found
    // through the index, at distance 3.
    let g = quorumkv::image::hash_file(&data("gradient.png")).unwrap();
    let near = AverageHash(g.0 ^ 0b1011);
    client.put(metadata_key(near), "the gradient's neighbour", Serial).unwrap();
    for key in index_keys(near) {
        client.put(key, format!("{}\n", near.to_hex()), Serial).unwrap();
    }
    let (asked, found) = iget(&mut other, &data("gradient.png")).unwrap();
    assert_eq!(asked, g);
    assert_eq!(found, Some(Found { hash: near, distance: 3, metadata: b"the gradient's neighbour".to_vec() }));
    // Five bits away is too far.
    let noise = quorumkv::image::hash_file(&data("noise_rgb.png")).unwrap();
    let far = AverageHash(noise.0 ^ 0b11111);
    client.put(metadata_key(far), "too far", Serial).unwrap();
    for key in index_keys(far) {
        client.put(key, format!("{}\n", far.to_hex()), Serial).unwrap();
    }
    assert_eq!(iget(&mut other, &data("noise_rgb.png")).unwrap().1, None);
    // A second iset of another image keeps the first in the shared index keys.
    iset(&mut client, &data("palette.png"), "the palette copy").unwrap();
    assert_eq!(iget(&mut other, &data("imagehash.png")).unwrap().1.unwrap().distance, 0);
}

#[cfg(feature = "images")]
#[test]
fn a_byte_ordered_cluster_is_refused() {
    let c = Cluster::start(3, &[]);
    let e = iset(&mut c.client(0), &data("imagehash.png"), "x").unwrap_err().to_string();
    assert!(e.contains("needs a murmur3 cluster"), "{e}");
}

#[cfg(not(feature = "images"))]
#[test]
fn without_the_feature_iset_says_how_to_enable_it() {
    let c = Cluster::start_murmur3(3, &[]);
    let e = iset(&mut c.client(0), &data("imagehash.png"), "x").unwrap_err().to_string();
    assert!(e.contains("--features images"), "{e}");
    let e = iget(&mut c.client(0), &data("imagehash.png")).unwrap_err().to_string();
    assert!(e.contains("--features images"), "{e}");
}
