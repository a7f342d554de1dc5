//! The RESP2 client the bench talks to redis and to quorumkv's RESP port with
//! ([`quorumkv::resp::client`]).

pub(crate) use quorumkv::resp::Reply;
pub(crate) use quorumkv::resp::client::Resp;
