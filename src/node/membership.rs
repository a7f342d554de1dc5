//! Membership in a replica: the metadata it holds (its epoch), the rings it
//! implies, and the metadata file of its data folder.
//!
//! A node holds a [`View`] behind a lock: the metadata of the newest epoch it
//! knows and the rings built from it. Requests take the view once
//! ([`Node::ring`], [`Node::view`]) and keep using that snapshot, so one
//! request never mixes two epochs; a new epoch replaces the whole view.
//!
//! The metadata is kept in `cluster.meta` in the data folder, replaced
//! atomically (written to a temporary file, synced, renamed, the folder
//! synced): a restarted replica takes its epoch from there, and the cluster
//! file only seeds the first epoch.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;

use crate::cluster::key::Key;
use crate::cluster::metadata::Metadata;
use crate::cluster::ring::NodeId;
use crate::cluster::ring::Ring;
use crate::coordinator::call::{Call, Machine};
use crate::coordinator::command::{Command, Outgoing, Route};
use crate::error::{Error, Result};
use crate::message::paxos::{ballot_to_proto, meta_key, state_from_proto, state_to_proto};
use crate::message::{PeerRequest, PeerResponse, PeerResult};
use crate::node::Node;
use crate::paxos::acceptor::{Acceptor, KeyState};
use crate::paxos::proposer::{Action, Proposer};
use crate::paxos::{Ballot, Expect, Op, Outcome, PaxosError, Request as PaxosRequest};
use crate::proto;
use crate::storage::cell::Version;

/// The file holding a replica's metadata, in its data folder.
pub const METADATA_FILE: &str = "cluster.meta";

/// The cluster as one node sees it at one epoch.
#[derive(Debug)]
pub struct View {
    /// The metadata.
    pub meta: Metadata,
    /// The read ring: who holds the data now.
    pub ring: Arc<Ring>,
    /// The write ring while a movement is under way (who will hold it); `None` otherwise.
    pub writes: Option<Arc<Ring>>,
}

impl View {
    /// The view of `meta`.
    pub fn of(meta: Metadata) -> Result<View> {
        let ring = Arc::new(meta.read_ring()?);
        let writes = match meta.moving {
            Some(_) => Some(Arc::new(meta.write_ring()?)),
            None => None,
        };
        Ok(View { meta, ring, writes })
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.meta.epoch
    }

    /// The replicas a write of `key` goes to at this epoch (see [`Node::write_targets`]).
    pub fn write_targets(&self, key: &Key) -> (Arc<[NodeId]>, usize) {
        let targets = self.ring.replica_set(key.as_bytes());
        let Some(w) = &self.writes else { return (targets, 0) };
        let pending: Vec<NodeId> = w.replicas(key.as_bytes()).iter().copied().filter(|n| !targets.contains(n)).collect();
        if pending.is_empty() {
            return (targets, 0);
        }
        let n = pending.len();
        (targets.iter().copied().chain(pending).collect::<Vec<_>>().into(), n)
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(METADATA_FILE)
}

/// What `cluster.meta` holds: the metadata, the ballot of the commit that
/// made its epoch, and this replica's acceptor state for the next epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The metadata of the newest epoch this replica knows.
    pub meta: Metadata,
    /// The ballot its epoch was committed with ([`Ballot::ZERO`] for the first).
    pub committed: Ballot,
    /// What the acceptor promised and accepted for the next epoch.
    pub acceptor: KeyState,
}

impl Stored {
    /// The first epoch, nothing promised.
    pub fn first(meta: Metadata) -> Stored {
        Stored { meta, committed: Ballot::ZERO, acceptor: KeyState::default() }
    }

    /// The disk and wire form.
    pub fn to_proto(&self) -> proto::MetadataFile {
        proto::MetadataFile {
            metadata: Some(self.meta.to_proto()),
            committed: Some(ballot_to_proto(self.committed)),
            acceptor: Some(state_to_proto(&crate::cluster::key::Key::trusted(Vec::new()), &self.acceptor)),
        }
    }

