//! The on-disk record format: the file magics (which carry the format
//! version), the framing of a log record (`u32` length, `u32` CRC-32C, body),
//! the checksum, and the checks that decide whether bytes are a whole record.

use byteorder::{ByteOrder, LittleEndian};
use prost::Message;

use crate::proto;
use crate::storage::cell::VersionRef;

/// The first bytes of every log file; the digits are the format version.
/// Version 4 adds the Paxos withdrawal record, version 3 the other Paxos
/// records; versions 3, 2 (keys as bytes) and 1 (the seed's integer keys, in
/// the records' `legacy_key`) are still read, never written. The version
/// moves whenever a record kind is added, so an older quorumkv refuses a log
/// it could only partly understand (prost would skip the unknown records
/// without a word).
pub(super) const LOG_MAGIC: &[u8; 8] = b"QKVLOG06";
/// The magic of a version 5 log (before transactions' intents and records), read on recovery.
pub(super) const LOG_MAGIC_V5: &[u8; 8] = b"QKVLOG05";
/// The magic of a version 4 log (before the page of copied cells), read on recovery.
pub(super) const LOG_MAGIC_V4: &[u8; 8] = b"QKVLOG04";
/// The magic of a version 3 log, read on recovery.
pub(super) const LOG_MAGIC_V3: &[u8; 8] = b"QKVLOG03";
/// The magic of a version 2 log, read on recovery.
pub(super) const LOG_MAGIC_V2: &[u8; 8] = b"QKVLOG02";
/// The magic of a version 1 log, read on recovery.
pub(super) const LOG_MAGIC_V1: &[u8; 8] = b"QKVLOG01";
/// The first bytes of the snapshot file; the digit is the format version
/// (version 4 adds transactions' intents and records, 3 the acceptor's Paxos
/// state; 3, and 2 and 1 with integer keys, are still read).
pub(super) const SNAP_MAGIC: &[u8; 8] = b"QKVSNAP4";
/// The magic of a version 3 snapshot, read on recovery.
pub(super) const SNAP_MAGIC_V3: &[u8; 8] = b"QKVSNAP3";
/// The magic of a version 2 snapshot, read on recovery.
pub(super) const SNAP_MAGIC_V2: &[u8; 8] = b"QKVSNAP2";
/// The magic of a version 1 snapshot, read on recovery.
pub(super) const SNAP_MAGIC_V1: &[u8; 8] = b"QKVSNAP1";

/// Whether `head` is a log magic this version reads (or, if shorter, the start of one).
pub(super) fn log_magic_prefix(head: &[u8]) -> bool {
    [LOG_MAGIC, LOG_MAGIC_V5, LOG_MAGIC_V4, LOG_MAGIC_V3, LOG_MAGIC_V2, LOG_MAGIC_V1].iter().any(|m| m.starts_with(head))
}
/// A record's header: a little-endian `u32` body length, then a little-endian
/// `u32` CRC-32C of the body.
pub(super) const RECORD_HEADER: usize = 8;
/// A record longer than this is garbage (values are at most a few MiB).
const MAX_RECORD: usize = 64 << 20;

/// CRC-32C (Castagnoli): the processor's own instruction where it has one
/// (x86-64's SSE 4.2 `crc32`, eight bytes a cycle or so: every logged write,
/// every streamed cell and every record a restart checks goes through it),
/// otherwise tables, eight bytes at a time.
pub fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the processor has SSE 4.2, checked just above.
            return unsafe { crc32c_sse42(data) };
        }
    }
    crc32c_table(data)
}

/// CRC-32C with the `crc32` instruction, eight bytes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42(data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut crc = !0u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
    }
    let mut crc = crc as u32;
    for &b in chunks.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    !crc
}

