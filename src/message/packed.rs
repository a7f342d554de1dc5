//! Packed pages of cells: how a movement's stream carries a slot's cells.
//!
//! A stream page holds up to [`MAX_PAGE_BYTES`](crate::message::MAX_PAGE_BYTES)
//! of cells. As repeated `KeyVersion` messages each cell costs the sender
//! three copies and allocations (out of the store, into the message, into
//! the frame) and the receiver two more, plus the nested messages' parsing;
//! a join moves hundreds of thousands of cells, and those costs, not the
//! bytes, set its pace. A packed page is one `bytes` field the sender writes
//! straight from its store and the receiver reads in place, each cell going
//! into its store with one copy (the one the store keeps).
//!
//! A cell, one after the other to the end of the page:
//!
//! ```text
//! varint key length | key | varint micros | varint node | kind (0 value, 1 tombstone) | [varint value length | value]
//! ```
//!
//! (the value's length and bytes only for a value). [`Reader`] checks every
//! length against what is left of the page, the node against 32 bits and the
//! kind byte, and stops at the first fault with an error naming it: a page
//! from the network is never trusted to be well formed.

use prost::encoding::{decode_varint, encode_varint};

use crate::error::{Error, Result};
use crate::storage::cell::VersionRef;
use crate::storage::hlc::Timestamp;

const VALUE: u8 = 0;
const TOMBSTONE: u8 = 1;

/// Appends the cell `key` ← `v` to the page `out`.
pub fn push(out: &mut Vec<u8>, key: &[u8], v: VersionRef<'_>) {
    encode_varint(key.len() as u64, out);
    out.extend_from_slice(key);
    encode_varint(v.ts.micros, out);
    encode_varint(u64::from(v.ts.node), out);
    match v.value {
        Some(value) => {
            out.push(VALUE);
            encode_varint(value.len() as u64, out);
            out.extend_from_slice(value);
        }
        None => out.push(TOMBSTONE),
    }
}

/// The cells of a page in order, each borrowed from it; an error (and then
/// nothing more) at the first cell that is not well formed.
pub struct Reader<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Reader<'a> {
    /// Reads the page `page`.
    pub fn new(page: &'a [u8]) -> Self {
        Reader { rest: page, failed: false }
    }

    fn varint(&mut self, what: &str) -> Result<u64> {
        decode_varint(&mut self.rest).map_err(|e| Error::Protocol(format!("a packed page's {what}: {e}")))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.varint(what)?;
        if len > self.rest.len() as u64 {
            return Err(Error::Protocol(format!("a packed page's {what} of {len} bytes runs past its end ({} left)", self.rest.len())));
        }
        let (b, rest) = self.rest.split_at(len as usize);
        self.rest = rest;
        Ok(b)
    }

    fn cell(&mut self) -> Result<(&'a [u8], VersionRef<'a>)> {
        let key = self.bytes("key")?;
        let micros = self.varint("timestamp")?;
        let node = u32::try_from(self.varint("timestamp's node")?)
            .map_err(|_| Error::Protocol("a packed page's timestamp names a node past 32 bits".into()))?;
        let Some((&kind, rest)) = self.rest.split_first() else {
            return Err(Error::Protocol("a packed page ends inside a cell".into()));
        };
        self.rest = rest;
        let value = match kind {
            VALUE => Some(self.bytes("value")?),
            TOMBSTONE => None,
            other => return Err(Error::Protocol(format!("a packed page's cell is of unknown kind {other}"))),
        };
        Ok((key, VersionRef { ts: Timestamp { micros, node }, value }))
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<(&'a [u8], VersionRef<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let cell = self.cell();
        self.failed = cell.is_err();
        Some(cell)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(micros: u64, node: u32) -> Timestamp {
        Timestamp { micros, node }
    }

    #[test]
    fn cells_read_back_as_they_were_packed() {
        let long = vec![7u8; 300];
        let cells: Vec<(&[u8], VersionRef)> = vec![
            (b"k", VersionRef { ts: ts(1, 0), value: Some(b"v") }),
            (&[0xff, 0, 0x80], VersionRef { ts: ts(u64::MAX, u32::MAX), value: None }),
            (&long[..200], VersionRef { ts: ts(1 << 40, 3), value: Some(&long) }),
            (b"empty", VersionRef { ts: ts(0, 0), value: Some(b"") }),
        ];
        let mut page = Vec::new();
        for (k, v) in &cells {
            push(&mut page, k, *v);
        }
        let back: Vec<(&[u8], VersionRef)> = Reader::new(&page).collect::<Result<_>>().unwrap();
        assert_eq!(back, cells);
        assert_eq!(Reader::new(&[]).count(), 0, "an empty page holds no cells");
    }

    /// Every cut of a page and every wrong kind byte is an error, never a
    /// panic or a cell that was not sent; the reader stops after it.
    #[test]
    fn a_malformed_page_is_an_error() {
        let mut page = Vec::new();
        push(&mut page, b"key", VersionRef { ts: ts(5, 2), value: Some(b"value") });
        let one = page.len();
        push(&mut page, b"gone", VersionRef { ts: ts(6, 2), value: None });
        for cut in 1..one {
            let mut r = Reader::new(&page[..cut]);
            assert!(matches!(r.next(), Some(Err(Error::Protocol(_)))), "cut at {cut}");
            assert!(r.next().is_none(), "nothing after the fault");
        }
        let mut bad = page.clone();
        bad[1 + 3 + 1 + 1] = 9; // the first cell's kind byte
        assert!(Reader::new(&bad).next().unwrap().unwrap_err().to_string().contains("unknown kind 9"));
        let mut huge = Vec::new();
        encode_varint(u64::MAX, &mut huge);
        assert!(Reader::new(&huge).next().unwrap().unwrap_err().to_string().contains("runs past its end"));
        let mut wide = Vec::new();
        encode_varint(1, &mut wide);
        wide.push(b'k');
        encode_varint(1, &mut wide);
        encode_varint(1 << 32, &mut wide);
        wide.push(TOMBSTONE);
        assert!(Reader::new(&wide).next().unwrap().unwrap_err().to_string().contains("32 bits"));
    }
}
