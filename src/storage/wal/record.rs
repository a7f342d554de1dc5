//! The on-disk record format: the file magics (which carry the format
//! version), the framing of a log record (`u32` length, `u32` CRC-32C, body),
//! the checksum, and the checks that decide whether bytes are a whole record.

use byteorder::{ByteOrder, LittleEndian};
use prost::Message;

use crate::proto;

/// The first bytes of every log file; the digits are the format version.
/// Version 2 keys are bytes; a version 1 log (the seed's integer keys, in the
/// records' `legacy_key`) is still read, never written.
pub(super) const LOG_MAGIC: &[u8; 8] = b"QKVLOG02";
/// The magic of a version 1 log, read on recovery.
pub(super) const LOG_MAGIC_V1: &[u8; 8] = b"QKVLOG01";
/// The first bytes of the snapshot file; the digit is the format version
/// (version 1, with integer keys, is still read).
pub(super) const SNAP_MAGIC: &[u8; 8] = b"QKVSNAP2";
/// The magic of a version 1 snapshot, read on recovery.
pub(super) const SNAP_MAGIC_V1: &[u8; 8] = b"QKVSNAP1";
/// A record's header: a little-endian `u32` body length, then a little-endian
/// `u32` CRC-32C of the body.
pub(super) const RECORD_HEADER: usize = 8;
/// A record longer than this is garbage (values are at most a few MiB).
const MAX_RECORD: usize = 64 << 20;

/// CRC-32C (Castagnoli), table-driven.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Appends `record`, framed (header, then body), to `buf`; returns the bytes added.
pub(super) fn encode_record(buf: &mut Vec<u8>, record: &proto::LogRecord) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER]);
    record.encode(buf).expect("a Vec grows as needed");
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
        assert_eq!(crc32c(b""), 0);
    }
}
