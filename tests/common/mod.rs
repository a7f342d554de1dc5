//! Test harness: a cluster of real `replica` processes on free loopback ports.
//!
//! Every replica runs the binary cargo built for this test run (so under
//! `make tsan` it is instrumented too), logs to a file in a fresh temporary
//! folder, and is ended by PID when the cluster is dropped. On drop the logs
//! are scanned: a panic or a ThreadSanitizer report in any replica fails the
//! test. Waits are polls of a condition with a deadline, never bare sleeps.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quorumkv::client::{Client, ToKey};

pub mod nemesis;

/// Path of a binary built by cargo for this test run.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "replica" => PathBuf::from(env!("CARGO_BIN_EXE_replica")),
        "client" => PathBuf::from(env!("CARGO_BIN_EXE_client")),
        "bench" => PathBuf::from(env!("CARGO_BIN_EXE_bench")),
        other => panic!("unknown binary {other}"),
    }
}

/// Whether this run is under ThreadSanitizer (everything is several times slower).
pub fn under_tsan() -> bool {
    std::env::var_os("QUORUMKV_TSAN").is_some()
}

/// `d`, stretched when running under ThreadSanitizer.
pub fn slack(d: Duration) -> Duration {
    if under_tsan() { d * 4 } else { d }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh temporary folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `…/quorumkv-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!("quorumkv-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// The settings line of a murmur3 cluster file.
pub const MURMUR3: &str = "partitioner murmur3\n";

/// `n` distinct free ports on 127.0.0.1, below the ephemeral range so outgoing
/// connections do not take them between our probe and the replica's bind.
/// A port is handed out at most once per test process, so two tests starting
/// clusters at the same moment cannot both be given it.
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap();
    let seed = (std::process::id() as u64).wrapping_mul(7919)
        + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    let mut ports = Vec::new();
    let mut held = Vec::new();
    let mut i = 0;
    while ports.len() < n {
        let candidate = 20000 + ((seed + NEXT.fetch_add(1, Ordering::Relaxed) * 37 + i) % 12000) as u16;
        i += 1;
        if given.contains(&candidate) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", candidate)) {
            given.insert(candidate);
            ports.push(candidate);
            held.push(l);
        }
        assert!(i < 100_000, "no free ports");
    }
    ports
}

/// One replica process.
pub struct Replica {
    /// Its name.
    pub name: String,
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl Replica {
    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident memory in KiB (`VmHWM`), from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid().expect("running"))).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Whether the process is running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

/// A cluster of replica processes.
pub struct Cluster {
    dir: TempDir,
    /// The cluster file.
    pub file: PathBuf,
    /// The replicas, in ring order.
    pub replicas: Vec<Replica>,
    args: Vec<String>,
    /// A shell prefix per replica (e.g. `ulimit -f 256;`), applied at its next start.
    wrappers: Vec<Option<String>>,
    /// A cluster file of a replica's own instead of `file` (see `start_no_wait_each`).
    files: Vec<Option<PathBuf>>,
    /// For a replica started with `--join`: the port of the member it joins through.
    joins: Vec<Option<u16>>,
    /// Each replica's RESP port, when an argument says `{resp}`.
    resp_ports: Vec<u16>,
}

impl Cluster {
    /// Starts `n` replicas named `r0`.. with extra arguments `args` (e.g. a mode) and waits until all see each other.
    ///
    /// Another process may bind a port between our probe and the replica's
    /// bind; then the whole cluster starts again on fresh ports (at most three times).
    pub fn start(n: usize, args: &[&str]) -> Cluster {
        Cluster::start_with(n, "", args)
    }

    /// Starts `n` replicas of a murmur3 cluster (string keys; `vnodes` 16, RF from `args` or 3).
    pub fn start_murmur3(n: usize, args: &[&str]) -> Cluster {
        Cluster::start_with(n, MURMUR3, args)
    }

    /// [`start`](Self::start) with `settings` (cluster-file lines such as `partitioner murmur3\n`) before the nodes.
    pub fn start_with(n: usize, settings: &str, args: &[&str]) -> Cluster {
        for _ in 0..3 {
            let mut c = Cluster::start_no_wait_with(n, settings, args);
            if !c.lost_a_port() {
                c.wait_all_up();
                return c;
            }
        }
        panic!("three clusters in a row lost a port to another process");
    }

    /// Waits until every replica has bound its port (its log says it listens) or
    /// one has exited; true if one exited because its port was taken.
    fn lost_a_port(&mut self) -> bool {
        let mut lost = false;
        wait_for(slack(Duration::from_secs(20)), || {
            let mut all = true;
            for r in &mut self.replicas {
                let log = fs::read_to_string(&r.log).unwrap_or_default();
                if !r.running() {
                    lost = log.contains("Address already in use");
                    return true;
                }
                all &= log.contains(" listening on ");
            }
            all
        });
        lost
    }

    /// Starts `n` replicas without waiting for them to see each other.
    pub fn start_no_wait(n: usize, args: &[&str]) -> Cluster {
        Cluster::start_no_wait_with(n, "", args)
    }

    /// [`start_no_wait`](Self::start_no_wait) with `settings` lines before the nodes in the cluster file.
    pub fn start_no_wait_with(n: usize, settings: &str, args: &[&str]) -> Cluster {
        Cluster::start_no_wait_each(n, args, |_, nodes| format!("{settings}{}\n", nodes.join("\n")))
    }

    /// Starts `n` replicas without waiting, replica `i` with the cluster file
    /// `file_for(i, node_lines)` (`node_lines` as [`node_lines`](Self::node_lines)
    /// gives them): for replicas that disagree about the cluster from their first start.
    pub fn start_no_wait_each(n: usize, args: &[&str], file_for: impl Fn(usize, &[String]) -> String) -> Cluster {
        let dir = TempDir::new("cluster");
        let ports = free_ports(n);
        let file = dir.path().join("replicas.txt");
        let nodes: Vec<String> = ports.iter().enumerate().map(|(i, p)| format!("r{i} 127.0.0.1 {p}")).collect();
        let texts: Vec<String> = (0..n).map(|i| file_for(i, &nodes)).collect();
        fs::write(&file, &texts[0]).unwrap();
        let files = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                (text != &texts[0]).then(|| {
                    let path = dir.path().join(format!("r{i}-cluster.txt"));
                    fs::write(&path, text).unwrap();
                    path
                })
            })
            .collect();
        let replicas = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| Replica { name: format!("r{i}"), port, child: None, log: dir.path().join(format!("r{i}.log")), starts: 0 })
            .collect();
        let resp_ports = if args.iter().any(|a| a.contains("{resp}")) { free_ports(n) } else { Vec::new() };
        let mut c = Cluster {
            dir,
            file,
            replicas,
            args: args.iter().map(|s| s.to_string()).collect(),
            wrappers: vec![None; n],
            files,
            joins: vec![None; n],
            resp_ports,
        };
        for i in 0..n {
            c.spawn(i, &[]);
        }
        c
    }

    /// Replica `i`'s RESP port (the cluster was started with `--resp-port {resp}`).
    pub fn resp_port(&self, i: usize) -> u16 {
        self.resp_ports[i]
    }

    /// The temporary folder of this cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, i: usize, extra: &[&str]) {
        let r = &mut self.replicas[i];
        r.starts += 1;
        let log = fs::OpenOptions::new().create(true).append(true).open(&r.log).unwrap();
        // Durable in the cluster's temporary folder unless the test says otherwise.
        let explicit = self.args.iter().map(String::as_str).chain(extra.iter().copied()).any(|a| a == "--in-memory" || a == "--data-dir");
        let data_dir = self.dir.path().join("data").join(&r.name);
        let mut data: Vec<String> = if explicit { vec![] } else { vec!["--data-dir".into(), data_dir.to_string_lossy().into_owned()] };
        // ThreadSanitizer slows everything several times: a busy replica must not look dead.
        if under_tsan() && !self.args.iter().map(String::as_str).chain(extra.iter().copied()).any(|a| a == "--down-after") {
            data.extend(["--down-after".to_string(), "3s".to_string()]);
        }
        // `{name}`, `{dir}` and `{resp}` in arguments stand for the replica's name, the cluster's folder and its RESP port.
        let dir = self.dir.path().to_string_lossy().into_owned();
        let resp = self.resp_ports.get(i).map(u16::to_string).unwrap_or_default();
        let expand = |a: &str| a.replace("{name}", &r.name).replace("{dir}", &dir).replace("{resp}", &resp);
        let file = self.files[i].as_ref().unwrap_or(&self.file);
        let mut argv: Vec<String> = vec![r.name.clone(), r.port.to_string()];
        match self.joins[i] {
            None => argv.push(file.to_string_lossy().into_owned()),
            Some(port) => argv.extend(["--join".to_string(), format!("127.0.0.1:{port}")]),
        }
        argv.extend(self.args.iter().map(|a| expand(a)));
        argv.extend(extra.iter().map(|a| expand(a)));
        argv.extend(data);
        let mut cmd = match &self.wrappers[i] {
            None => {
                let mut c = Command::new(bin("replica"));
                c.args(&argv);
                c
            }
            Some(prefix) => {
                let mut c = Command::new("bash");
                c.arg("-c").arg(format!("{prefix} exec \"$0\" \"$@\"")).arg(bin("replica")).args(&argv);
                c
            }
        };
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("start replica");
        r.child = Some(child);
    }

    /// Starts a new replica `name` that joins the cluster through replica
    /// `through` (`--join`), with the cluster's arguments; its index. It
    /// answers pings when this returns (its join may still be copying data).
    pub fn join(&mut self, name: &str, through: usize) -> usize {
        self.join_with(name, through, &[])
    }

    /// [`join`](Self::join) with `extra` arguments (e.g. `--no-tokens`).
    pub fn join_with(&mut self, name: &str, through: usize, extra: &[&str]) -> usize {
        let port = free_ports(1)[0];
        let i = self.replicas.len();
        let log = self.dir.path().join(format!("{name}.log"));
        self.replicas.push(Replica { name: name.into(), port, child: None, log, starts: 0 });
        self.wrappers.push(None);
        self.files.push(None);
        self.joins.push(Some(self.replicas[through].port));
        if !self.resp_ports.is_empty() {
            self.resp_ports.push(free_ports(1)[0]);
        }
        self.spawn(i, extra);
        let ok = wait_for(slack(Duration::from_secs(20)), || {
            Client::connect("127.0.0.1", port, Duration::from_millis(200)).and_then(|mut c| c.ping()).is_ok()
        });
        assert!(ok, "{name} did not start; logs:\n{}", self.logs());
        i
    }

    /// Polls every running replica's `status` until each sees every running replica up (and dead ones down).
    pub fn wait_all_up(&self) {
        let running: Vec<bool> = self.replicas.iter().map(|r| r.child.is_some()).collect();
        let ok = wait_for(slack(Duration::from_secs(20)), || {
            self.replicas.iter().enumerate().filter(|(i, _)| running[*i]).all(|(_, r)| {
                let Ok(mut c) = Client::connect("127.0.0.1", r.port, Duration::from_millis(500)) else { return false };
                let _ = c.set_timeout(Some(Duration::from_secs(5)));
                c.status().is_ok_and(|s| s.replicas.iter().zip(&running).all(|(st, &run)| st.up == run))
            })
        });
        assert!(ok, "cluster did not come up; logs:\n{}", self.logs());
    }

    /// Polls replica `observer`'s status until it sees replica `target` as `up`.
    pub fn wait_seen(&self, observer: usize, target: usize, up: bool) {
        let ok = wait_for(slack(Duration::from_secs(15)), || self.client(observer).status().is_ok_and(|s| s.replicas[target].up == up));
        assert!(ok, "r{observer} never saw r{target} {}; logs:\n{}", if up { "up" } else { "down" }, self.logs());
    }

    /// A client connected to replica `i`.
    pub fn client(&self, i: usize) -> Client {
        let mut c = Client::connect("127.0.0.1", self.replicas[i].port, Duration::from_secs(2)).expect("connect to replica");
        c.set_timeout(Some(slack(Duration::from_secs(15)))).unwrap();
        c
    }

    /// Runs the `client` binary against replica `i` with `args`, feeding `stdin`.
    pub fn run_client(&self, i: usize, args: &[&str], stdin: &str) -> Output {
        run_client_at(self.replicas[i].port, args, stdin)
    }

    /// What replica `name` holds for `key` (a value; `None` for nothing, a tombstone, or no answer),
    /// as `inspect` through coordinator `via` reports it.
    pub fn held(&self, via: usize, key: impl ToKey, name: &str) -> Option<String> {
        self.held_bytes(via, key, name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// [`held`](Self::held), as bytes.
    pub fn held_bytes(&self, via: usize, key: impl ToKey, name: &str) -> Option<Vec<u8>> {
        let i = self.client(via).inspect(key).ok()?;
        let e = i.replicas.into_iter().find(|e| e.name == name)?;
        e.version.filter(|v| !v.tombstone).map(|v| v.value)
    }

    /// The names of `key`'s replicas, owner first, as `inspect` through coordinator `via` lists them.
    pub fn replicas_of(&self, via: usize, key: impl ToKey) -> Vec<String> {
        self.client(via).inspect(key).expect("inspect").replicas.into_iter().map(|e| e.name).collect()
    }

    /// The node lines of the cluster file, `rI 127.0.0.1 PORT`, one per replica, in ring order.
    pub fn node_lines(&self) -> Vec<String> {
        self.replicas.iter().map(|r| format!("{} 127.0.0.1 {}", r.name, r.port)).collect()
    }

    /// Kills replica `i` with SIGKILL and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes replica `i` with SIGSTOP (its sockets stay open, it answers nothing).
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Resumes a paused replica with SIGCONT.
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.replicas[i].pid().expect("replica running");
        let ok = Command::new("kill").arg(sig).arg(pid.to_string()).status().unwrap().success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Runs replica `i` under a shell prefix from its next start on (e.g. `ulimit -f 256; trap '' XFSZ;`).
    pub fn wrap(&mut self, i: usize, prefix: &str) {
        self.wrappers[i] = Some(prefix.to_string());
    }

    /// The arguments replica `i` is started with (after name, port and file), for starting it by hand.
    pub fn replica_args(&self, i: usize) -> Vec<String> {
        let r = &self.replicas[i];
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut v: Vec<String> = self.args.iter().map(|a| a.replace("{name}", &r.name).replace("{dir}", &dir)).collect();
        if !v.iter().any(|a| a == "--in-memory" || a == "--data-dir") {
            v.push("--data-dir".into());
            v.push(self.data_dir(i).to_string_lossy().into_owned());
        }
        v
    }

    /// Restarts replica `i` (same name, port and arguments) and waits until it answers.
    pub fn restart(&mut self, i: usize) {
        self.restart_with(i, &[]);
    }

    /// Restarts replica `i` with `extra` arguments and waits until it answers.
    pub fn restart_with(&mut self, i: usize, extra: &[&str]) {
        self.kill(i);
        self.spawn(i, extra);
        let port = self.replicas[i].port;
        let ok = wait_for(slack(Duration::from_secs(10)), || {
            Client::connect("127.0.0.1", port, Duration::from_millis(200)).and_then(|mut c| c.ping()).is_ok()
        });
        assert!(ok, "r{i} did not restart; logs:\n{}", self.logs());
    }

    /// Replica `i`'s data folder (unless it runs in memory).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join("data").join(&self.replicas[i].name)
    }

    /// Every replica's log, for failure messages.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| {
                let text = fs::read_to_string(&r.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!("--- {} ---\n{}\n", r.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect()
    }

    /// Replica `i`'s whole log.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.replicas[i].log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.replicas.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!("replica logs kept in {}", self.dir.path().display());
            return;
        }
        for r in &self.replicas {
            let text = fs::read_to_string(&r.log).unwrap_or_default();
            for bad in ["panicked at", "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer"] {
                assert!(!text.contains(bad), "{} logged {bad:?}:\n{text}", r.name);
            }
        }
    }
}

/// Runs a replica with `args` that should refuse to start; returns its exit
/// code and what it wrote to stderr (into a file in `log_dir`, not a pipe: a
/// long message must not stall it). A replica still running after a deadline
/// is killed and fails the test.
pub fn start_refused(log_dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let log = log_dir.join("start.log");
    let mut child = Command::new(bin("replica"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // A replica that accepts its start would run until killed: give it a deadline.
    let done = wait_for(slack(Duration::from_secs(10)), || child.try_wait().unwrap().is_some());
    if !done {
        let _ = child.kill();
    }
    let code = child.wait().unwrap().code();
    let err = fs::read_to_string(&log).unwrap();
    assert!(done, "replica {args:?} did not exit; it wrote:\n{err}");
    (code, err)
}

/// Runs the `client` binary against `127.0.0.1:port`.
pub fn run_client_at(port: u16, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin("client"))
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start client");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(slack(Duration::from_secs(30))) {
        Ok(out) => out.expect("client output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("client {args:?} did not finish in time");
        }
    }
}

/// stdout of `o` as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of `o` as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