    /// From the disk or wire form, checked.
    pub fn from_proto(p: proto::MetadataFile) -> Result<Stored> {
        let meta = Metadata::from_proto(p.metadata.ok_or_else(|| Error::Storage("no metadata".into()))?)?;
        let committed = p.committed.map_or(Ballot::ZERO, |b| Ballot(crate::storage::hlc::Timestamp { micros: b.micros, node: b.node }));
        let acceptor = match p.acceptor {
            Some(a) => state_from_proto(proto::PaxosKeyState { key: b"-".to_vec(), ..a })?.1,
            None => KeyState::default(),
        };
        Ok(Stored { meta, committed, acceptor })
    }
}

/// What `dir` stores, if anything (a file that does not decode is an error).
pub fn load(dir: &Path) -> Result<Option<Stored>> {
    let p = path(dir);
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Storage(format!("cannot read {}: {e}", p.display()))),
    };
    let decoded = proto::MetadataFile::decode(&bytes[..]).map_err(|e| Error::Storage(format!("{} is damaged: {e}", p.display())))?;
    Stored::from_proto(decoded).map(Some).map_err(|e| Error::Storage(format!("{}: {e}", p.display())))
}

/// Stores `stored` in `dir`, replacing what was there atomically and durably.
pub fn store(dir: &Path, stored: &Stored) -> Result<()> {
    let p = path(dir);
    let tmp = dir.join(format!("{METADATA_FILE}.tmp"));
    let io = |what: &str, e: std::io::Error| Error::Storage(format!("cannot {what} {}: {e}", p.display()));
    let mut f = fs::File::create(&tmp).map_err(|e| io("write", e))?;
    f.write_all(&stored.to_proto().encode_to_vec()).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    drop(f);
    fs::rename(&tmp, &p).map_err(|e| io("replace", e))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("sync the folder of", e))?;
    Ok(())
}

/// What a replica starts with: its data folder's metadata (which must be of
/// the cluster the file describes), or the file's first epoch, stored then.
pub fn at_start(dir: Option<&Path>, initial: Metadata) -> Result<Stored> {
    let Some(dir) = dir else { return Ok(Stored::first(initial)) };
    fs::create_dir_all(dir).map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
    // A folder of another partitioner is refused first, with what to do about it.
    crate::storage::wal::check_partitioner(dir, initial.partitioner)?;
    match load(dir)? {
        Some(stored) if stored.meta.cluster_id != initial.cluster_id => Err(Error::Config(format!(
            "{} belongs to another cluster: its first epoch was not the one the cluster file describes (it is at {}; the file describes {}); \
             point --data-dir at an empty folder, or start with the cluster file the folder was first started with",
            path(dir).display(),
            stored.meta.summary(),
            initial.summary()
        ))),
        Some(stored) => Ok(stored),
        None => {
            let first = Stored::first(initial);
            store(dir, &first)?;
            Ok(first)
        }
    }
}

impl Node {
    /// The view this node holds now.
    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// Notes that a peer holds epoch `epoch`: if it is newer than this
    /// node's, the membership thread catches up.
    pub fn saw_epoch(&self, epoch: u64) {
        self.newest_seen.fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether a peer said it holds a newer epoch than this node (and forgets it).
    pub fn behind(&self) -> bool {
        let seen = self.newest_seen.swap(0, std::sync::atomic::Ordering::AcqRel);
        seen > self.view().epoch()
    }

    /// The epoch of the view this node holds now (without taking the view's lock).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The read ring of the view this node holds now.
    pub fn ring(&self) -> Arc<Ring> {
        self.view.read().ring.clone()
    }
}

/// The metadata register's acceptor in this replica, and the ballot of the
/// commit that made the epoch it holds.
#[derive(Debug)]
pub struct MetaAcceptor {
    acceptor: Acceptor,
    committed: Ballot,
}

impl MetaAcceptor {
    /// The acceptor as `stored` left it.
    pub fn of(stored: &Stored) -> MetaAcceptor {
        let mut acceptor = Acceptor::new();
        if stored.acceptor != KeyState::default() {
            acceptor.load(meta_key(), stored.acceptor.clone());
        }
        MetaAcceptor { acceptor, committed: stored.committed }
    }
}

/// The longest a metadata change waits for a quorum of voters.
pub const META_TIMEOUT: Duration = Duration::from_secs(10);

/// What a round of the metadata Paxos ended with.
#[derive(Debug)]
pub enum MetaStep {
    /// The operation's outcome.
    Answer(std::result::Result<Outcome, PaxosError>),
    /// Contention: start over with a higher ballot after this delay.
    Retry(Duration),
}

/// One round of the metadata Paxos: a [`Proposer`] on the metadata
/// register, driven by replies like the other machines.
#[derive(Debug)]
pub struct MetaRound {
    /// The proposer (taken back out to start over).
    pub proposer: Proposer,
    restart: Option<Ballot>,
    to: Vec<NodeId>,
    out: Vec<Outgoing>,
    step: Option<MetaStep>,
}

impl MetaRound {
    /// A round of `proposer`: its first (or, with `restart`, a new ballot's) prepares.
    pub fn new(proposer: Proposer, restart: Option<Ballot>) -> MetaRound {
        MetaRound { proposer, restart, to: Vec::new(), out: Vec::new(), step: None }
    }

