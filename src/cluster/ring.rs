//! The ring: who the replicas are and which keys each holds.
//!
//! The nodes come from the cluster file (`replicas.txt`, one replica a line,
//! `name host port`, in ring order; read by [`crate::cluster::file`]), and so
//! does the partitioner.
//!
//! # Byte-ordered placement (the seed's)
//!
//! Keys are `0..=255`, so the key *is* its token, as with Cassandra's
//! `ByteOrderedPartitioner`. With `N` replicas each gets a contiguous range of
//! `256 / N` keys, the first `256 % N` replicas one more; replica `i`'s range
//! follows replica `i-1`'s. A key's replicas are its owner and the next `RF-1`
//! replicas clockwise. With the shipped four-replica file this is the seed's
//! table: keys 0-63 on replica0,1,2; 64-127 on 1,2,3; 128-191 on 2,3,0;
//! 192-255 on 3,0,1.
//!
//! # Murmur3 placement (seed 002's)
//!
//! Keys are byte strings; a key's token is Cassandra's Murmur3 token and the
//! nodes own tokens (from the file's `tokens=`, or `vnodes` balanced tokens
//! each): a key lives on the owner of the first token at or after its own,
//! then on the next `RF-1` distinct nodes clockwise (see [`crate::cluster::token`]).
//! The replica set of every token range is computed once, when the ring is
//! built, so placing a key is one hash and one binary search.
//!
//! # Epochs
//!
//! A [`Ring`] is immutable and carries an `epoch`. Membership changes (a later
//! issue) build a new ring with a higher epoch instead of mutating this one;
//! the handshake between replicas compares [`Ring::fingerprint`]s (names,
//! addresses, RF, partitioner and every token) so two nodes with different
//! views refuse each other rather than misplace data.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::error::{Error, Result};

use crate::cluster::file::ClusterSpec;
pub use crate::cluster::key::{KEYS, Key, Partitioner};
use crate::cluster::token::{self, Token, TokenRing};

/// A node's stable identity: FNV-1a of its name, so it does not depend on the
/// node's place in the file or the ring. Links, calls, hints and faults name
/// nodes by id, so a ring with a new epoch can add and remove nodes without
/// renumbering anyone's state. Also the tie-breaker of timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node#{:08x}", self.0)
    }
}

/// One replica as the cluster file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Unique name, e.g. `replica0`.
    pub name: String,
    /// Host as written in the file.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Stable id derived from the name; breaks timestamp ties.
    pub id: NodeId,
}

impl NodeInfo {
    /// `host:port`.
    pub fn address(&self) -> String {
        if self.host.contains(':') { format!("[{}]:{}", self.host, self.port) } else { format!("{}:{}", self.host, self.port) }
    }

    /// Resolves the address to a socket address.
    pub fn socket_addr(&self) -> Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| Error::Config(format!("cannot resolve {} for {}: {e}", self.address(), self.name)))?
            .next()
            .ok_or_else(|| Error::Config(format!("{} for {} resolves to no address", self.address(), self.name)))
    }
}

pub use crate::cluster::file::{load_cluster_file, load_cluster_spec, parse_cluster_file};

