//! Processes the bench starts itself: a cluster of release replicas (the
//! `replica` binary next to the bench's own) on free loopback ports, pinned with
//! taskset if asked, each with a data folder under one temporary directory.
//! Replicas can be killed (SIGKILL) and started again on the same port and data
//! folder; every process is killed by its pid and the directory removed on drop,
//! also when the bench fails half-way.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quorumkv::client::Client;

use crate::Args;

/// How to start a cluster.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClusterOpts {
    /// Replicas.
    pub(crate) n: usize,
    /// READ-REPAIR or HINTED-HANDOFF (`None`: both).
    pub(crate) mode: Option<String>,
    /// Cluster-file lines before the nodes (e.g. `partitioner murmur3\nrf 1\n`).
    pub(crate) settings: String,
    /// CPUs for the replicas (a taskset list); empty: not pinned.
    pub(crate) pin: String,
    /// Flags for every replica (the bench's `--replica-flags`).
    pub(crate) flags: Vec<String>,
    /// Names the temporary directory.
    pub(crate) tag: String,
}

impl ClusterOpts {
    /// `n` replicas in `mode` with `settings`, pinned and flagged as `args` says.
    pub(crate) fn new(args: &Args, n: usize, mode: Option<&str>, settings: &str, tag: &str) -> ClusterOpts {
        ClusterOpts {
            n,
            mode: mode.map(str::to_string),
            settings: settings.to_string(),
            pin: args.pin_replicas.clone(),
            flags: args.replica_flags.split_whitespace().map(str::to_string).collect(),
            tag: tag.to_string(),
        }
    }
}

