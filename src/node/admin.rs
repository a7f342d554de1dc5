//! `status`, `inspect` and `display`: what a coordinator knows and what each replica holds.

use std::sync::Arc;

use crate::cluster::ring::NodeId;
use crate::coordinator::call::Call;
use crate::coordinator::gather::GatherMachine;
use crate::message::{PeerRequest, PeerResponse, PeerResult};
use crate::node::Node;
use crate::proto;

/// Cuts `s` to at most `max` bytes on a character boundary; says whether it cut.
fn truncate(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

impl Node {
    /// Asks each of `targets` the same question; `None` where a target did not answer in time.
    pub fn gather(self: &Arc<Self>, targets: Vec<NodeId>, msg: PeerRequest) -> Vec<Option<PeerResult>> {
        let call = Call::new(GatherMachine::new(targets, msg), self.clone(), self.budget.clone(), self.deadline());
        call.start();
        call.wait().take()
    }

    /// Each replica of `key`: its version, or why it could not be asked.
    pub fn inspect(self: &Arc<Self>, key: u8) -> proto::InspectResult {
        let targets = self.ring.replicas(key).to_vec();
        let results = self.gather(targets.clone(), PeerRequest::Read { key });
        let replicas = targets
            .iter()
            .zip(results)
            .map(|(&t, r)| {
                let name = self.ring.name(t);
                match r {
                    Some(Ok(PeerResponse::Read(v))) => {
                        proto::InspectEntry { name, reachable: true, version: v.map(|v| v.into_proto()), error: String::new() }
                    }
                    Some(Ok(other)) => proto::InspectEntry { name, error: format!("unexpected reply {other:?}"), ..Default::default() },
                    Some(Err(e)) => proto::InspectEntry { name, error: e.message().to_string(), ..Default::default() },
                    None => proto::InspectEntry { name, error: "no reply in time".into(), ..Default::default() },
                }
            })
            .collect();
        proto::InspectResult { key: key as u32, replicas }
    }

    /// What every node holds.
    pub fn display(self: &Arc<Self>, max_value_len: u32) -> proto::DisplayResult {
        let targets: Vec<NodeId> = self.ring.ids().collect();
        let results = self.gather(targets.clone(), PeerRequest::Dump { max_value_len });
        let replicas = targets
            .iter()
            .enumerate()
            .zip(results)
            .map(|((i, &t), r)| {
                let (range_start, range_end) = self.ring.range(i);
                let mut e = proto::ReplicaDumpEntry {
                    name: self.ring.name(t),
                    range_start: range_start as u32,
                    range_end: range_end as u32,
                    ..Default::default()
                };
                match r {
                    Some(Ok(PeerResponse::Dump(d))) => {
                        e.reachable = true;
                        e.cells = d.cells;
                    }
                    Some(Ok(other)) => e.error = format!("unexpected reply {other:?}"),
                    Some(Err(err)) => e.error = err.message().to_string(),
                    None => e.error = "no reply in time".into(),
                }
                e
            })
            .collect();
        proto::DisplayResult { replicas, rf: self.ring.rf() as u32 }
    }

    /// This replica's cells, values cut to `max_value_len` bytes.
    pub fn dump(&self, max_value_len: u32) -> proto::DumpResult {
        let cells = self
            .store
            .snapshot()
            .into_iter()
            .map(|(key, v)| {
                let mut pv = v.into_proto();
                let truncated = truncate(&mut pv.value, max_value_len as usize);
                proto::KeyVersion { key: key as u32, version: Some(pv), truncated }
            })
            .collect();
        proto::DumpResult { cells }
    }

    /// The coordinator's view of the cluster.
    pub fn status(&self) -> proto::StatusResult {
        let replicas = self
            .ring
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (s, e) = self.ring.range(i);
                let is_self = n.id == self.me;
                let storage = if is_self { Some(self.storage_stats()) } else { self.peers.storage(n.id) };
                proto::ReplicaStatus {
                    storage,
                    name: n.name.clone(),
                    address: n.address(),
                    up: self.alive(n.id),
                    range_start: s as u32,
                    range_end: e as u32,
                    hints: self.hints.count(n.id) as u64,
                    is_self,
                }
            })
            .collect();
        proto::StatusResult {
            coordinator: self.cfg.name.clone(),
            rf: self.ring.rf() as u32,
            epoch: self.ring.epoch(),
            mode: self.cfg.mode.to_string(),
            replicas,
        }
    }
}
