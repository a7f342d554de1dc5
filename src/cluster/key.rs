//! Keys: byte strings, and the partitioner that says which keys a cluster
//! takes and where each one lives.
//!
//! A [`Key`] is the bytes a client sent, checked once by the cluster's
//! [`Partitioner`] ([`Partitioner::key`]) and never changed after:
//!
//! - **byte-ordered** (the seed's ring): a key is an integer 0–255, written in
//!   decimal ASCII (`"70"`). Leading zeros are dropped (`"070"` is key `70`),
//!   anything else is refused with an error that says how to make a murmur3
//!   cluster. The key's slot is the integer itself.
//! - **murmur3**: a key is any 1 to `--max-key-bytes` bytes. Its slot is its
//!   Murmur3 [token](crate::cluster::token::token)'s top byte, in ring order.
//!
//! Every replica keys its store, its hints and its log by these bytes, so a
//! key reads back exactly as it was written. [`Key`]'s `Display` shows UTF-8
//! as text and escapes every other byte (`\xNN`), for consoles and logs.

use std::borrow::Borrow;
use std::fmt;

use crate::cluster::token;
use crate::error::{Error, Result};

/// Keys of a byte-ordered cluster are `0..KEYS`.
pub const KEYS: usize = 256;

/// The default and largest key (`--max-key-bytes`) of a murmur3 cluster.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;

/// How keys are placed on the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Partitioner {
    /// Keys are the integers 0–255, each its own token (the seed's table).
    #[default]
    ByteOrdered,
    /// Keys are byte strings placed by Cassandra's Murmur3 token.
    Murmur3,
}

impl Partitioner {
    /// The name used in the cluster file: `byte-ordered` or `murmur3`.
    pub fn name(self) -> &'static str {
        match self {
            Partitioner::ByteOrdered => "byte-ordered",
            Partitioner::Murmur3 => "murmur3",
        }
    }

    /// The partitioner named `name` (`byte-ordered` or `murmur3`, as in the cluster file), if any.
    pub fn from_name(name: &str) -> Option<Partitioner> {
        [Partitioner::ByteOrdered, Partitioner::Murmur3].into_iter().find(|p| p.name() == name)
    }

    /// Checks `bytes` as a key of this cluster and returns it in its one
    /// canonical form, or says what is wrong.
    pub fn key(self, bytes: Vec<u8>, max_key_bytes: usize) -> Result<Key> {
        match self {
            Partitioner::ByteOrdered => match byte_key(&bytes) {
                Some(k) => Ok(Key::byte(k)),
                None => Err(Error::InvalidRequest(byte_ordered_refusal(&bytes))),
            },
            Partitioner::Murmur3 => {
                if bytes.is_empty() {
                    return Err(Error::InvalidRequest("the key is empty; a key is 1 or more bytes".into()));
                }
                if bytes.len() > max_key_bytes {
                    return Err(Error::InvalidRequest(format!(
                        "key of {} bytes exceeds the limit of {max_key_bytes} bytes (--max-key-bytes)",
                        bytes.len()
                    )));
                }
                Ok(Key(bytes.into_boxed_slice()))
            }
        }
    }

    /// The store slot of `key`, a key this partitioner accepted.
    pub fn slot(self, key: &[u8]) -> u8 {
        match self {
            Partitioner::ByteOrdered => byte_key(key).unwrap_or(0),
            Partitioner::Murmur3 => token::slot(token::token(key)),
        }
    }
}

/// The integer a byte-ordered key's decimal digits name, if they name one in 0..=255.
fn byte_key(bytes: &[u8]) -> Option<u8> {
    if bytes.is_empty() || bytes.len() > 8 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse::<u32>().ok().and_then(|k| u8::try_from(k).ok())
}

/// An error quotes at most this many bytes of a refused key.
const SHOWN: usize = 40;

/// A refused key as an error shows it: escaped, and cut (saying how long it was) past [`SHOWN`] bytes.
fn shown(bytes: &[u8]) -> String {
    if bytes.len() <= SHOWN {
        return escaped(bytes);
    }
    format!("{}… ({} bytes)", escaped(&bytes[..SHOWN]), bytes.len())
}

