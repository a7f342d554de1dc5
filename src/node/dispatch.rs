//! A client's typed request to the role that serves it, and the handshake
//! that opens a peer link.

use std::sync::Arc;

use crate::cluster::consistency::Consistency;
use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::error::{Error, Result};
use crate::message::{ClientRequest, Reply};
use crate::node::coordinate::Later;
use crate::node::serial::SerialDone;
use crate::node::{Answered, Handled, Node};
use crate::paxos::Op;
use crate::proto;

impl Node {
    /// Answers a client request (this node coordinates). With `later` (the
    /// client's connection and the request's token), a request whose answer
    /// must come from other replicas may be answered by its call instead
    /// ([`Answered::Later`]; see [`crate::net::conn`]). Fault requests belong to
    /// the network layer, which owns the faults, and are refused here.
    pub fn handle_client(self: &Arc<Self>, req: ClientRequest, later: Later<'_>) -> Answered<Handled> {
        match self.client_request(req, later) {
            Ok(r) => r,
            Err(e) => Answered::Now(Handled::of(Reply::Error(e))),
        }
    }

    fn client_request(self: &Arc<Self>, req: ClientRequest, later: Later<'_>) -> Result<Answered<Handled>> {
        let reply = match req {
            ClientRequest::Ping => Reply::Pong(self.cfg.name.clone()),
            ClientRequest::Get { key, level: Consistency::Serial } => return self.serial_request(key, Op::Read, later),
            ClientRequest::Put { key, value, level: Consistency::Serial, condition } => {
                let teach = self.write_lesson([(&key, Some(&value[..]))]);
                let op = Op::of(Some(value.into_boxed_slice()), condition);
                return Node::teaching(teach, later, |later| self.serial_request(key, op, later));
            }
            ClientRequest::Delete { key, level: Consistency::Serial, condition } => {
                let teach = self.write_lesson([(&key, None)]);
                return Node::teaching(teach, later, |later| self.serial_request(key, Op::of(None, condition), later));
            }
            ClientRequest::Put { condition: Some(_), .. } | ClientRequest::Delete { condition: Some(_), .. } => {
                return Err(Error::Internal("a conditional write below SERIAL passed parsing".into()));
            }
            ClientRequest::Get { key, level } => {
                let teach = match self.cached_read(&key, level) {
                    Ok(found) => return Ok(Answered::Now(Handled::of(Reply::Read(found)))),
                    Err(teach) => teach,
                };
                return Node::teaching(teach, later, |later| {
                    Ok(match self.read(key, level, later)? {
                        Answered::Now((found, after)) => Answered::Now(Handled { reply: Reply::Read(found), after }),
                        Answered::Later(u) => Answered::Later(u),
                    })
                });
            }
            ClientRequest::Put { key, value, level, condition: None } => {
                let teach = self.write_lesson([(&key, Some(&value[..]))]);
                return Node::teaching(teach, later, |later| self.write_request(key, Some(value), level, later));
            }
            ClientRequest::Delete { key, level, condition: None } => {
                let teach = self.write_lesson([(&key, None)]);
                return Node::teaching(teach, later, |later| self.write_request(key, None, level, later));
            }
            ClientRequest::Status => Reply::Status(self.status()),
            ClientRequest::Inspect { key } => Reply::Inspect(self.inspect(&key)),
            ClientRequest::Display { max_value_len, max_keys } => Reply::Display(self.display(max_value_len, max_keys)),
            ClientRequest::Token { key } => Reply::Token(self.token(&key)),
            ClientRequest::Scan { cursor, count } => Reply::Scan(self.scan(cursor, count)?),
            ClientRequest::Repair { start } => Reply::Repair(self.repair(start)),
            ClientRequest::Join { info, proxy, cluster_id } => {
                self.check_cluster(cluster_id, "join")?;
                Reply::Joined(Box::new(self.join_member(info, proxy)?))
            }
            ClientRequest::Membership(m) => Reply::Membership(self.membership_request(m)?),
            ClientRequest::Txn(spec) => {
                let teach = self.write_lesson(spec.writes.iter().map(|(k, v)| (k, v.as_deref())));
                return Node::teaching(teach, later, |later| self.txn_request(spec, later));
            }
            ClientRequest::MGet { keys } => return self.mget_request(keys, later),
            ClientRequest::Fault(_) => return Err(Error::Internal("fault requests are served by the network layer".into())),
        };
        Ok(Answered::Now(Handled::of(reply)))
    }

    /// A SERIAL operation: answered by the operation itself with `later`
    /// (the worker goes back to its connection), otherwise waited for.
    fn serial_request(self: &Arc<Self>, key: Key, op: Op, later: Later<'_>) -> Result<Answered<Handled>> {
        match later {
            Some((responder, token)) => Ok(Answered::Later(self.serial_later(key, op, responder, token)?)),
            None => Ok(Answered::Now(Handled::of(SerialDone::reply(self.serial(key, op))))),
        }
    }

    fn write_request(
        self: &Arc<Self>,
        key: Key,
        value: Option<Vec<u8>>,
        level: Consistency,
        later: Later<'_>,
    ) -> Result<Answered<Handled>> {
        Ok(match self.write(key, value, level, later)? {
            Answered::Now((ts, acks)) => Answered::Now(Handled::of(Reply::Write { ts, acks })),
            Answered::Later(u) => Answered::Later(u),
        })
    }

    /// Checks a peer's handshake: the same cluster, a member's name that is
    /// not ours; returns the peer's id. Epochs may differ: the one behind
    /// catches up (a peer this node does not know yet is refused until it has).
    pub fn check_hello(&self, h: &proto::PeerHello) -> Result<NodeId> {
        let view = self.view();
        let ring = view.ring.clone();
        if h.cluster_id != view.meta.cluster_id {
            let mine = ring.describe();
            let tokens = if h.ring_description == mine { " (the same nodes, but their tokens differ)" } else { "" };
            return Err(Error::RingMismatch(format!(
                "{} has ring [{}] but {} has [{mine}]{tokens}",
                h.name, h.ring_description, self.cfg.name
            )));
        }
        match ring.id_of(&h.name) {
            Some(id) if id != self.me => {
                self.saw_epoch(h.epoch);
                Ok(id)
            }
            Some(_) => Err(Error::RingMismatch(format!("peer claims to be {}, which is this replica", h.name))),
            None if h.epoch > view.epoch() => {
                self.saw_epoch(h.epoch);
                Err(Error::RingMismatch(format!(
                    "{} is not a member at epoch {}; it speaks from epoch {}, so {} is catching up",
                    h.name,
                    view.epoch(),
                    h.epoch,
                    self.cfg.name
                )))
            }
            None => Err(Error::RingMismatch(format!("{} is not in the ring", h.name))),
        }
    }

    /// Refuses a membership request that does not name this cluster (its id
    /// as `status` reports it): a stray or mangled frame never moves data.
    pub fn check_cluster(&self, cluster_id: u64, what: &str) -> Result<()> {
        let mine = self.view().meta.cluster_id;
        if cluster_id != mine {
            return Err(Error::RingMismatch(format!(
                "the {what} request names cluster {cluster_id:016x}, but this is cluster {mine:016x} (status reports the id)"
            )));
        }
        Ok(())
    }

    /// Our handshake.
    pub fn hello(&self) -> proto::PeerHello {
        let ring = self.ring();
        proto::PeerHello {
            name: self.cfg.name.clone(),
            ring_fingerprint: ring.fingerprint(),
            ring_description: ring.describe(),
            epoch: ring.epoch(),
            cluster_id: self.view().meta.cluster_id,
        }
    }
}
