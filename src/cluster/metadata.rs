//! Cluster metadata: the members, their tokens and states, versioned by epoch.
//!
//! The cluster file seeds epoch 1; after that the metadata changes only by
//! consensus (the metadata Paxos, in `node/`), one *movement* at a time, each
//! step a new epoch. This module is the I/O-free half: the record, the
//! changes it allows and refuses, and the rings it implies.
//!
//! # States and movements
//!
//! A member is `NORMAL`, `JOINING`, `LEAVING` or `REMOVED`. A movement has
//! two steps, two epochs:
//!
//! * **join** — the new member enters as `JOINING` with its tokens (chosen
//!   to restore balance: [`TokenRing::allocate`], or the halves of the
//!   largest range of a byte-ordered ring), then becomes `NORMAL` once it
//!   holds the data of its ranges. A member may join without tokens: it only
//!   coordinates (seed 003's *proxy*).
//! * **decommission** / **removenode** — the member turns `LEAVING`, then
//!   `REMOVED` (its tokens dropped) once the new owners hold its ranges: from
//!   the member itself (decommission), or from the surviving replicas
//!   (removenode, for a dead member).
//!
//! # Two rings while data moves
//!
//! The **read ring** is owned by `NORMAL` and `LEAVING` members: the replicas
//! that hold the data now. The **write ring** is owned by `NORMAL` and
//! `JOINING` members: the replicas that will hold it. Reads use the read ring;
//! writes go to the read ring's replicas *and* to the write ring's replicas
//! not among them (the *pending* ones), so that nothing written during the
//! movement is missing when it ends (Cassandra's pending ranges). With no
//! movement the two rings are the same.
//!
//! # Voters
//!
//! The members that are not `REMOVED` vote on the next epoch. A movement
//! adds or removes one voter per epoch, so any majority of one epoch's voters
//! meets any majority of the next one's: a proposer that has missed a change
//! still meets someone who knows it.

use std::fmt;

use crate::cluster::file::{ClusterSpec, DEFAULT_VNODES};
use crate::cluster::key::{KEYS, Partitioner};
use crate::cluster::ring::{NodeId, NodeInfo, Ring, node_id};
use crate::cluster::token::{Token, TokenRing};
use crate::error::{Error, Result};
use crate::proto;

/// The largest RF a metadata record may carry.
pub const MAX_RF: usize = 16;

/// The most tokens one member may own in a metadata record.
pub const MAX_MEMBER_TOKENS: usize = 256;

/// The most tokens a metadata record may carry in all.
pub const MAX_TOKENS: usize = 8192;

/// Where a member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Serving its ranges.
    Normal,
    /// Receiving the data of its new ranges; written to, not read from.
    Joining,
    /// Handing its ranges over; still read from.
    Leaving,
    /// Gone from the ring (kept so `status` can say so).
    Removed,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Normal => "NORMAL",
            NodeState::Joining => "JOINING",
            NodeState::Leaving => "LEAVING",
            NodeState::Removed => "REMOVED",
        })
    }
}

/// What a movement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveKind {
    /// A member joins.
    Join,
    /// A live member hands its ranges over and leaves.
    Decommission,
    /// A dead member's ranges are rebuilt from the surviving replicas.
    RemoveNode,
}

impl fmt::Display for MoveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MoveKind::Join => "join",
            MoveKind::Decommission => "decommission",
            MoveKind::RemoveNode => "removenode",
        })
    }
}

/// A stretch of the ring a movement copies to a new replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The stretch is the tokens after `lo` up to `hi` (wrapping past the
    /// largest token; the whole ring if they are equal). Byte-ordered: keys.
    pub lo: Token,
    /// Its last token.
    pub hi: Token,
    /// The replica that needs its data.
    pub to: NodeId,
    /// Where the data is: the replicas giving the stretch up first.
    pub from: Vec<NodeId>,
}

impl Transfer {
    /// Whether token `t` is in the stretch.
    pub fn contains(&self, t: Token) -> bool {
        in_range(self.lo, self.hi, t)
    }
}

/// Whether `t` is after `lo` and at most `hi`, wrapping (all tokens if `lo == hi`).
pub fn in_range(lo: Token, hi: Token, t: Token) -> bool {
    match lo.cmp(&hi) {
        std::cmp::Ordering::Less => lo < t && t <= hi,
        std::cmp::Ordering::Greater => t > lo || t <= hi,
        std::cmp::Ordering::Equal => true,
    }
}

/// Whether every token from `first` to `last` (inclusive, `first <= last`,
/// not wrapping) is in one or more of the stretches `ranges` (each as in
/// [`in_range`]; adjacent stretches together cover what they join).
pub fn covered(ranges: &[(Token, Token)], first: Token, last: Token) -> bool {
    let mut from = first;
    // Each step moves past the end of a stretch holding `from`; no stretch twice.
    for _ in 0..=ranges.len() {
        let mut reach = None;
        for &(lo, hi) in ranges {
            if covers(lo, hi, from, last) {
                return true;
            }
            if in_range(lo, hi, from) {
                // Not to `last`, so it ends at `hi`, at or after `from`.
                reach = reach.max(Some(hi));
            }
        }
        match reach {
            Some(hi) if hi >= from && hi < last => from = hi + 1,
            _ => return false,
        }
    }
    false
}