pub(crate) fn node_id(name: &str) -> NodeId {
    NodeId(fnv1a(name.as_bytes()) as u32)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The placement of keys on replicas; immutable, identified by its epoch.
#[derive(Debug, Clone)]
pub struct Ring {
    nodes: Vec<NodeInfo>,
    rf: usize,
    epoch: u64,
    placement: Placement,
}

#[derive(Debug, Clone)]
enum Placement {
    Bytes {
        /// `ranges[i]` is node `i`'s primary range, inclusive (wrapping past
        /// 255 when the start is above the end); `None` for a node owning none.
        ranges: Vec<Option<(u8, u8)>>,
        /// `replicas[key]`: the key's replicas, owner first.
        replicas: Vec<Arc<[NodeId]>>,
    },
    Tokens {
        /// Every node's tokens, by ring position.
        ring: TokenRing,
        /// The sorted tokens, for the binary search.
        tokens: Vec<Token>,
        /// `replicas[i]`: the replicas of the range ending at `tokens[i]`, owner first.
        replicas: Vec<Arc<[NodeId]>>,
        /// Each node's share of the data at the ring's RF, by ring position.
        shares: Vec<f64>,
    },
}

fn check_nodes(nodes: &[NodeInfo], owners: usize, rf: usize) -> Result<()> {
    let n = nodes.len();
    if n == 0 || n > KEYS {
        return Err(Error::Config(format!("a ring needs 1 to {KEYS} replicas, got {n}")));
    }
    if rf == 0 || rf > owners {
        return Err(Error::Config(format!("replication factor {rf} must be between 1 and the number of replicas owning data ({owners})")));
    }
    for (i, a) in nodes.iter().enumerate() {
        if let Some(b) = nodes[..i].iter().find(|b| b.id == a.id) {
            return Err(Error::Config(format!("{} and {} have the same id {}", b.name, a.name, a.id)));
        }
    }
    Ok(())
}

impl Ring {
    /// The byte-ordered ring (the seed's); refuses an RF that is zero or larger
    /// than the cluster, or more than 256 replicas.
    pub fn new(nodes: Vec<NodeInfo>, rf: usize, epoch: u64) -> Result<Ring> {
        let ends = Ring::equal_ends(nodes.len());
        Ring::bytes(nodes, &ends, rf, epoch)
    }

    /// The last key of each of `n` equal contiguous ranges, the first `256 % n` one key longer (the seed's split).
    pub fn equal_ends(n: usize) -> Vec<Option<u8>> {
        let n = n.clamp(1, KEYS);
        let (base, extra) = (KEYS / n, KEYS % n);
        let mut end = 0usize;
        (0..n)
            .map(|i| {
                end += base + usize::from(i < extra);
                Some((end - 1) as u8)
            })
            .collect()
    }

    /// A byte-ordered ring where node `i` owns the keys after the previous
    /// owner's end up to `ends[i]` (wrapping past 255 for the first owner);
    /// `None`: the node owns no keys (it only coordinates). The owners' ends
    /// must increase in ring order. A key's replicas are its owner and the
    /// next `RF-1` owners clockwise.
    pub fn bytes(nodes: Vec<NodeInfo>, ends: &[Option<u8>], rf: usize, epoch: u64) -> Result<Ring> {
        if ends.len() != nodes.len() {
            return Err(Error::Config(format!("{} range ends for {} nodes", ends.len(), nodes.len())));
        }
        let owners: Vec<(usize, u8)> = ends.iter().enumerate().filter_map(|(i, e)| e.map(|e| (i, e))).collect();
        check_nodes(&nodes, owners.len(), rf)?;
        if let Some(w) = owners.windows(2).find(|w| w[0].1 >= w[1].1) {
            return Err(Error::Config(format!(
                "{}'s range ends at {}, not before {}'s at {}: range ends must increase in ring order",
                nodes[w[0].0].name, w[0].1, nodes[w[1].0].name, w[1].1
            )));
        }
        let mut ranges = vec![None; nodes.len()];
        for (j, &(i, end)) in owners.iter().enumerate() {
            let prev = owners[(j + owners.len() - 1) % owners.len()].1;
            ranges[i] = Some((if owners.len() == 1 { end.wrapping_add(1) } else { prev.wrapping_add(1) }, end));
        }
        let mut replicas = Vec::with_capacity(KEYS);
        for key in 0..KEYS {
            let first = owners.iter().position(|&(_, end)| key <= end as usize).unwrap_or(0);
            replicas.push((0..rf).map(|j| nodes[owners[(first + j) % owners.len()].0].id).collect::<Vec<_>>().into());
        }
        Ok(Ring { nodes, rf, epoch, placement: Placement::Bytes { ranges, replicas } })
    }

    /// A murmur3 ring: `tokens[i]` are node `i`'s tokens; all empty means
    /// `vnodes` balanced tokens each (see [`TokenRing::balanced`]).
    pub fn murmur3(nodes: Vec<NodeInfo>, tokens: &[Vec<Token>], vnodes: usize, rf: usize, epoch: u64) -> Result<Ring> {
        let owners = if tokens.iter().all(Vec::is_empty) { nodes.len() } else { tokens.iter().filter(|t| !t.is_empty()).count() };
        check_nodes(&nodes, owners, rf)?;
        let ring = if tokens.iter().all(Vec::is_empty) {
            TokenRing::balanced(nodes.len(), vnodes, rf)
        } else {
            TokenRing::new(tokens.iter().enumerate().flat_map(|(i, ts)| ts.iter().map(move |&t| (t, i))).collect(), rf)
        }
        .map_err(|e| Error::Config(e.to_string()))?;
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        let sorted: Vec<Token> = ring.tokens().iter().map(|&(t, _)| t).collect();
        let replicas = sorted.iter().map(|&t| ring.replicas(t).into_iter().map(|i| ids[i]).collect::<Vec<_>>().into()).collect();
        let mut shares = ring.shares();
        shares.resize(nodes.len(), 0.0);
        Ok(Ring { nodes, rf, epoch, placement: Placement::Tokens { ring, tokens: sorted, replicas, shares } })
    }

    /// The ring a cluster file describes; the file's `rf` wins over `default_rf`.
    pub fn from_spec(spec: &ClusterSpec, default_rf: usize, epoch: u64) -> Result<Ring> {
        let rf = spec.rf.unwrap_or(default_rf);
        match spec.partitioner {
            Partitioner::ByteOrdered => Ring::new(spec.nodes.clone(), rf, epoch),
            Partitioner::Murmur3 => {
                Ring::murmur3(spec.nodes.clone(), &spec.tokens, spec.vnodes.unwrap_or(crate::cluster::file::DEFAULT_VNODES), rf, epoch)
            }
        }
    }

    /// How this ring places keys.
    pub fn partitioner(&self) -> Partitioner {
        match self.placement {
            Placement::Bytes { .. } => Partitioner::ByteOrdered,
            Placement::Tokens { .. } => Partitioner::Murmur3,
        }
    }

    /// All nodes in ring order.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The node `id`, if it is in the ring.
    pub fn get(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node `id`'s name, or its id if it is not in the ring.
    pub fn name(&self, id: NodeId) -> String {
        self.get(id).map_or_else(|| id.to_string(), |n| n.name.clone())
    }

    /// The node `id`'s place in ring order.
    pub fn position(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Every node's id, in ring order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().map(|n| n.id)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: a ring has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Replication factor.
    pub fn rf(&self) -> usize {
        self.rf
    }

    /// The ring's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The id of the node named `name`.
    pub fn id_of(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().find(|n| n.name == name).map(|n| n.id)
    }

    /// The replicas of `key`, owner first, then clockwise.
    pub fn replicas(&self, key: &[u8]) -> &[NodeId] {
        self.placed(key)
    }

    fn placed(&self, key: &[u8]) -> &Arc<[NodeId]> {
        match &self.placement {
            Placement::Bytes { replicas, .. } => &replicas[Partitioner::ByteOrdered.slot(key) as usize],
            Placement::Tokens { replicas, .. } => &replicas[self.range_index(key) as usize],
        }
    }

    /// The index of the token range holding `key` (0 in a byte-ordered ring,
    /// where the slot alone places a key). With the slot, it names the group
    /// of keys that share one replica set.
    pub fn range_index(&self, key: &[u8]) -> u32 {
        self.group_leaf(key).0
    }

    /// The first and last token (inclusive) of the keys of slot `slot` in
    /// this ring's token space (see [`token_of`](Self::token_of)).
    pub fn slot_span(&self, slot: u8) -> (Token, Token) {
        match &self.placement {
            Placement::Bytes { .. } => (Token::from(slot), Token::from(slot)),
            Placement::Tokens { .. } => token::slot_span(slot),
        }
    }

    /// The token of `key` in this ring's token space: its Murmur3 token, or
    /// (byte-ordered) the key's integer.
    pub fn token_of(&self, key: &[u8]) -> Token {
        match &self.placement {
            Placement::Bytes { .. } => Token::from(Partitioner::ByteOrdered.slot(key)),
            Placement::Tokens { .. } => token::token(key),
        }
    }

    /// The replicas of the keys whose token is `t` (see [`token_of`](Self::token_of)).
    pub fn replicas_at(&self, t: Token) -> &[NodeId] {
        match &self.placement {
            Placement::Bytes { replicas, .. } => &replicas[t.clamp(0, KEYS as i64 - 1) as usize],
            Placement::Tokens { tokens, replicas, .. } => {
                let i = tokens.partition_point(|&x| x < t);
                &replicas[if i == tokens.len() { 0 } else { i }]
            }
        }
    }

    /// The token range of `key` (as [`range_index`](Self::range_index)) and
    /// its anti-entropy leaf ([`token::leaf`]; 0 in a byte-ordered ring), hashing the key once.
    pub fn group_leaf(&self, key: &[u8]) -> (u32, u8) {
        match &self.placement {
            Placement::Bytes { .. } => (0, 0),
            Placement::Tokens { tokens, .. } => {
                let t = token::token(key);
                let i = tokens.partition_point(|&x| x < t);
                (if i == tokens.len() { 0 } else { i as u32 }, token::leaf(t))
            }
        }
    }

    /// The replicas of the keys in `slot` and token range `range` (see
    /// [`range_index`](Self::range_index)); empty if there is no such range.
    pub fn group_replicas(&self, slot: u8, range: u32) -> &[NodeId] {
        match &self.placement {
            Placement::Bytes { replicas, .. } => &replicas[slot as usize],
            Placement::Tokens { replicas, .. } => replicas.get(range as usize).map_or(&[], |r| r),
        }
    }

    /// [`replicas`](Self::replicas) as a shared list, for a call to keep without copying it.
    pub fn replica_set(&self, key: &[u8]) -> Arc<[NodeId]> {
        self.placed(key).clone()
    }

    /// The store slot of `key` (see [`Partitioner::slot`]).
    pub fn slot(&self, key: &[u8]) -> u8 {
        self.partitioner().slot(key)
    }

    /// The primary range of the node at ring position `i`, inclusive
    /// (byte-ordered rings; wrapping past 255 when the start is above the end;
    /// `None` for a node owning no keys).
    pub fn range(&self, i: usize) -> Option<(u8, u8)> {
        match &self.placement {
            Placement::Bytes { ranges, .. } => ranges.get(i).copied().flatten(),
            Placement::Tokens { .. } => None,
        }
    }

    /// Every token of the ring, sorted (murmur3 rings; empty for byte-ordered ones).
    pub fn sorted_tokens(&self) -> &[Token] {
        match &self.placement {
            Placement::Bytes { .. } => &[],
            Placement::Tokens { tokens, .. } => tokens,
        }
    }

    /// The tokens of the node at ring position `i`, sorted (murmur3 rings).
    pub fn tokens_of(&self, i: usize) -> Vec<Token> {
        match &self.placement {
            Placement::Bytes { .. } => Vec::new(),
            Placement::Tokens { ring, .. } => ring.tokens().iter().filter(|&&(_, n)| n == i).map(|&(t, _)| t).collect(),
        }
    }

    /// The share of all data the node at ring position `i` holds at the ring's RF.
    pub fn share(&self, i: usize) -> f64 {
        match &self.placement {
            Placement::Bytes { replicas, .. } => {
                let id = self.nodes[i].id;
                replicas.iter().filter(|r| r.contains(&id)).count() as f64 / KEYS as f64
            }
            Placement::Tokens { shares, .. } => shares[i],
        }
    }

    /// A one-line description of the ring: epoch, RF, partitioner and every node.
    pub fn describe(&self) -> String {
        let mut s = format!("epoch {} rf {}", self.epoch, self.rf);
        if let Placement::Tokens { tokens, .. } = &self.placement {
            let _ = write!(s, " murmur3 {} tokens", tokens.len());
        }
        s.push(':');
        for n in &self.nodes {
            let _ = write!(s, " {}={}", n.name, n.address());
        }
        s
    }

    /// A hash of [`Ring::describe`] and every token: equal on two nodes exactly when their rings agree.
    pub fn fingerprint(&self) -> u64 {
        let mut text = self.describe();
        if let Placement::Tokens { ring, .. } = &self.placement {
            for (t, n) in ring.tokens() {
                let _ = write!(text, " {t}@{n}");
            }
        }
        fnv1a(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = "# the four replicas\nreplica0 127.0.0.1 9090\nreplica1 127.0.0.1 9091\n\nreplica2 127.0.0.1 9092  # third\nreplica3 127.0.0.1 9093\n";

    fn ring(n: usize, rf: usize) -> Ring {
        let nodes = (0..n)
            .map(|i| NodeInfo { name: format!("r{i}"), host: "127.0.0.1".into(), port: 1000 + i as u16, id: NodeId(i as u32) })
            .collect();
        Ring::new(nodes, rf, 1).unwrap()
    }

    #[test]
    fn placement_equals_the_seed_table() {
        let r = Ring::new(parse_cluster_file(SHIPPED, "replicas.txt").unwrap(), 3, 1).unwrap();
        let table: [(std::ops::RangeInclusive<u8>, [usize; 3]); 4] =
            [(0..=63, [0, 1, 2]), (64..=127, [1, 2, 3]), (128..=191, [2, 3, 0]), (192..=255, [3, 0, 1])];
        for (keys, want) in table {
            for key in keys {
                let got: Vec<usize> = r.replicas(Key::byte(key).as_bytes()).iter().map(|&id| r.position(id).unwrap()).collect();
                assert_eq!(got, want, "key {key}");
            }
        }
        assert_eq!(r.range(0), Some((0, 63)));
        assert_eq!(r.range(3), Some((192, 255)));
        assert_eq!(r.nodes()[2].name, "replica2");
        assert_eq!(r.name(r.id_of("replica2").unwrap()), "replica2");
    }

    #[test]
    fn ranges_are_equal_contiguous_and_cover_every_key() {
        for n in 1..=9 {
            let r = ring(n, 1);
            let mut next = 0usize;
            for i in 0..n {
                let (s, e) = r.range(i).unwrap();
                assert_eq!(s as usize, next, "n={n} node {i} starts where the previous ended");
                let len = e as usize - s as usize + 1;
                assert!(len == 256 / n || len == 256 / n + 1, "n={n} node {i} has {len} keys");
                next = e as usize + 1;
            }
            assert_eq!(next, 256);
        }
    }

    #[test]
    fn replicas_are_owner_then_clockwise_and_distinct() {
        let r = ring(5, 3);
        for key in 0..=255u8 {
            let reps = r.replicas(Key::byte(key).as_bytes());
            let owner = (0..5).find(|&i| (r.range(i).unwrap().0..=r.range(i).unwrap().1).contains(&key)).unwrap();
            let want = [owner, (owner + 1) % 5, (owner + 2) % 5].map(|i| NodeId(i as u32));
            assert_eq!(reps, want);
        }
    }

    #[test]
    fn bad_rf_is_refused() {
        let nodes = parse_cluster_file(SHIPPED, "f").unwrap();
        assert!(Ring::new(nodes.clone(), 0, 1).is_err());
        assert!(Ring::new(nodes.clone(), 5, 1).is_err());
        assert!(Ring::new(nodes, 4, 1).is_ok());
    }

    #[test]
    fn fingerprint_differs_when_anything_differs() {
        let nodes = parse_cluster_file(SHIPPED, "f").unwrap();
        let a = Ring::new(nodes.clone(), 3, 1).unwrap();
        assert_eq!(a.fingerprint(), Ring::new(nodes.clone(), 3, 1).unwrap().fingerprint());
        assert_ne!(a.fingerprint(), Ring::new(nodes.clone(), 2, 1).unwrap().fingerprint());
        assert_ne!(a.fingerprint(), Ring::new(nodes.clone(), 3, 2).unwrap().fingerprint());
        let mut moved = nodes;
        moved[1].port = 9999;
        assert_ne!(a.fingerprint(), Ring::new(moved, 3, 1).unwrap().fingerprint());
    }

    /// Seed 002's rule through the cluster file: explicit tokens, RF 2, a key
    /// on the node owning its hash range and on the next node.
    #[test]
    fn murmur3_rings_place_keys_by_token_from_the_file() {
        let text = "partitioner murmur3\nrf 2\na 127.0.0.1 1 tokens=-4611686018427387904\nb 127.0.0.1 2 tokens=0\nc 127.0.0.1 3 tokens=4611686018427387904\n";
        let spec = crate::cluster::file::parse_cluster_spec(text, "f").unwrap();
        let r = Ring::from_spec(&spec, 3, 1).unwrap();
        assert_eq!((r.partitioner(), r.rf()), (Partitioner::Murmur3, 2), "the file's rf wins");
        let names = |key: &[u8]| r.replicas(key).iter().map(|&id| r.name(id)).collect::<Vec<_>>();
        // "123" hashes to -7468325962851647638: a's range (wrapping, up to -2^62).
        assert_eq!(names(b"123"), ["a", "b"]);
        // "test" is -6017608668500074083, also a's; "kremówki" is 4354931215268080151: c's.
        assert_eq!(names(b"test"), ["a", "b"]);
        assert_eq!(names("kremówki".as_bytes()), ["c", "a"]);
        for i in 0..500 {
            let key = format!("k{i}");
            let t = token::token(key.as_bytes());
            let owner = if t <= -4611686018427387904 || t > 4611686018427387904 {
                "a"
            } else if t <= 0 {
                "b"
            } else {
                "c"
            };
            assert_eq!(names(key.as_bytes())[0], owner, "{key} with token {t}");
            assert_eq!(r.slot(key.as_bytes()), token::slot(t));
        }
        // a's range wraps (half the ring); b's and c's are a quarter each. At RF 2 a node
        // holds its own range and its predecessor's.
        let shares: Vec<f64> = (0..3).map(|i| r.share(i)).collect();
        for (got, want) in shares.iter().zip([0.75, 0.75, 0.5]) {
            assert!((got - want).abs() < 1e-9, "shares {shares:?}");
        }
    }

    #[test]
    fn fingerprints_cover_partitioner_and_tokens() {
        let nodes = parse_cluster_file(SHIPPED, "f").unwrap();
        let bytes = Ring::new(nodes.clone(), 3, 1).unwrap();
        let m16 = Ring::murmur3(nodes.clone(), &[], 16, 3, 1).unwrap();
        let m8 = Ring::murmur3(nodes.clone(), &[], 8, 3, 1).unwrap();
        assert_ne!(bytes.fingerprint(), m16.fingerprint());
        assert_ne!(m16.fingerprint(), m8.fingerprint(), "same nodes, other tokens");
        assert_eq!(m16.fingerprint(), Ring::murmur3(nodes, &[], 16, 3, 1).unwrap().fingerprint());
        assert_eq!(m16.tokens_of(0).len(), 16);
        assert!(bytes.tokens_of(0).is_empty() && m16.range(0).is_none());
        let mut every: Vec<Token> = (0..m16.len()).flat_map(|i| m16.tokens_of(i)).collect();
        every.sort_unstable();
        assert_eq!((m16.sorted_tokens(), bytes.sorted_tokens()), (&every[..], &[][..]), "every node's tokens, sorted");
    }
}