fn byte_ordered_refusal(bytes: &[u8]) -> String {
    if !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
        return format!("key {} is out of range; keys are 0 to {}", shown(bytes), KEYS - 1);
    }
    format!(
        "key \"{}\" is not an integer 0 to {}: this cluster is byte-ordered (the seed's ring); \
         for string keys start a murmur3 cluster (`partitioner murmur3` in the cluster file, as in cluster-murmur3.txt)",
        shown(bytes),
        KEYS - 1
    )
}

/// A key: the bytes a client wrote, in the canonical form its cluster's
/// [`Partitioner`] gave them.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Box<[u8]>);

impl Key {
    /// Key `k` of a byte-ordered cluster (`"70"` for 70).
    pub fn byte(k: u8) -> Key {
        Key(k.to_string().into_bytes().into_boxed_slice())
    }

    /// Bytes that a partitioner already accepted (from this replica's own log,
    /// or a test): no check.
    pub fn trusted(bytes: impl Into<Box<[u8]>>) -> Key {
        Key(bytes.into())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key's bytes, owned.
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }

    /// The key's bytes, without a copy.
    pub fn into_vec(self) -> Vec<u8> {
        self.0.into_vec()
    }

    /// The key's size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a checked key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Writes `bytes` as text: UTF-8 as it is (control characters and `\` escaped),
/// every other byte as `\xNN`.
pub fn write_escaped(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() && c.is_ascii() => write!(f, "\\x{:02x}", c as u32)?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        for b in chunk.invalid() {
            write!(f, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

/// `bytes` as [`write_escaped`] writes them.
pub fn escaped(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    let _ = write_escaped(&mut s, bytes);
    s
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<Key>, needle: &str) {
        match r {
            Err(Error::InvalidRequest(m)) => assert!(m.contains(needle), "{m:?} should mention {needle:?}"),
            other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn byte_ordered_keys_are_canonical_integers() {
        let p = Partitioner::ByteOrdered;
        assert_eq!(p.key(b"70".to_vec(), 10).unwrap(), Key::byte(70));
        assert_eq!(p.key(b"070".to_vec(), 10).unwrap().as_bytes(), b"70");
        assert_eq!(p.key(b"0".to_vec(), 10).unwrap().as_bytes(), b"0");
        assert_eq!(p.slot(b"255"), 255);
        assert_eq!(p.slot(Key::byte(7).as_bytes()), 7);
        refused(p.key(b"256".to_vec(), 10), "key 256 is out of range; keys are 0 to 255");
        refused(p.key(b"99999999999".to_vec(), 10), "out of range");
        refused(p.key(b"user:42".to_vec(), 10), "partitioner murmur3");
        refused(p.key(b"-1".to_vec(), 10), "byte-ordered");
        refused(p.key(Vec::new(), 10), "byte-ordered");
        // A long refused key is quoted in part, never whole.
        let long = p.key(vec![b'x'; 100_000], 10).unwrap_err().to_string();
        assert!(long.contains("… (100000 bytes)") && long.len() < 400, "{long}");
        let digits = p.key(vec![b'9'; 5000], 10).unwrap_err().to_string();
        assert!(digits.contains("out of range") && digits.len() < 200, "{digits}");
    }

    #[test]
    fn murmur3_keys_are_any_bytes_within_the_limit() {
        let p = Partitioner::Murmur3;
        assert_eq!(p.key(b"user:42".to_vec(), 10).unwrap().as_bytes(), b"user:42");
        assert_eq!(p.key(vec![0xff, 0, 0x80], 3).unwrap().len(), 3);
        refused(p.key(Vec::new(), 10), "the key is empty");
        refused(p.key(vec![b'k'; 11], 10), "key of 11 bytes exceeds the limit of 10 bytes");
        assert_eq!(p.slot(b"123"), token::slot(-7468325962851647638));
        assert_ne!(p.slot(b"070"), p.slot(b"70"), "murmur3 keys are bytes, not numbers");
    }

    #[test]
    fn keys_show_utf8_as_text_and_escape_the_rest() {
        assert_eq!(Key::trusted(*b"user:42").to_string(), "user:42");
        assert_eq!(Key::trusted("kremówki".as_bytes()).to_string(), "kremówki");
        assert_eq!(Key::trusted(vec![b'a', 0xff, b'\n', b'\\', 0]).to_string(), "a\\xff\\n\\\\\\x00");
        assert_eq!(format!("{:?}", Key::byte(9)), "\"9\"");
    }
}
