//! The cluster file: who the nodes are, and the cluster's settings.
//!
//! One node a line, `name host port`, in ring order, as the seed's
//! `replicas.txt`; `#` starts a comment and blank lines are skipped. Optional
//! lines set the cluster's placement (issue 12), each at most once:
//!
//! | line | meaning | default |
//! |------|---------|---------|
//! | `partitioner byte-ordered` or `partitioner murmur3` | how keys are placed | `byte-ordered` |
//! | `rf N` | replication factor, 1 to the number of nodes | the replica's `--rf` |
//! | `vnodes N` | tokens derived per node when none are given (murmur3), 1 to 1024 | 16 |
//!
//! and a node line may end in `tokens=T1,T2,…` (murmur3 only; signed 64-bit
//! tokens, unique in the file; every node lists tokens or none does). Names
//! and addresses must be unique; any mistake is refused with the line number
//! and what is wrong.
//!
//! [`parse_cluster_spec`] reads all of it; [`Ring::from_spec`](crate::cluster::ring::Ring::from_spec)
//! turns it into placement.

pub use crate::cluster::key::Partitioner;
use crate::cluster::ring::{NodeInfo, node_id};
use crate::cluster::token::Token;
use crate::error::{Error, Result};

/// The most tokens derived per node.
pub const MAX_VNODES: usize = 1024;

/// Tokens derived per node when the file gives none.
pub const DEFAULT_VNODES: usize = 16;

/// Everything a cluster file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The nodes, in file order.
    pub nodes: Vec<NodeInfo>,
    /// Each node's tokens from the file (all empty when none are given).
    pub tokens: Vec<Vec<Token>>,
    /// How keys are placed.
    pub partitioner: Partitioner,
    /// The replication factor, if the file sets it.
    pub rf: Option<usize>,
    /// Tokens to derive per node, if the file sets it.
    pub vnodes: Option<usize>,
}

/// Reads a whole cluster file's text (see the module docs). `origin` names the file in errors.
pub fn parse_cluster_spec(text: &str, origin: &str) -> Result<ClusterSpec> {
    let mut spec = ClusterSpec { nodes: Vec::new(), tokens: Vec::new(), partitioner: Partitioner::default(), rf: None, vnodes: None };
    let mut partitioner_line = None;
    let mut rf_line = 0;
    let mut token_lines: Vec<usize> = Vec::new();
    let mut all_tokens: Vec<(Token, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = |why: String| Error::Config(format!("{origin} line {lineno}: {why}: {raw:?}"));
        match fields[0] {
            setting @ ("partitioner" | "rf" | "vnodes") => {
                if fields.len() != 2 {
                    return Err(bad(format!("expected `{setting} VALUE`, found {} field(s)", fields.len())));
                }
                let value = fields[1];
                let twice = match setting {
                    "partitioner" => partitioner_line.is_some(),
                    "rf" => spec.rf.is_some(),
                    _ => spec.vnodes.is_some(),
                };
                if twice {
                    return Err(bad(format!("`{setting}` is set twice")));
                }
                match setting {
                    "partitioner" => {
                        spec.partitioner = match Partitioner::from_name(value) {
                            Some(p) => p,
                            None => return Err(bad(format!("unknown partitioner {value:?}; use byte-ordered or murmur3"))),
                        };
                        partitioner_line = Some(lineno);
                    }
                    "rf" => match value.parse::<usize>() {
                        Ok(n) if n > 0 => {
                            spec.rf = Some(n);
                            rf_line = lineno;
                        }
                        _ => return Err(bad(format!("rf {value:?} is not a whole number of at least 1"))),
                    },
                    _ => match value.parse::<usize>() {
                        Ok(n) if (1..=MAX_VNODES).contains(&n) => spec.vnodes = Some(n),
                        _ => return Err(bad(format!("vnodes {value:?} is not a whole number from 1 to {MAX_VNODES}"))),
                    },
                }
            }
            _ => {
                let (node, tokens) = match fields.len() {
                    3 => (&fields[..], None),
                    4 => (&fields[..3], Some(fields[3])),
                    n => return Err(bad(format!("expected `name host port` (and optionally `tokens=T1,T2,…`), found {n} field(s)"))),
                };
                let (name, host, port) = (node[0], node[1], node[2]);
                if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
                    return Err(bad(format!("name {name:?} may only hold letters, digits, '-', '_' and '.'")));
                }
                let port: u16 = match port.parse() {
                    Ok(p) if p > 0 => p,
                    _ => return Err(bad(format!("port {port:?} is not a number from 1 to 65535"))),
                };
                if let Some(other) = spec.nodes.iter().find(|n| n.name == name) {
                    return Err(bad(format!("duplicate name {name:?} (already used for {})", other.address())));
                }
                if let Some(other) = spec.nodes.iter().find(|n| n.host == host && n.port == port) {
                    return Err(bad(format!("duplicate address {host}:{port} (already used by {})", other.name)));
                }
                let id = node_id(name);
                if let Some(other) = spec.nodes.iter().find(|n| n.id == id) {
                    return Err(bad(format!("name {name:?} hashes to the same id as {} ({id}); rename one", other.name)));
                }
                let mut mine = Vec::new();
                if let Some(list) = tokens {
                    let Some(list) = list.strip_prefix("tokens=") else {
                        return Err(bad(format!("the fourth field must be `tokens=T1,T2,…`, not {list:?}")));
                    };
                    for t in list.split(',') {
                        let t: Token = t.parse().map_err(|_| bad(format!("token {t:?} is not a signed 64-bit integer")))?;
                        if let Some(&(_, other)) = all_tokens.iter().find(|&&(u, _)| u == t) {
                            let owner = &spec.nodes.get(other).map_or(name, |n| n.name.as_str());
                            return Err(bad(format!("token {t} is claimed twice (also by {owner})")));
                        }
                        all_tokens.push((t, spec.nodes.len()));
                        mine.push(t);
                    }
                    token_lines.push(lineno);
                }
                spec.nodes.push(NodeInfo { name: name.to_string(), host: host.to_string(), port, id });
                spec.tokens.push(mine);
            }
        }
    }
    if spec.nodes.is_empty() {
        return Err(Error::Config(format!("{origin}: no replicas listed")));
    }
    if let Some(&lineno) = token_lines.first() {
        if spec.partitioner != Partitioner::Murmur3 {
            return Err(Error::Config(format!("{origin} line {lineno}: tokens= needs `partitioner murmur3`")));
        }
        if let Some(n) = spec.tokens.iter().position(Vec::is_empty) {
            return Err(Error::Config(format!(
                "{origin}: {} lists no tokens but others do; list tokens= for every node or for none",
                spec.nodes[n].name
            )));
        }
    }
    if let Some(rf) = spec.rf
        && rf > spec.nodes.len()
    {
        return Err(Error::Config(format!("{origin} line {rf_line}: rf {rf} is more than the {} node(s) listed", spec.nodes.len())));
    }
    Ok(spec)
}

