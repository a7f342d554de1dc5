//! The Paxos acceptor of a real replica, spoken to over a raw peer link: a
//! promise is durable across `kill -9`, and a client connection may not send
//! Paxos requests.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Cluster, slack};
use prost::Message;
use quorumkv::net::frame::FrameReader;
use quorumkv::proto::{self, request::Body as B, response::Body as R};

fn framed(req: proto::Request) -> Vec<u8> {
    let body = req.encode_to_vec();
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

/// Sends `body` as request `id` on `s` and reads one reply.
fn ask(s: &mut TcpStream, id: u64, body: B) -> proto::Response {
    s.write_all(&framed(proto::Request { id, body: Some(body) })).unwrap();
    let mut r = FrameReader::new(s.try_clone().unwrap(), 1 << 20);
    let frame = r.read_frame().unwrap().expect("a reply");
    let resp = proto::Response::decode(frame).unwrap();
    assert_eq!(resp.id, id);
    resp
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(slack(Duration::from_secs(10)))).unwrap();
    s
}

/// A replica link to replica `i` of `c`, handshaken as replica `as_name`.
fn peer_link(c: &Cluster, i: usize, as_name: &str) -> TcpStream {
    let spec = quorumkv::cluster::ring::load_cluster_spec(c.file.to_str().unwrap()).unwrap();
    let ring = quorumkv::cluster::ring::Ring::from_spec(&spec, 3, 1).unwrap();
    let hello = proto::PeerHello {
        name: as_name.into(),
        ring_fingerprint: ring.fingerprint(),
        ring_description: ring.describe(),
        epoch: ring.epoch(),
        cluster_id: quorumkv::cluster::metadata::Metadata::from_ring(&ring, 16).cluster_id,
    };
    let mut s = connect(c.replicas[i].port);
    match ask(&mut s, 1, B::Hello(hello)).body {
        Some(R::Hello(_)) => s,
        other => panic!("handshake refused: {other:?}"),
    }
}

fn prepare(key: &str, micros: u64) -> B {
    B::PaxosPrepare(proto::PaxosPrepare { key: key.into(), ballot: Some(proto::Ballot { micros, node: 1 }), cluster: false, epoch: 0 })
}

#[test]
fn a_promise_survives_kill_9_and_a_lower_ballot_is_refused_after_it() {
    let mut c = Cluster::start(3, &["--fsync", "always"]);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
    let mut link = peer_link(&c, 0, "r1");
    match ask(&mut link, 2, prepare("7", now)).body {
        Some(R::PaxosPromise(p)) => assert_eq!(p.ballot, Some(proto::Ballot { micros: now, node: 1 })),
        other => panic!("expected a promise, got {other:?}"),
    }
    drop(link);
    // SIGKILL: nothing but what the log holds survives.
    c.restart(0);
    let mut link = peer_link(&c, 0, "r1");
    match ask(&mut link, 3, prepare("7", now - 1_000)).body {
        Some(R::PaxosRejected(r)) => {
            assert_eq!(r.promised, Some(proto::Ballot { micros: now, node: 1 }), "the promise came back after kill -9")
        }
        other => panic!("expected the lower ballot refused, got {other:?}\n{}", c.logs()),
    }
    match ask(&mut link, 4, prepare("7", now + 1_000)).body {
        Some(R::PaxosPromise(_)) => {}
        other => panic!("expected a higher ballot promised, got {other:?}"),
    }
    // Paxos requests are for replica links only.
    let mut client = connect(c.replicas[0].port);
    match ask(&mut client, 5, prepare("7", now + 2_000)).body {
        Some(R::Error(e)) => assert!(e.message.contains("replica-to-replica request on a client connection"), "{e:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