    /// How the round ended (`None`: not yet).
    pub fn take_step(&mut self) -> Option<MetaStep> {
        self.step.take()
    }

    fn send(&mut self, to: NodeId, msg: PaxosRequest) {
        self.out.push(Outgoing { slot: self.to.len(), to, msg: PeerRequest::MetaPaxos(msg), route: Route::Direct });
        self.to.push(to);
    }

    fn act(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send { to, msg } => self.send(to, msg),
                Action::Answer(r) => self.step = Some(MetaStep::Answer(r)),
                Action::RetryAfter(d) => self.step = Some(MetaStep::Retry(d)),
            }
        }
    }

    /// The deadline passed: the proposer's verdict.
    pub fn time_out(&mut self) {
        if self.step.is_none() {
            let actions = self.proposer.on_timeout();
            self.act(actions);
            self.out.clear();
        }
    }
}

impl Machine for MetaRound {
    fn start(&mut self) -> Vec<Outgoing> {
        let sends = match self.restart {
            Some(b) => self.proposer.restart(b),
            None => self.proposer.start(),
        };
        for (to, msg) in sends {
            self.send(to, msg);
        }
        if self.out.is_empty()
            && let Some(r) = self.proposer.outcome()
        {
            self.step = Some(MetaStep::Answer(r.clone()));
        }
        std::mem::take(&mut self.out)
    }

    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>) {
        let Some(&from) = self.to.get(slot) else { return };
        if let Ok(PeerResponse::Paxos(r)) = result {
            let actions = self.proposer.on_reply(from, r);
            self.act(actions);
        }
        out.extend(std::mem::take(&mut self.out).into_iter().map(Command::Send));
    }

    fn settled(&self) -> bool {
        self.step.is_some()
    }

    fn complete(&self) -> bool {
        self.step.is_some()
    }

    fn held_bytes(&self) -> usize {
        0
    }
}

fn encode(meta: &Metadata) -> Box<[u8]> {
    meta.to_proto().encode_to_vec().into_boxed_slice()
}

fn decode(bytes: &[u8]) -> Result<Metadata> {
    Metadata::from_proto(proto::ClusterMetadata::decode(bytes).map_err(|e| Error::Protocol(format!("undecodable cluster metadata: {e}")))?)
}

impl Node {
    /// Serves a metadata-Paxos request with this replica's metadata acceptor;
    /// a commit of a newer epoch (of this cluster) is adopted. Every change
    /// is stored (`cluster.meta`) before the reply.
    pub fn serve_meta_paxos(&self, req: PaxosRequest) -> PeerResult {
        let mut st = self.meta.lock();
        let view = self.view();
        let current = Version { ts: st.committed.0, value: Some(encode(&view.meta)) };
        let before = st.acceptor.state(&meta_key()).cloned();
        let handled = st.acceptor.handle(req, Some(&current));
        let mut adopt = None;
        if let Some(v) = &handled.apply {
            match v.value.as_deref().map(decode) {
                Some(Ok(meta)) if meta.cluster_id == view.meta.cluster_id && meta.epoch > view.meta.epoch => {
                    adopt = Some((meta, Ballot(v.ts)))
                }
                // The same epoch again (this node adopted it when its own change was chosen).
                Some(Ok(meta)) if meta.epoch == view.meta.epoch => {}
                Some(Ok(meta)) => {
                    log::warn!("{}: ignoring a metadata commit of epoch {} (holding {})", self.cfg.name, meta.epoch, view.meta.epoch)
                }
                Some(Err(e)) => log::warn!("{}: ignoring a metadata commit: {e}", self.cfg.name),
                None => {}
            }
        }
        if handled.record.is_some() || adopt.is_some() {
            let stored = Stored {
                meta: adopt.as_ref().map_or_else(|| view.meta.clone(), |(m, _)| m.clone()),
                committed: adopt.as_ref().map_or(st.committed, |&(_, b)| b),
                acceptor: st.acceptor.state(&meta_key()).cloned().unwrap_or_default(),
            };
            if let Some(dir) = &self.cfg.data_dir
                && let Err(e) = store(dir, &stored)
            {
                st.acceptor.reset(&meta_key(), before);
                return Err(e);
            }
        }
        if let Some((meta, ballot)) = adopt {
            st.committed = ballot;
            self.install(meta);
        }
        Ok(PeerResponse::Paxos(handled.reply))
    }