/// Whether every token from `first` to `last` (inclusive, `first <= last`,
/// not wrapping) is in the stretch (`lo`, `hi`] of [`in_range`].
pub fn covers(lo: Token, hi: Token, first: Token, last: Token) -> bool {
    debug_assert!(first <= last);
    match lo.cmp(&hi) {
        std::cmp::Ordering::Less => lo < first && last <= hi,
        // Wrapping: the gap (hi, lo] must not fall between them.
        std::cmp::Ordering::Greater => first > lo || last <= hi,
        std::cmp::Ordering::Equal => true,
    }
}

/// One member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Name, address and id.
    pub info: NodeInfo,
    /// Murmur3: its tokens; byte-ordered: the last key of its range. Empty: it owns nothing.
    pub tokens: Vec<Token>,
    /// Tokens of a leaving member it takes over when the movement ends (murmur3).
    pub pending: Vec<Token>,
    /// Where it stands.
    pub state: NodeState,
}

/// The cluster's metadata at one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Grows by one with every change.
    pub epoch: u64,
    /// A hash of the first epoch: the same for every epoch of one cluster.
    pub cluster_id: u64,
    /// How keys are placed.
    pub partitioner: Partitioner,
    /// Copies of each key.
    pub rf: usize,
    /// Tokens a joining member gets (murmur3).
    pub vnodes: usize,
    /// Every member, in ring order (byte-ordered: owners by the end of their range).
    pub members: Vec<Member>,
    /// The movement under way, if any.
    pub moving: Option<(NodeId, MoveKind)>,
}

