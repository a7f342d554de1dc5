//! The gather machine: one question to several replicas, every answer kept
//! (inspect, display, hint replay).

use crate::cluster::ring::NodeId;
use crate::coordinator::call::Machine;
use crate::coordinator::command::{Command, Outgoing, Route};
use crate::message::{PeerRequest, PeerResult};

/// Collects one reply per slot, whatever they are.
pub struct GatherMachine {
    targets: Vec<NodeId>,
    msg: PeerRequest,
    results: Vec<Option<PeerResult>>,
}

impl GatherMachine {
    /// Asks each of `targets` `msg`.
    pub fn new(targets: Vec<NodeId>, msg: PeerRequest) -> Self {
        GatherMachine { results: (0..targets.len()).map(|_| None).collect(), targets, msg }
    }

    /// Takes the results; `None` for slots that did not answer.
    pub fn take(&mut self) -> Vec<Option<PeerResult>> {
        std::mem::take(&mut self.results)
    }
}

impl Machine for GatherMachine {
    fn start(&mut self) -> Vec<Outgoing> {
        self.targets.iter().enumerate().map(|(slot, &to)| Outgoing { slot, to, msg: self.msg.clone(), route: Route::Direct }).collect()
    }

    fn on_reply(&mut self, slot: usize, result: PeerResult, _out: &mut Vec<Command>) {
        if let Some(r) = self.results.get_mut(slot).filter(|r| r.is_none()) {
            *r = Some(result);
        }
    }

    fn settled(&self) -> bool {
        self.results.iter().all(Option::is_some)
    }

    fn complete(&self) -> bool {
        self.settled()
    }

    fn held_bytes(&self) -> usize {
        0
    }
}