    /// Makes `meta` this node's view (the caller has stored it).
    fn install(&self, meta: Metadata) {
        let epoch = meta.epoch;
        match View::of(meta) {
            Ok(v) => {
                log::info!("{}: now at {}", self.cfg.name, v.meta.summary());
                // A member that joined since this node started can be hinted and batch-read
                // too; one removed for good is not hinted any more.
                self.hints.add_targets(v.ring.nodes().iter().map(|n| (n.id, n.name.clone())));
                self.hints.retain_targets(|id| v.ring.nodes().iter().any(|n| n.id == id));
                self.read_batcher.add(v.ring.ids().filter(|&id| id != self.me));
                let mut view = self.view.write();
                self.epoch.store(v.epoch(), std::sync::atomic::Ordering::Release);
                let old = std::mem::replace(&mut *view, Arc::new(v));
                if let Some(cache) = &self.cache {
                    // This node may hold no copy now of keys it wrote as a
                    // replica (under the view's lock: no read of the new
                    // view finds the cache as it was).
                    cache.view_changed(old.ring.clone(), self.me, || self.clock.now());
                }
            }
            Err(e) => log::error!("{}: cannot use the metadata of epoch {epoch}: {e}", self.cfg.name),
        }
    }

    /// Adopts `meta`, committed with `ballot`, if it is a newer epoch of this
    /// cluster than the one held (a catch-up from a peer, or a change this
    /// node just got chosen): stores it, then installs it. Whether it did.
    pub fn adopt(&self, meta: Metadata, ballot: Ballot) -> Result<bool> {
        let mut st = self.meta.lock();
        let view = self.view();
        if meta.cluster_id != view.meta.cluster_id || meta.epoch <= view.meta.epoch {
            return Ok(false);
        }
        if let Some(dir) = &self.cfg.data_dir {
            let acceptor = st.acceptor.state(&meta_key()).cloned().unwrap_or_default();
            store(dir, &Stored { meta: meta.clone(), committed: ballot.max(st.committed), acceptor })?;
        }
        st.committed = ballot.max(st.committed);
        self.install(meta);
        Ok(true)
    }

    /// A proposer for the change `change` makes to the metadata this node
    /// holds, among the current epoch's voters: the new metadata, and the
    /// proposer (a compare-and-set from the current record to the new one).
    pub fn meta_proposer(&self, change: impl Fn(&Metadata) -> Result<Metadata>) -> Result<(Metadata, Proposer)> {
        let view = self.view();
        let next = change(&view.meta)?;
        let voters = view.meta.voters();
        let live: Vec<NodeId> = voters.iter().copied().filter(|&v| self.alive(v)).collect();
        let op = Op::CompareAndSet { expect: Expect::Equals(encode(&view.meta)), new: Some(encode(&next)) };
        let seed = self.clock.now().micros ^ u64::from(self.me.0);
        Ok((next, Proposer::new(meta_key(), op, &voters, &live, Ballot(self.clock.now()), seed)))
    }

    /// Starts a round of the metadata Paxos (see [`MetaRound`]).
    pub fn start_meta_round(self: &Arc<Self>, proposer: Proposer, restart: Option<Ballot>, deadline: Instant) -> Arc<Call<MetaRound>> {
        let call = Call::new(MetaRound::new(proposer, restart), self.clone(), self.budget.clone(), deadline);
        call.start();
        call
    }