fn fnv(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Metadata {
    /// Epoch 1, from the cluster file (its `rf` wins over `default_rf`):
    /// every node `NORMAL`, with its tokens from the file or balanced ones,
    /// or (byte-ordered) the seed's equal ranges.
    pub fn initial(spec: &ClusterSpec, default_rf: usize) -> Result<Metadata> {
        let rf = spec.rf.unwrap_or(default_rf);
        let vnodes = spec.vnodes.unwrap_or(DEFAULT_VNODES);
        Ok(Metadata::from_ring(&Ring::from_spec(spec, rf, 1)?, vnodes))
    }

    /// The metadata of a ring built directly (tests, and nodes built from a
    /// ring rather than a cluster file): every node `NORMAL`, at the ring's epoch.
    pub fn from_ring(ring: &Ring, vnodes: usize) -> Metadata {
        let members = ring
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, info)| {
                let tokens = match ring.partitioner() {
                    Partitioner::ByteOrdered => ring.range(i).map(|(_, end)| vec![Token::from(end)]).unwrap_or_default(),
                    Partitioner::Murmur3 => ring.tokens_of(i),
                };
                Member { info: info.clone(), tokens, pending: Vec::new(), state: NodeState::Normal }
            })
            .collect();
        let mut m =
            Metadata { epoch: ring.epoch(), cluster_id: 0, partitioner: ring.partitioner(), rf: ring.rf(), vnodes, members, moving: None };
        m.cluster_id = fnv(&m.describe());
        m
    }

    /// A one-line description: epoch, partitioner, RF, and every member with its state and tokens.
    pub fn describe(&self) -> String {
        let mut s = format!("epoch {} {} rf {}", self.epoch, self.partitioner.name(), self.rf);
        for m in &self.members {
            s.push_str(&format!(" {}={}:{:?}", m.info.name, m.info.address(), m.state));
            for t in &m.tokens {
                s.push_str(&format!(",{t}"));
            }
        }
        s
    }

    /// A short description for messages: epoch, partitioner, RF, members and states.
    pub fn summary(&self) -> String {
        let members: Vec<String> = self.members.iter().map(|m| format!("{}={} {}", m.info.name, m.info.address(), m.state)).collect();
        format!("epoch {}, {}, rf {}: {}", self.epoch, self.partitioner.name(), self.rf, members.join(", "))
    }

    /// The member `id`, if any.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.info.id == id)
    }

    /// The member named `name`, if any.
    pub fn named(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.info.name == name)
    }

    /// The members that vote on the next epoch (all but the removed).
    pub fn voters(&self) -> Vec<NodeId> {
        self.members.iter().filter(|m| m.state != NodeState::Removed).map(|m| m.info.id).collect()
    }

    fn ring_of(&self, owns: impl Fn(NodeState) -> bool) -> Result<Ring> {
        let live: Vec<&Member> = self.members.iter().filter(|m| m.state != NodeState::Removed).collect();
        let nodes: Vec<NodeInfo> = live.iter().map(|m| m.info.clone()).collect();
        let owners = live.iter().filter(|m| owns(m.state) && !(m.tokens.is_empty() && m.pending.is_empty())).count();
        if owners == 0 {
            return Err(Error::Config(format!("epoch {}: no member owns data", self.epoch)));
        }
        // Fewer owners than RF only after a forced removal: every owner holds everything.
        let rf = self.rf.min(owners);
        match self.partitioner {
            Partitioner::ByteOrdered => {
                let ends: Vec<Option<u8>> =
                    live.iter().map(|m| if owns(m.state) { m.tokens.first().and_then(|&t| u8::try_from(t).ok()) } else { None }).collect();
                Ring::bytes(nodes, &ends, rf, self.epoch)
            }
            Partitioner::Murmur3 => {
                // The write ring gives leaving members' tokens to their takers already.
                let writes = !owns(NodeState::Leaving);
                let tokens: Vec<Vec<Token>> = live
                    .iter()
                    .map(|m| match (owns(m.state), writes) {
                        (false, _) => Vec::new(),
                        (true, false) => m.tokens.clone(),
                        (true, true) => m.tokens.iter().chain(&m.pending).copied().collect(),
                    })
                    .collect();
                Ring::murmur3(nodes, &tokens, self.vnodes, rf, self.epoch)
            }
        }
    }

    /// The ring reads use: owned by `NORMAL` and `LEAVING` members.
    pub fn read_ring(&self) -> Result<Ring> {
        self.ring_of(|s| matches!(s, NodeState::Normal | NodeState::Leaving))
    }

    /// The ring of the owners-to-be: `NORMAL` and `JOINING` members.
    pub fn write_ring(&self) -> Result<Ring> {
        self.ring_of(|s| matches!(s, NodeState::Normal | NodeState::Joining))
    }

    fn next(&self) -> Metadata {
        let mut m = self.clone();
        m.epoch += 1;
        m
    }

    fn busy(&self) -> Result<()> {
        match self.moving {
            Some((id, kind)) => Err(Error::InvalidRequest(format!(
                "a {kind} of {} is under way (epoch {}); one membership change at a time",
                self.member(id).map_or_else(|| id.to_string(), |m| m.info.name.clone()),
                self.epoch
            ))),
            None => Ok(()),
        }
    }

    /// The next epoch with `info` joining: with `tokens` if given, none if
    /// `proxy`, otherwise tokens that restore balance. A `REMOVED` member of
    /// the same name is replaced.
    pub fn begin_join(&self, info: NodeInfo, tokens: Option<Vec<Token>>, proxy: bool) -> Result<Metadata> {
        self.busy()?;
        if let Some(m) = self.members.iter().find(|m| m.state != NodeState::Removed && (m.info.name == info.name || m.info.id == info.id)) {
            return Err(Error::InvalidRequest(format!("{} is already a member ({})", info.name, m.state)));
        }
        if let Some(m) = self.members.iter().find(|m| m.state != NodeState::Removed && m.info.address() == info.address()) {
            return Err(Error::InvalidRequest(format!("{} already has the address {}", m.info.name, info.address())));
        }
        let mut next = self.next();
        next.members.retain(|m| m.info.name != info.name);
        let tokens = match (tokens, proxy) {
            (_, true) => Vec::new(),
            (Some(t), false) => t,
            (None, false) => self.allocate()?,
        };
        next.check_tokens(&info.name, &tokens)?;
        let member = Member { info, tokens, pending: Vec::new(), state: NodeState::Joining };
        let at = match (self.partitioner, member.tokens.first()) {
            // Owners stay in the order of their ranges' ends.
            (Partitioner::ByteOrdered, Some(&end)) => {
                next.members.iter().position(|m| m.tokens.first().is_some_and(|&e| e > end)).unwrap_or(next.members.len())
            }
            _ => next.members.len(),
        };
        next.moving = Some((member.info.id, MoveKind::Join));
        next.members.insert(at, member);
        next.write_ring()?;
        Ok(next)
    }

    /// Refuses tokens for `name` that another member owns or that do not fit the partitioner.
    fn check_tokens(&self, name: &str, tokens: &[Token]) -> Result<()> {
        if self.partitioner == Partitioner::ByteOrdered && (tokens.len() > 1 || tokens.iter().any(|&t| !(0..KEYS as i64).contains(&t))) {
            return Err(Error::InvalidRequest(format!("{name}: a byte-ordered member owns one range, ending at a key 0 to 255")));
        }
        for t in tokens {
            if let Some(m) = self.members.iter().find(|m| m.state != NodeState::Removed && m.tokens.contains(t)) {
                return Err(Error::InvalidRequest(format!("{name}: token {t} belongs to {}", m.info.name)));
            }
        }
        Ok(())
    }

    /// Tokens for a joining member: murmur3, [`TokenRing::allocate`] over the
    /// write ring; byte-ordered, the first half of the largest range.
    fn allocate(&self) -> Result<Vec<Token>> {
        let owners: Vec<&Member> =
            self.members.iter().filter(|m| matches!(m.state, NodeState::Normal | NodeState::Joining) && !m.tokens.is_empty()).collect();
        match self.partitioner {
            Partitioner::Murmur3 => {
                let pairs = owners.iter().enumerate().flat_map(|(i, m)| m.tokens.iter().map(move |&t| (t, i))).collect();
                let ring = TokenRing::new(pairs, self.rf.min(owners.len()).max(1)).map_err(|e| Error::Config(e.to_string()))?;
                Ok(ring.allocate(owners.len(), self.vnodes))
            }
            Partitioner::ByteOrdered => {
                let ends: Vec<i64> = owners.iter().filter_map(|m| m.tokens.first().copied()).collect();
                // Range j runs from after ends[j-1] to ends[j], wrapping for the first.
                let len = |j: usize| -> i64 {
                    let prev = ends[(j + ends.len() - 1) % ends.len()];
                    if ends.len() == 1 { KEYS as i64 } else { (ends[j] - prev).rem_euclid(KEYS as i64) }
                };
                let j = (0..ends.len()).max_by_key(|&j| (len(j), std::cmp::Reverse(j))).expect("a ring has an owner");
                if len(j) < 2 {
                    return Err(Error::InvalidRequest("every range holds a single key: there is none to split".into()));
                }
                let start = ends[(j + ends.len() - 1) % ends.len()] + 1;
                Ok(vec![(start + len(j) / 2 - 1).rem_euclid(KEYS as i64)])
            }
        }
    }

    /// The next epoch with member `id` leaving, by decommission (it hands
    /// its ranges over) or removenode (it is dead). Refused if fewer than RF
    /// members would own data, unless `force`.
    pub fn begin_leave(&self, id: NodeId, kind: MoveKind, force: bool) -> Result<Metadata> {
        self.busy()?;
        let Some(m) = self.member(id) else { return Err(Error::InvalidRequest(format!("{id} is not a member"))) };
        if m.state != NodeState::Normal {
            return Err(Error::InvalidRequest(format!("{} is {}, not NORMAL", m.info.name, m.state)));
        }
        let owners = self.members.iter().filter(|o| o.state == NodeState::Normal && !o.tokens.is_empty()).count();
        let left = owners - usize::from(!m.tokens.is_empty());
        if left == 0 {
            return Err(Error::InvalidRequest(format!("{} is the last member owning data; it cannot leave", m.info.name)));
        }
        if left < self.rf && !force {
            return Err(Error::InvalidRequest(format!(
                "removing {} would leave {left} members owning data, fewer than RF {}: every key would have {left} copies; add a member first, or force it",
                m.info.name, self.rf
            )));
        }
        let mut next = self.next();
        next.members.iter_mut().find(|o| o.info.id == id).expect("found above").state = NodeState::Leaving;
        next.moving = Some((id, kind));
        if self.partitioner == Partitioner::Murmur3 {
            next.hand_over(id);
        }
        next.read_ring()?;
        next.write_ring()?;
        Ok(next)
    }

    /// Gives each token of leaving member `id` to the remaining owner that
    /// leaves the shares closest to balance (as [`TokenRing::allocate`]
    /// weighs them), one token at a time: a leave keeps the ring balanced
    /// instead of piling a member's ranges on its successors.
    fn hand_over(&mut self, id: NodeId) {
        let leaving = self.member(id).map(|m| m.tokens.clone()).unwrap_or_default();
        let takers: Vec<usize> =
            (0..self.members.len()).filter(|&i| self.members[i].state == NodeState::Normal && !self.members[i].tokens.is_empty()).collect();
        if takers.is_empty() {
            return;
        }
        let rf = self.rf.min(takers.len());
        for t in leaving {
            let mut best: Option<(f64, usize)> = None;
            for &i in &takers {
                self.members[i].pending.push(t);
                // The takers' tokens so far; the leaver's tokens not handed over yet are left out.
                let pairs: Vec<(Token, usize)> = takers
                    .iter()
                    .enumerate()
                    .flat_map(|(j, &m)| self.members[m].tokens.iter().chain(&self.members[m].pending).map(move |&x| (x, j)))
                    .collect();
                self.members[i].pending.pop();
                let Ok(ring) = TokenRing::new(pairs, rf) else { continue };
                let mut shares = ring.shares();
                shares.resize(takers.len(), 0.0);
                let mean = rf as f64 / takers.len() as f64;
                let (sum, max) = shares.iter().fold((0f64, 0f64), |(s, m), x| ((s + (x - mean).powi(2)), m.max((x - mean).powi(2))));
                let cost = sum + takers.len() as f64 * max;
                if best.is_none_or(|(c, _)| cost < c) {
                    best = Some((cost, i));
                }
            }
            if let Some((_, i)) = best {
                self.members[i].pending.push(t);
            }
        }
    }

    /// The next epoch without joining member `id`: its join is abandoned (it
    /// died, or will never finish; writes were waiting for it as a pending
    /// replica). What it copied is dropped by nobody but itself.
    pub fn abort_join(&self, id: NodeId) -> Result<Metadata> {
        match (self.moving, self.member(id)) {
            (Some((m, MoveKind::Join)), Some(member)) if m == id && member.state == NodeState::Joining => {
                let mut next = self.next();
                next.members.retain(|m| m.info.id != id);
                next.moving = None;
                next.read_ring()?;
                Ok(next)
            }
            _ => Err(Error::InvalidRequest(format!("{id} is not joining"))),
        }
    }

    /// The next epoch with the movement under way finished: a joining
    /// member `NORMAL`, a leaving one `REMOVED` without tokens.
    pub fn finish(&self) -> Result<Metadata> {
        let Some((id, _)) = self.moving else {
            return Err(Error::InvalidRequest(format!("no movement is under way at epoch {}", self.epoch)));
        };
        let mut next = self.next();
        let m = next.members.iter_mut().find(|m| m.info.id == id).ok_or_else(|| Error::Internal(format!("moving {id} is not a member")))?;
        match m.state {
            NodeState::Joining => m.state = NodeState::Normal,
            NodeState::Leaving => {
                m.state = NodeState::Removed;
                m.tokens.clear();
            }
            s => return Err(Error::Internal(format!("{} is moving but {s}", m.info.name))),
        }
        for m in &mut next.members {
            let taken = std::mem::take(&mut m.pending);
            m.tokens.extend(taken);
            m.tokens.sort_unstable();
        }
        next.moving = None;
        next.read_ring()?;
        Ok(next)
    }

    /// What the movement under way must copy: for every stretch of the ring
    /// whose write ring has a replica its read ring lacks, that replica and
    /// where to copy from (the replicas that give the stretch up first, then
    /// the ones that keep it). Empty when nothing moves.
    pub fn transfers(&self) -> Result<Vec<Transfer>> {
        if self.moving.is_none() {
            return Ok(Vec::new());
        }
        let (read, write) = (self.read_ring()?, self.write_ring()?);
        let mut bounds: Vec<Token> = match self.partitioner {
            Partitioner::ByteOrdered => (0..KEYS as i64).collect(),
            Partitioner::Murmur3 => read.sorted_tokens().iter().chain(write.sorted_tokens()).copied().collect(),
        };
        bounds.sort_unstable();
        bounds.dedup();
        let mut out = Vec::new();
        for (i, &hi) in bounds.iter().enumerate() {
            let lo = if i == 0 { *bounds.last().expect("a bound") } else { bounds[i - 1] };
            let (old, new) = (read.replicas_at(hi), write.replicas_at(hi));
            for &to in new.iter().filter(|n| !old.contains(n)) {
                let mut from: Vec<NodeId> = old.iter().copied().filter(|o| !new.contains(o)).collect();
                from.extend(old.iter().copied().filter(|o| new.contains(o)));
                out.push(Transfer { lo, hi, to, from });
            }
        }
        Ok(out)
    }

    /// The wire and disk form.
    pub fn to_proto(&self) -> proto::ClusterMetadata {
        let (moving, kind) = match self.moving {
            Some((id, k)) => (self.member(id).map(|m| m.info.name.clone()).unwrap_or_default(), k),
            None => (String::new(), MoveKind::Join),
        };
        proto::ClusterMetadata {
            epoch: self.epoch,
            cluster_id: self.cluster_id,
            partitioner: self.partitioner.name().into(),
            rf: self.rf as u32,
            vnodes: self.vnodes as u32,
            members: self
                .members
                .iter()
                .map(|m| proto::MemberRecord {
                    name: m.info.name.clone(),
                    host: m.info.host.clone(),
                    port: m.info.port.into(),
                    tokens: m.tokens.clone(),
                    pending_tokens: m.pending.clone(),
                    state: match m.state {
                        NodeState::Normal => proto::MemberState::Normal,
                        NodeState::Joining => proto::MemberState::Joining,
                        NodeState::Leaving => proto::MemberState::Leaving,
                        NodeState::Removed => proto::MemberState::Removed,
                    } as i32,
                })
                .collect(),
            moving: if self.moving.is_some() { moving } else { String::new() },
            move_kind: match (self.moving.is_some(), kind) {
                (false, _) => 0,
                (true, MoveKind::Join) => proto::MoveKind::Join as i32,
                (true, MoveKind::Decommission) => proto::MoveKind::Decommission as i32,
                (true, MoveKind::RemoveNode) => proto::MoveKind::RemoveNode as i32,
            },
        }
    }

    /// From the wire or disk, every field checked (and the rings it implies built).
    pub fn from_proto(p: proto::ClusterMetadata) -> Result<Metadata> {
        let bad = |why: String| Error::InvalidRequest(format!("cluster metadata of epoch {}: {why}", p.epoch));
        let partitioner = Partitioner::from_name(&p.partitioner).ok_or_else(|| bad(format!("unknown partitioner {:?}", p.partitioner)))?;
        if p.epoch == 0 || p.rf == 0 || p.members.is_empty() || p.members.len() > KEYS {
            return Err(bad("epoch, RF and the number of members must be at least 1 (at most 256 members)".into()));
        }
        // Bounded so that building the rings stays cheap whatever a peer sends
        // (each token's replica walk crosses at most RF members' tokens).
        if p.rf as usize > MAX_RF || p.rf as usize > p.members.len() {
            return Err(bad(format!("RF {} is above the number of members or {MAX_RF}", p.rf)));
        }
        let tokens: usize = p.members.iter().map(|m| m.tokens.len() + m.pending_tokens.len()).sum();
        if tokens > MAX_TOKENS || p.members.iter().any(|m| m.tokens.len() + m.pending_tokens.len() > MAX_MEMBER_TOKENS) {
            return Err(bad(format!("{tokens} tokens in all, or a member with more than {MAX_MEMBER_TOKENS}; at most {MAX_TOKENS}")));
        }
        let mut members: Vec<Member> = Vec::with_capacity(p.members.len());
        for r in p.members {
            let port = u16::try_from(r.port).ok().filter(|&p| p != 0).ok_or_else(|| bad(format!("{} has port {}", r.name, r.port)))?;
            if r.name.is_empty() || r.name.len() > 255 || r.host.is_empty() || r.host.len() > 255 {
                return Err(bad("a member's name and host are 1 to 255 bytes".into()));
            }
            let state = match proto::MemberState::try_from(r.state) {
                Ok(proto::MemberState::Normal) => NodeState::Normal,
                Ok(proto::MemberState::Joining) => NodeState::Joining,
                Ok(proto::MemberState::Leaving) => NodeState::Leaving,
                Ok(proto::MemberState::Removed) => NodeState::Removed,
                _ => return Err(bad(format!("{} has no state", r.name))),
            };
            if r.tokens.len() > 4096 {
                return Err(bad(format!("{} has {} tokens", r.name, r.tokens.len())));
            }
            let info = NodeInfo { id: node_id(&r.name), name: r.name, host: r.host, port };
            if members.iter().any(|m| m.info.name == info.name || m.info.id == info.id) {
                return Err(bad(format!("{} is listed twice", info.name)));
            }
            if r.pending_tokens.len() > 4096 {
                return Err(bad(format!("{} takes over {} tokens", info.name, r.pending_tokens.len())));
            }
            members.push(Member { info, tokens: r.tokens, pending: r.pending_tokens, state });
        }
        let moving = if p.moving.is_empty() {
            None
        } else {
            let m = members.iter().find(|m| m.info.name == p.moving).ok_or_else(|| bad(format!("moving {} is not a member", p.moving)))?;
            let kind = match proto::MoveKind::try_from(p.move_kind) {
                Ok(proto::MoveKind::Join) if m.state == NodeState::Joining => MoveKind::Join,
                Ok(proto::MoveKind::Decommission) if m.state == NodeState::Leaving => MoveKind::Decommission,
                Ok(proto::MoveKind::RemoveNode) if m.state == NodeState::Leaving => MoveKind::RemoveNode,
                _ => return Err(bad(format!("{} is {} with movement {}", m.info.name, m.state, p.move_kind))),
            };
            Some((m.info.id, kind))
        };
        let md = Metadata {
            epoch: p.epoch,
            cluster_id: p.cluster_id,
            partitioner,
            rf: p.rf as usize,
            vnodes: (p.vnodes as usize).clamp(1, 4096),
            members,
            moving,
        };
        for m in &md.members {
            md.check_tokens_unique(m)?;
        }
        md.read_ring()?;
        md.write_ring()?;
        Ok(md)
    }

    fn check_tokens_unique(&self, m: &Member) -> Result<()> {
        if self.partitioner == Partitioner::ByteOrdered && (m.tokens.len() > 1 || m.tokens.iter().any(|&t| !(0..KEYS as i64).contains(&t)))
        {
            return Err(Error::InvalidRequest(format!("{}: a byte-ordered member owns one range, ending at a key 0 to 255", m.info.name)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::file::parse_cluster_spec;
    use crate::cluster::key::Key;

    /// `covers` agrees with `in_range` at every token where membership can
    /// change (the span's ends and the stretch's own edges), for stretches
    /// at, around and across slot boundaries, wrapping and not.
    #[test]
    fn a_stretch_covers_a_slot_exactly_when_every_token_of_it_is_in_the_stretch() {
        use crate::cluster::token::slot_span;
        let mut edges = vec![i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
        for s in [0u8, 1, 127, 128, 200, 255] {
            let (a, b) = slot_span(s);
            assert_eq!((crate::cluster::token::slot(a), crate::cluster::token::slot(b)), (s, s));
            assert!(s == 255 || crate::cluster::token::slot(b + 1) == s + 1);
            edges.extend([a.wrapping_sub(1), a, a.wrapping_add(1), b.wrapping_sub(1), b, b.wrapping_add(1)]);
        }
        let mut both = 0;
        for &lo in &edges {
            for &hi in &edges {
                for s in [0u8, 1, 127, 128, 200, 255] {
                    let (a, b) = slot_span(s);
                    let probes = [a, b, lo, lo.wrapping_add(1), hi, hi.wrapping_add(1)];
                    let every = probes.iter().filter(|&&t| a <= t && t <= b).all(|&t| in_range(lo, hi, t));
                    assert_eq!(covers(lo, hi, a, b), every, "({lo}, {hi}] over slot {s}");
                    both += usize::from(every);
                }
            }
        }
        assert!(both > 100, "the cases cover and do not cover: {both}");
    }

    /// `covered` agrees with a check of every token where the union of the
    /// stretches can start or stop holding tokens, for one to four
    /// stretches drawn from the edges of a few slots (adjacent, overlapping,
    /// wrapping, gapped).
    #[test]
    fn stretches_together_cover_a_slot_exactly_when_every_token_of_it_is_in_one() {
        use crate::cluster::token::slot_span;
        let slots = [0u8, 1, 2, 128, 254, 255];
        let mut edges = vec![i64::MIN, -1, 0, i64::MAX];
        for s in slots {
            let (a, b) = slot_span(s);
            edges.extend([a.wrapping_sub(1), a, a + (b - a) / 2, b.wrapping_sub(1), b]);
        }
        let mut seed = 11u64;
        let (mut yes, mut no) = (0, 0);
        for _ in 0..20_000 {
            let n = 1 + (crate::rand::splitmix64(&mut seed) % 4) as usize;
            let mut pick = || edges[(crate::rand::splitmix64(&mut seed) % edges.len() as u64) as usize];
            let ranges: Vec<(i64, i64)> = (0..n).map(|_| (pick(), pick())).collect();
            let s = slots[(crate::rand::splitmix64(&mut seed) % slots.len() as u64) as usize];
            let (a, b) = slot_span(s);
            let mut probes = vec![a, b];
            for &(lo, hi) in &ranges {
                probes.extend([lo, lo.wrapping_add(1), hi, hi.wrapping_add(1)]);
            }
            let every = probes.iter().filter(|&&t| a <= t && t <= b).all(|&t| ranges.iter().any(|&(lo, hi)| in_range(lo, hi, t)));
            assert_eq!(covered(&ranges, a, b), every, "{ranges:?} over slot {s}");
            if every { yes += 1 } else { no += 1 }
        }
        assert!(yes > 1000 && no > 1000, "both outcomes drawn: {yes} covered, {no} not");
    }

    fn spec(text: &str) -> ClusterSpec {
        parse_cluster_spec(text, "test").unwrap()
    }

    const FOUR: &str = "r0 127.0.0.1 9000\nr1 127.0.0.1 9001\nr2 127.0.0.1 9002\nr3 127.0.0.1 9003\n";

    fn info(name: &str, port: u16) -> NodeInfo {
        NodeInfo { id: node_id(name), name: name.into(), host: "127.0.0.1".into(), port }
    }

    fn names(ring: &Ring, key: &[u8]) -> Vec<String> {
        ring.replicas(key).iter().map(|&id| ring.name(id)).collect()
    }

    fn shares(ring: &Ring) -> Vec<f64> {
        (0..ring.len()).map(|i| ring.share(i)).collect()
    }

    #[test]
    fn the_first_epoch_is_the_cluster_file() {
        let m = Metadata::initial(&spec(FOUR), 3).unwrap();
        assert_eq!((m.epoch, m.rf, m.members.len()), (1, 3, 4));
        let ring = m.read_ring().unwrap();
        let seed = Ring::from_spec(&spec(FOUR), 3, 1).unwrap();
        for k in 0..=255u8 {
            let key = Key::byte(k);
            assert_eq!(ring.replicas(key.as_bytes()), seed.replicas(key.as_bytes()), "key {k}: the seed's table");
        }
        assert_eq!(m.write_ring().unwrap().fingerprint(), ring.fingerprint(), "no movement: one ring");
        let mm = Metadata::initial(&spec(&format!("partitioner murmur3\n{FOUR}")), 3).unwrap();
        assert!(mm.members.iter().all(|m| m.tokens.len() == DEFAULT_VNODES));
        assert_ne!(m.cluster_id, mm.cluster_id);
        assert_eq!(Metadata::from_proto(mm.to_proto()).unwrap(), mm);
    }

    /// A byte-ordered join splits the largest range: reads stay on the old
    /// owners until it finishes; the pending replica takes writes meanwhile.
    #[test]
    fn a_byte_ordered_join_splits_the_largest_range() {
        let m1 = Metadata::initial(&spec(FOUR), 3).unwrap();
        let m2 = m1.begin_join(info("r4", 9004), None, false).unwrap();
        assert_eq!(m2.epoch, 2);
        let new = m2.named("r4").unwrap();
        assert_eq!((new.state, new.tokens.clone()), (NodeState::Joining, vec![31]), "the first half of 0-63");
        assert_eq!(m2.members.iter().map(|m| m.info.name.as_str()).collect::<Vec<_>>(), ["r4", "r0", "r1", "r2", "r3"]);
        let (read, write) = (m2.read_ring().unwrap(), m2.write_ring().unwrap());
        assert_eq!(names(&read, b"10"), ["r0", "r1", "r2"], "reads: the old owners");
        assert_eq!(names(&write, b"10"), ["r4", "r0", "r1"], "writes also reach r4");
        assert_eq!(names(&write, b"40"), ["r0", "r1", "r2"]);
        assert_eq!(names(&write, b"250"), ["r3", "r4", "r0"], "r4 is a third replica of the range before it");
        assert!(m2.begin_join(info("r5", 9005), None, false).unwrap_err().to_string().contains("join of r4 is under way"));
        let m3 = m2.finish().unwrap();
        assert_eq!(m3.named("r4").unwrap().state, NodeState::Normal);
        assert_eq!(names(&m3.read_ring().unwrap(), b"10"), ["r4", "r0", "r1"]);
        assert_eq!(m3.read_ring().unwrap().range(0), Some((0, 31)));
        assert_eq!(m3.read_ring().unwrap().range(1), Some((32, 63)));
        assert_eq!(Metadata::from_proto(m3.to_proto()).unwrap(), m3);
    }

    #[test]
    fn a_murmur3_join_restores_balance_and_a_proxy_owns_nothing() {
        let m1 = Metadata::initial(&spec(&format!("partitioner murmur3\n{FOUR}")), 3).unwrap();
        let m3 = m1.begin_join(info("r4", 9004), None, false).unwrap().finish().unwrap();
        assert_eq!(m3.named("r4").unwrap().tokens.len(), DEFAULT_VNODES);
        let ring = m3.read_ring().unwrap();
        let mean = 3.0 / 5.0;
        for (i, s) in shares(&ring).iter().enumerate() {
            assert!((s / mean - 1.0).abs() < 0.10, "node {i} holds {s:.3} against {mean:.3}");
        }
        let m5 = m3.begin_join(info("proxy", 9009), None, true).unwrap().finish().unwrap();
        let ring = m5.read_ring().unwrap();
        let p = ring.position(node_id("proxy")).unwrap();
        assert_eq!(ring.share(p), 0.0, "a proxy holds nothing");
        assert!(m5.voters().contains(&node_id("proxy")), "but it votes");
        assert_eq!(Metadata::from_proto(m5.to_proto()).unwrap(), m5);
    }

    #[test]
    fn a_leave_hands_the_range_to_the_next_owners_and_keeps_rf_unless_forced() {
        let m1 = Metadata::initial(&spec(FOUR), 3).unwrap();
        let r1 = node_id("r1");
        let m2 = m1.begin_leave(r1, MoveKind::Decommission, false).unwrap();
        assert_eq!(m2.moving, Some((r1, MoveKind::Decommission)));
        assert_eq!(names(&m2.read_ring().unwrap(), b"70"), ["r1", "r2", "r3"], "r1 still serves reads");
        assert_eq!(names(&m2.write_ring().unwrap(), b"70"), ["r2", "r3", "r0"], "r0 is pending for 64-127");
        let m3 = m2.finish().unwrap();
        assert_eq!(m3.named("r1").unwrap().state, NodeState::Removed);
        assert!(!m3.voters().contains(&r1));
        assert_eq!(names(&m3.read_ring().unwrap(), b"70"), ["r2", "r3", "r0"]);
        let err = m3.begin_leave(node_id("r2"), MoveKind::RemoveNode, false).unwrap_err().to_string();
        assert!(err.contains("would leave 2 members owning data, fewer than RF 3"), "{err}");
        let forced = m3.begin_leave(node_id("r2"), MoveKind::RemoveNode, true).unwrap().finish().unwrap();
        assert_eq!(names(&forced.read_ring().unwrap(), b"70"), ["r3", "r0"], "two copies left, as forced");
        assert!(forced.begin_join(info("r1", 9001), None, false).is_ok(), "a removed name may join again");
    }

    /// A member leaving a murmur3 ring hands its tokens to the others so the
    /// shares stay within 10 % of the mean (its successors do not take it all).
    #[test]
    fn a_murmur3_leave_keeps_the_ring_balanced() {
        for n in 4..=9 {
            let text: String = (0..n).map(|i| format!("r{i} 127.0.0.1 {}\n", 9000 + i)).collect();
            let m1 = Metadata::initial(&spec(&format!("partitioner murmur3\n{text}")), 3).unwrap();
            let m2 = m1.begin_leave(node_id("r1"), MoveKind::Decommission, false).unwrap();
            let given: usize = m2.members.iter().map(|m| m.pending.len()).sum();
            assert_eq!(given, DEFAULT_VNODES, "{n} nodes: every token of r1 has a taker");
            assert_eq!(Metadata::from_proto(m2.to_proto()).unwrap(), m2);
            let m3 = m2.finish().unwrap();
            let ring = m3.read_ring().unwrap();
            let mean = 3.0 / (n - 1) as f64;
            for i in 0..ring.len() {
                let s = ring.share(i);
                assert!((s / mean - 1.0).abs() < 0.10, "{n} nodes less r1: {} holds {s:.3} against {mean:.3}", ring.nodes()[i].name);
            }
            // Writes during the leave reach the takers: the write ring is the final one.
            assert_eq!(m2.write_ring().unwrap().sorted_tokens(), ring.sorted_tokens());
        }
    }

    #[test]
    fn an_abandoned_join_leaves_the_ring_as_it_was() {
        let m1 = Metadata::initial(&spec(FOUR), 3).unwrap();
        let m2 = m1.begin_join(info("r4", 9004), None, false).unwrap();
        let m3 = m2.abort_join(node_id("r4")).unwrap();
        assert_eq!((m3.epoch, m3.moving, m3.members.clone()), (3, None, m1.members.clone()));
        assert!(m3.begin_join(info("r5", 9005), None, false).is_ok(), "the next change may start");
        assert!(m1.abort_join(node_id("r1")).is_err());
    }

    #[test]
    fn bad_changes_and_records_are_refused() {
        let m1 = Metadata::initial(&spec(FOUR), 3).unwrap();
        assert!(m1.begin_join(info("r2", 9100), None, false).unwrap_err().to_string().contains("already a member"));
        assert!(m1.begin_join(info("x", 9002), None, false).unwrap_err().to_string().contains("already has the address"));
        assert!(m1.begin_join(info("x", 9100), Some(vec![63]), false).unwrap_err().to_string().contains("belongs to r0"));
        assert!(m1.finish().unwrap_err().to_string().contains("no movement"));
        let mut p = m1.to_proto();
        p.partitioner = "random".into();
        assert!(Metadata::from_proto(p).unwrap_err().to_string().contains("unknown partitioner"));
        let mut p = m1.to_proto();
        p.members[1].name = "r0".into();
        assert!(Metadata::from_proto(p).unwrap_err().to_string().contains("listed twice"));
        let mut p = m1.to_proto();
        p.members[0].tokens = vec![300];
        assert!(Metadata::from_proto(p).is_err());
        let mut p = m1.to_proto();
        p.moving = "r0".into();
        p.move_kind = proto::MoveKind::Join as i32;
        assert!(Metadata::from_proto(p).unwrap_err().to_string().contains("NORMAL with movement"));
    }
}