/// CRC-32C table-driven, eight bytes at a time ("slicing by 8": eight
/// tables, one per byte position, so a step needs no carry chain between
/// bytes) — several times faster than a byte at a time.
pub fn crc32c_table(data: &[u8]) -> u32 {
    static TABLES: std::sync::OnceLock<[[u32; 256]; 8]> = std::sync::OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let mut t = [[0u32; 256]; 8];
        for (i, e) in t[0].iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        for k in 1..8 {
            for i in 0..256 {
                let prev = t[k - 1][i];
                t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            }
        }
        t
    });
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xFF) as usize]
            ^ t[2][((hi >> 8) & 0xFF) as usize]
            ^ t[1][((hi >> 16) & 0xFF) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Appends `record`, framed (header, then body), to `buf`; returns the bytes added.
pub(super) fn encode_record(buf: &mut Vec<u8>, record: &proto::LogRecord) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER]);
    record.encode(buf).expect("a Vec grows as needed");
    seal(buf, start)
}

/// Appends the framed record of a packed page of cells: the bytes
/// [`encode_record`] gives for `LogRecord { cell_page: page }`, without
/// copying the page into a message first.
pub(super) fn encode_page_record(buf: &mut Vec<u8>, page: &[u8]) -> usize {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER]);
    encode_key(8, WireType::LengthDelimited, buf);
    encode_varint(page.len() as u64, buf);
    buf.extend_from_slice(page);
    seal(buf, start)
}

/// Appends the framed record of a cell write: the bytes [`encode_record`]
/// gives for `LogRecord { cell: CellWrite { key, version } }`, written
/// straight from the borrowed key and value (the hot path of every write
/// would otherwise copy both into a message first).
pub(super) fn encode_cell_record(buf: &mut Vec<u8>, key: &[u8], v: VersionRef<'_>) -> usize {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    fn len_field(tag: u32, len: usize, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    }
    fn len_of_field(len: usize) -> usize {
        1 + encoded_len_varint(len as u64) + len
    }
    let value = v.value.unwrap_or(&[]);
    let (micros, node) = (v.ts.micros, u64::from(v.ts.node));
    // Fields equal to their default are left out, as prost does; the tags
    // here are below 16, so each takes one byte.
    let version_len = if micros != 0 { 1 + encoded_len_varint(micros) } else { 0 }
        + if node != 0 { 1 + encoded_len_varint(node) } else { 0 }
        + if v.is_tombstone() { 2 } else { 0 }
        + if value.is_empty() { 0 } else { len_of_field(value.len()) };
    let cell_len = if key.is_empty() { 0 } else { len_of_field(key.len()) } + len_of_field(version_len);
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER]);
    len_field(1, cell_len, buf); // LogRecord.cell
    // Prost writes fields in tag order: the version (2) before the key (3).
    len_field(2, version_len, buf); // CellWrite.version
    if micros != 0 {
        encode_key(1, WireType::Varint, buf);
        encode_varint(micros, buf);
    }
    if node != 0 {
        encode_key(2, WireType::Varint, buf);
        encode_varint(node, buf);
    }
    if v.is_tombstone() {
        encode_key(3, WireType::Varint, buf);
        buf.push(1);
    }
    if !value.is_empty() {
        len_field(4, value.len(), buf);
        buf.extend_from_slice(value);
    }
    if !key.is_empty() {
        len_field(3, key.len(), buf); // CellWrite.key
        buf.extend_from_slice(key);
    }
    seal(buf, start)
}

/// Fills in the header of the record whose header starts at `start` and whose
/// body runs to the end of `buf`; returns the record's framed length.
fn seal(buf: &mut [u8], start: usize) -> usize {
    let len = buf.len() - start - RECORD_HEADER;
    let crc = crc32c(&buf[start + RECORD_HEADER..]);
    LittleEndian::write_u32(&mut buf[start..], len as u32);
    LittleEndian::write_u32(&mut buf[start + 4..], crc);
    RECORD_HEADER + len
}

/// Why the bytes at some offset are not a whole, intact record.
pub(super) struct BadRecord {
    pub(super) why: String,
}