/// The nodes a cluster file lists, whatever its settings (for tools that only
/// need the addresses).
pub fn parse_cluster_file(text: &str, origin: &str) -> Result<Vec<NodeInfo>> {
    Ok(parse_cluster_spec(text, origin)?.nodes)
}

/// Reads and parses a cluster file's nodes.
pub fn load_cluster_file(path: &str) -> Result<Vec<NodeInfo>> {
    Ok(load_cluster_spec(path)?.nodes)
}

/// Reads and parses a whole cluster file.
pub fn load_cluster_spec(path: &str) -> Result<ClusterSpec> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {path}: {e}")))?;
    parse_cluster_spec(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_tokens_are_read() {
        let text = "partitioner murmur3\nrf 2   # two copies\nvnodes 4\n\na 127.0.0.1 1 tokens=-5,7\nb 127.0.0.1 2 tokens=0\n";
        let spec = parse_cluster_spec(text, "f").unwrap();
        assert_eq!(spec.partitioner, Partitioner::Murmur3);
        assert_eq!((spec.rf, spec.vnodes), (Some(2), Some(4)));
        assert_eq!(spec.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(spec.tokens, vec![vec![-5, 7], vec![0]]);
        // The seed's file: byte-ordered, no settings, no tokens.
        let seed = parse_cluster_spec("replica0 127.0.0.1 9090\nreplica1 127.0.0.1 9091\n", "f").unwrap();
        assert_eq!((seed.partitioner, seed.rf, seed.vnodes), (Partitioner::ByteOrdered, None, None));
        assert_eq!(seed.tokens, vec![Vec::<Token>::new(), Vec::new()]);
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let cases = [
            ("replica0 127.0.0.1\n", "line 1"),
            ("replica0 127.0.0.1 9090\nreplica0 127.0.0.1 9091\n", "line 2: duplicate name"),
            ("a 127.0.0.1 9090\nb 127.0.0.1 9090\n", "line 2: duplicate address"),
            ("a 127.0.0.1 99999\n", "line 1: port"),
            ("a 127.0.0.1 0\n", "line 1: port"),
            ("# nothing\n\n", "no replicas"),
            ("a/b 127.0.0.1 1\n", "line 1: name"),
        ];
        for (text, want) in cases {
            let err = parse_cluster_file(text, "f").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn bad_lines_are_refused_with_the_line_and_the_reason() {
        let cases = [
            ("partitioner random\na 127.0.0.1 1\n", "line 1: unknown partitioner \"random\""),
            ("partitioner\na 127.0.0.1 1\n", "line 1: expected `partitioner VALUE`"),
            ("partitioner murmur3\npartitioner murmur3\na 127.0.0.1 1\n", "line 2: `partitioner` is set twice"),
            ("rf 0\na 127.0.0.1 1\n", "line 1: rf \"0\""),
            ("rf 2\na 127.0.0.1 1\n", "line 1: rf 2 is more than the 1 node(s)"),
            ("vnodes 5000\na 127.0.0.1 1\n", "line 1: vnodes \"5000\""),
            ("a 127.0.0.1 1 tokens=1\n", "line 1: tokens= needs `partitioner murmur3`"),
            ("partitioner murmur3\na 127.0.0.1 1 tokens=x\n", "line 2: token \"x\""),
            ("partitioner murmur3\na 127.0.0.1 1 tokens=1\nb 127.0.0.1 2 tokens=1\n", "line 3: token 1 is claimed twice (also by a)"),
            ("partitioner murmur3\na 127.0.0.1 1 tokens=1\nb 127.0.0.1 2\n", "b lists no tokens"),
            ("a 127.0.0.1 1 weight=3\n", "line 1: the fourth field must be `tokens="),
            ("a 127.0.0.1 1 2 3\n", "line 1: expected `name host port` (and optionally `tokens=T1,T2,…`), found 5"),
        ];
        for (text, want) in cases {
            let err = parse_cluster_spec(text, "f").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