/// `n` ports on 127.0.0.1 that were free a moment ago (each held until all are found).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let mut candidate = 20000 + (std::process::id() % 10000) as u16;
    while ports.len() < n {
        candidate = if candidate >= 32000 { 20000 } else { candidate + 1 };
        if let Ok(l) = TcpListener::bind(("127.0.0.1", candidate)) {
            ports.push(candidate);
            held.push(l);
        }
    }
    ports
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`); 0 if the process is gone.
pub(crate) fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes of the files in `dir` (not recursive).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// A command for `exe`, under `taskset -c pin` when `pin` is set. Under taskset
/// the child's pid is the program's: taskset execs it.
pub(crate) fn pinned(exe: &Path, pin: &str) -> Command {
    if pin.is_empty() {
        Command::new(exe)
    } else {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(pin).arg(exe);
        c
    }
}

/// A cluster of release replicas on free loopback ports, stopped on drop.
pub(crate) struct Cluster {
    children: Vec<Option<Child>>,
    ports: Vec<u16>,
    dir: PathBuf,
    file: PathBuf,
    opts: ClusterOpts,
    /// Flags for every start, after `opts.flags` (e.g. `--snapshot-bytes N`).
    extra: Vec<String>,
    /// For a replica that joined a running cluster: the port of the member it joined through.
    joins: Vec<Option<u16>>,
    /// Replica 0's RESP port (`--resp-port`), if it speaks RESP.
    resp_port: Option<u16>,
}

impl Cluster {
    /// Starts the cluster and waits until every replica sees every other up.
    pub(crate) fn start(opts: ClusterOpts) -> Result<Cluster, String> {
        Self::start_with(opts, Vec::new())
    }

    /// [`start`](Self::start) with `extra` flags for every replica.
    pub(crate) fn start_with(opts: ClusterOpts, extra: Vec<String>) -> Result<Cluster, String> {
        Self::start_inner(opts, extra, false)
    }

    /// [`start_with`](Self::start_with), replica 0 also speaking RESP on a free port ([`resp_port`](Self::resp_port)).
    pub(crate) fn start_resp(opts: ClusterOpts, extra: Vec<String>) -> Result<Cluster, String> {
        Self::start_inner(opts, extra, true)
    }

    /// Replica 0's RESP port, if it has one.
    pub(crate) fn resp_port(&self) -> Option<u16> {
        self.resp_port
    }

    fn start_inner(opts: ClusterOpts, extra: Vec<String>, resp: bool) -> Result<Cluster, String> {
        let dir = std::env::temp_dir().join(format!("quorumkv-bench-{}-{}", std::process::id(), opts.tag));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // The RESP port is found with the others, so it cannot be one of them.
        let mut ports = free_ports(opts.n + usize::from(resp));
        let resp_port = if resp { ports.pop() } else { None };
        let file = dir.join("replicas.txt");
        let nodes: String = ports.iter().enumerate().map(|(i, p)| format!("b{i} 127.0.0.1 {p}\n")).collect();
        let joins = vec![None; opts.n];
        let mut c = Cluster { children: (0..opts.n).map(|_| None).collect(), ports, dir, file, opts, extra, joins, resp_port };
        std::fs::write(&c.file, format!("{}{nodes}", c.opts.settings)).map_err(|e| e.to_string())?;
        for i in 0..c.opts.n {
            c.spawn(i)?;
        }
        c.wait_up(Duration::from_secs(30))?;
        Ok(c)
    }

    /// Starts replica `i` (its log is appended to); returns when it was spawned.
    fn spawn(&mut self, i: usize) -> Result<Instant, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let replica = exe.with_file_name("replica");
        let mut cmd = pinned(&replica, &self.opts.pin);
        cmd.arg(format!("b{i}")).arg(self.ports[i].to_string());
        match self.joins[i] {
            Some(through) => cmd.arg("--join").arg(format!("127.0.0.1:{through}")),
            None => cmd.arg(&self.file),
        };
        if let Some(m) = &self.opts.mode {
            cmd.arg(m);
        }
        cmd.arg("--data-dir").arg(self.data_dir(i));
        cmd.args(&self.opts.flags).args(&self.extra);
        if let (0, Some(p)) = (i, self.resp_port) {
            cmd.arg("--resp-port").arg(p.to_string());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .map_err(|e| format!("cannot open {}: {e}", self.log_path(i).display()))?;
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", replica.display()))?;
        self.children[i] = Some(child);
        Ok(started)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("b{i}.log"))
    }

    /// The last lines of replica `i`'s log, for an error message.
    pub(crate) fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// An error if replica `i` exited.
    fn check_running(&mut self, i: usize) -> Result<(), String> {
        match self.children[i].as_mut().map(Child::try_wait) {
            Some(Ok(None)) => Ok(()),
            _ => Err(format!("replica b{i} exited; its log ends:\n{}", self.log_tail(i))),
        }
    }

    /// Waits until every replica answers `status` and sees every other up.
    pub(crate) fn wait_up(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let all_up = self.ports.iter().all(|&p| {
                Client::connect("127.0.0.1", p, Duration::from_millis(300))
                    .and_then(|mut cl| cl.status())
                    .is_ok_and(|s| s.replicas.iter().all(|r| r.up))
            });
            if all_up {
                return Ok(());
            }
            for i in 0..self.ports.len() {
                self.check_running(i)?;
            }
            if Instant::now() > deadline {
                return Err(format!("the bench cluster did not come up; logs in {}", self.dir.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a new replica that joins the running cluster through replica
    /// `through` (with the same flags as the others); returns its index and
    /// when it was spawned. Its data streams in the background: see its
    /// movement status.
    pub(crate) fn join(&mut self, through: usize) -> Result<(usize, Instant), String> {
        let i = self.ports.len();
        let port = free_ports(1)[0];
        self.ports.push(port);
        self.children.push(None);
        self.joins.push(Some(self.ports[through]));
        let started = self.spawn(i)?;
        Ok((i, started))
    }

    /// Every replica's address.
    pub(crate) fn targets(&self) -> Vec<(String, u16)> {
        self.ports.iter().map(|&p| ("127.0.0.1".to_string(), p)).collect()
    }

    /// Replica `i`'s port.
    pub(crate) fn port(&self, i: usize) -> u16 {
        self.ports[i]
    }

    /// Replica `i`'s data folder.
    pub(crate) fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("b{i}"))
    }

    /// Replica `i`'s pid, if it runs.
    pub(crate) fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    /// Replica `i`'s resident memory in KiB (0 if it is not running).
    pub(crate) fn rss_kib(&self, i: usize) -> u64 {
        self.pid(i).map_or(0, |pid| proc_kib(pid, "VmRSS"))
    }

    /// Kills replica `i` with SIGKILL (by its pid) and reaps it.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts replica `i` again (after [`kill`](Self::kill)) on its port and data
    /// folder; returns the moment it was spawned.
    pub(crate) fn restart(&mut self, i: usize) -> Result<Instant, String> {
        self.kill(i);
        self.spawn(i)
    }

    /// Waits until replica `i` answers `status` holding at least `keys` keys;
    /// returns how long after `since` that was. A replica recovers its data before
    /// it serves, so the first answer already shows everything recovered; the
    /// request waits in the listen backlog meanwhile (the port is bound first).
    pub(crate) fn wait_keys(&mut self, i: usize, keys: u64, since: Instant, timeout: Duration) -> Result<Duration, String> {
        let deadline = since + timeout;
        let mut last = String::from("no answer");
        loop {
            if let Ok(mut c) = Client::connect("127.0.0.1", self.ports[i], Duration::from_millis(200)) {
                let _ = c.set_timeout(Some(timeout));
                match c.status() {
                    Ok(s) => {
                        let held = s.replicas.iter().find(|r| r.is_self).and_then(|r| r.storage.as_ref()).map_or(0, |st| st.keys);
                        if held >= keys {
                            return Ok(since.elapsed());
                        }
                        last = format!("it holds {held} of {keys} keys");
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            self.check_running(i)?;
            if Instant::now() > deadline {
                return Err(format!("replica b{i} did not serve {keys} keys within {timeout:?} ({last})"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}