    /// Changes the cluster metadata by consensus: `change` turns the
    /// metadata of the newest epoch this node knows into the next one (or
    /// refuses); the change is proposed to the epoch's voters as a
    /// compare-and-set. If another change won meanwhile, this node catches
    /// up and asks `change` again (which may now refuse). The new metadata
    /// once chosen; an error if refused, unavailable or not decided in time
    /// (then it may or may not have been applied, and the error says so).
    pub fn change_metadata(self: &Arc<Self>, change: impl Fn(&Metadata) -> Result<Metadata>) -> Result<Metadata> {
        let deadline = Instant::now() + META_TIMEOUT;
        let mut caught_up = false;
        loop {
            let before = self.epoch();
            let (next, proposer) = match self.meta_proposer(&change) {
                Ok(p) => p,
                // Refused at the epoch this node holds (say, a movement under
                // way that already ended elsewhere): once more after catching up.
                Err(e) if !caught_up => {
                    caught_up = true;
                    // (The membership thread may have caught up meanwhile: `before` was read first.)
                    self.catch_up();
                    if self.epoch() == before {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut call = self.start_meta_round(proposer, None, deadline);
            let (outcome, ballot) = loop {
                let mut m = call.wait();
                if Instant::now() >= deadline {
                    m.time_out();
                }
                match m.take_step() {
                    Some(MetaStep::Answer(r)) => break (r, m.proposer.proposed()),
                    Some(MetaStep::Retry(d)) => {
                        let proposer = m.proposer.clone();
                        drop(m);
                        std::thread::sleep(d.min(deadline.saturating_duration_since(Instant::now())));
                        let _ = self.clock.observe(proposer.highest_seen().0, self.cfg.max_clock_offset);
                        call = self.start_meta_round(proposer, Some(Ballot(self.clock.now())), deadline);
                    }
                    None => m.time_out(),
                }
            };
            match outcome {
                Ok(Outcome::Applied) => {
                    self.adopt(next.clone(), ballot.unwrap_or(Ballot(self.clock.now())))?;
                    return Ok(next);
                }
                Ok(_) => {
                    // Another change won: learn it, then ask `change` again.
                    if !self.catch_up() {
                        return Err(Error::Unavailable(
                            "the cluster metadata changed meanwhile and no voter could say to what; try again".into(),
                        ));
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::Timeout("the cluster metadata kept changing under this change; it was not applied".into()));
                    }
                }
                Err(PaxosError::Unavailable(m)) => return Err(Error::Unavailable(format!("cannot change the cluster metadata: {m}"))),
                Err(e) => {
                    // Unknown, or not proposed in time: learn what was chosen; if it
                    // is this change, done; otherwise propose again (the
                    // compare-and-set cannot apply twice) until the deadline.
                    self.catch_up();
                    if self.view().meta == next {
                        return Ok(next);
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::Timeout(format!(
                            "the cluster metadata change to epoch {} was not decided in time; it may or may not have been applied ({e})",
                            next.epoch
                        )));
                    }
                }
            }
        }
    }

    /// Asks the live voters for their metadata and adopts the newest, if
    /// newer than this node's. Whether any voter answered.
    pub fn catch_up(self: &Arc<Self>) -> bool {
        self.catch_up_by(self.deadline())
    }

    /// [`catch_up`](Self::catch_up), waiting for the voters' answers until `deadline` at most.
    pub fn catch_up_by(self: &Arc<Self>, deadline: Instant) -> bool {
        let view = self.view();
        let others: Vec<NodeId> = view.meta.voters().into_iter().filter(|&v| v != self.me && self.alive(v)).collect();
        let mut answered = false;
        for r in self.gather_by(others, PeerRequest::Metadata, deadline).into_iter().flatten() {
            if let Ok(PeerResponse::Metadata(stored)) = r {
                answered = true;
                if let Err(e) = self.adopt(stored.meta, stored.committed) {
                    log::warn!("{}: cannot store newer cluster metadata: {e}", self.cfg.name);
                }
            }
        }
        answered
    }

    /// What this replica stores of the metadata (a peer catching up asks for it).
    pub fn stored_metadata(&self) -> Stored {
        let st = self.meta.lock();
        Stored {
            meta: self.view().meta.clone(),
            committed: st.committed,
            acceptor: st.acceptor.state(&meta_key()).cloned().unwrap_or_default(),
        }
    }
}
