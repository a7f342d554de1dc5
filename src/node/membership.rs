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

use prost::Message as _;

use crate::cluster::metadata::Metadata;
use crate::message::paxos::{ballot_to_proto, state_from_proto, state_to_proto};
use crate::paxos::Ballot;
use crate::paxos::acceptor::KeyState;
use crate::cluster::ring::Ring;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::proto;

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

    fn to_proto(&self) -> proto::MetadataFile {
        proto::MetadataFile {
            metadata: Some(self.meta.to_proto()),
            committed: Some(ballot_to_proto(self.committed)),
            acceptor: Some(state_to_proto(&crate::cluster::key::Key::trusted(Vec::new()), &self.acceptor)),
        }
    }

    fn from_proto(p: proto::MetadataFile) -> Result<Stored> {
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

    /// The read ring of the view this node holds now.
    pub fn ring(&self) -> Arc<Ring> {
        self.view.read().ring.clone()
    }
}