/// Checks the record at `pos`; returns its end.
pub(super) fn check_record(data: &[u8], pos: usize) -> std::result::Result<usize, BadRecord> {
    let avail = data.len() - pos;
    if avail < RECORD_HEADER {
        return Err(BadRecord { why: format!("only {avail} byte(s) of a record header") });
    }
    let len = LittleEndian::read_u32(&data[pos..]) as usize;
    let crc = LittleEndian::read_u32(&data[pos + 4..]);
    if len == 0 || len > MAX_RECORD {
        return Err(BadRecord { why: format!("impossible length {len}") });
    }
    let end = pos + RECORD_HEADER + len;
    if end > data.len() {
        return Err(BadRecord { why: format!("{len}-byte record with only {} byte(s) present", avail - RECORD_HEADER) });
    }
    if crc32c(&data[pos + RECORD_HEADER..end]) != crc {
        return Err(BadRecord { why: "checksum mismatch".into() });
    }
    Ok(end)
}

/// The first offset at or after `from` where a whole record with a valid checksum starts.
pub(super) fn find_valid_record(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len().saturating_sub(RECORD_HEADER)).find(|&p| check_record(data, p).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answer() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_table(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720's test vectors: 32 zero bytes, 32 0xFF bytes, 0..32 ascending.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(&(0u8..32).collect::<Vec<_>>()), 0x46DD_794E);
    }

    /// The hand-written encoding of a page record is byte for byte prost's.
    #[test]
    fn a_page_record_is_encoded_as_prost_encodes_it() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let page: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut want = Vec::new();
            let n = encode_record(&mut want, &proto::LogRecord { kind: Some(proto::log_record::Kind::CellPage(page.clone())) });
            let mut got = Vec::new();
            assert_eq!(encode_page_record(&mut got, &page), n);
            assert_eq!(got, want, "a page of {len} bytes");
        }
    }

    /// The hand-written encoding of a cell write is byte for byte prost's.
    #[test]
    fn a_cell_record_is_encoded_as_prost_encodes_it() {
        use crate::storage::hlc::Timestamp;
        let long: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let keys: [&[u8]; 3] = [b"k", &long[..200], &[0xff, 0, 0x80]];
        let values: [Option<&[u8]>; 4] = [None, Some(b""), Some(b"v"), Some(&long)];
        for key in keys {
            for micros in [0, 1, 300, u64::MAX] {
                for node in [0, 7, u32::MAX] {
                    for value in values {
                        let v = crate::storage::cell::Version { ts: Timestamp { micros, node }, value: value.map(Box::from) };
                        let record = proto::LogRecord {
                            kind: Some(proto::log_record::Kind::Cell(proto::CellWrite {
                                legacy_key: 0,
                                key: key.to_vec(),
                                version: Some(v.to_proto()),
                            })),
                        };
                        let (mut want, mut got) = (vec![1, 2, 3], vec![1, 2, 3]);
                        let n = encode_record(&mut want, &record);
                        assert_eq!(encode_cell_record(&mut got, key, v.borrowed()), n);
                        assert_eq!(got, want, "key {key:?} micros {micros} node {node} value {value:?}");
                    }
                }
            }
        }
    }

    /// Eight bytes at a time (the instruction and the tables) gives the byte-at-a-time answer at every length and alignment.
    #[test]
    fn crc32c_slices_agree_with_the_bytewise_definition() {
        fn bytewise(data: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in data {
                crc ^= b as u32;
                for _ in 0..8 {
                    crc = if crc & 1 != 0 { 0x82F6_3B78 ^ (crc >> 1) } else { crc >> 1 };
                }
            }
            !crc
        }
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..9 {
            for end in start..data.len() {
                assert_eq!(crc32c(&data[start..end]), bytewise(&data[start..end]), "{start}..{end}");
                assert_eq!(crc32c_table(&data[start..end]), bytewise(&data[start..end]), "{start}..{end}");
            }
        }
    }
}
