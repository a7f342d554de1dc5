//! A redis-server the bench starts on a free loopback port, with no persistence
//! of its own (`--save "" --appendonly no`) and its directory under the
//! system's temporary folder, for the memory and restart comparisons: load keys
//! with pipelined `SET`s, read its resident memory, `SAVE` an RDB file, kill it
//! and time its restart until it serves every key. Killed by pid and its
//! directory removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{free_ports, pinned, proc_kib};
use crate::resp::{Reply, Resp};

/// How to install redis-server when it is missing.
pub(crate) const INSTALL_HINT: &str = "install it with `apt-get install redis-server` (Debian/Ubuntu)";

/// The redis-server to run: `name` itself if it holds a `/`, else the first
/// match on `PATH`; `None` if there is none.
pub(crate) fn find(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// What `redis-server --version` says, e.g. `Redis server v=7.0.15 … malloc=jemalloc-5.3.0 …`.
pub(crate) fn version(exe: &Path) -> String {
    Command::new(exe)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown version".into())
}

/// A running redis-server.
pub(crate) struct Redis {
    exe: PathBuf,
    pin: String,
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Log every write to an append-only file, fsynced every second (`--appendonly yes --appendfsync everysec`).
    aof: bool,
}

impl Redis {
    /// Starts `exe` (pinned to `pin` if set) and waits until it answers `PING`.
    pub(crate) fn start(exe: &Path, pin: &str, tag: &str) -> Result<Redis, String> {
        Redis::start_as(exe, pin, tag, false)
    }

    /// [`start`](Self::start), with an append-only file fsynced every second if `aof`.
    pub(crate) fn start_as(exe: &Path, pin: &str, tag: &str, aof: bool) -> Result<Redis, String> {
        let dir = std::env::temp_dir().join(format!("quorumkv-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let port = free_ports(1)[0];
        let mut r = Redis { exe: exe.to_path_buf(), pin: pin.to_string(), child: None, port, dir, aof };
        let started = r.spawn()?;
        r.wait_for(|c| c.command(&[b"PING"]).map(|r| matches!(r, Reply::Simple(s) if s == "PONG")), started, Duration::from_secs(20))?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<Instant, String> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("redis.log")).map_err(|e| e.to_string())?;
        let mut cmd = pinned(&self.exe, &self.pin);
        let aof: &[&str] = if self.aof { &["--appendonly", "yes", "--appendfsync", "everysec"] } else { &["--appendonly", "no"] };
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""]).args(aof).arg("--dir").arg(&self.dir).args([
            "--dbfilename",
            "dump.rdb",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]);
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        self.child = Some(child);
        Ok(started)
    }

    /// Polls until `ready` answers true (a new connection when it fails); returns how long after `since`.
    fn wait_for(
        &mut self,
        mut ready: impl FnMut(&mut Resp) -> std::io::Result<bool>,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let mut conn: Option<Resp> = None;
        loop {
            if conn.is_none() {
                conn = Resp::connect(self.port, Duration::from_secs(5)).ok();
            }
            if let Some(c) = conn.as_mut() {
                match ready(c) {
                    Ok(true) => return Ok(since.elapsed()),
                    Ok(false) => {}
                    Err(_) => conn = None,
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                return Err(format!("redis-server exited ({status}); its log:\n{log}"));
            }
            if since.elapsed() > timeout {
                return Err(format!("redis-server on port {} did not become ready within {timeout:?}", self.port));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Its port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// A new connection.
    pub(crate) fn connect(&self) -> Result<Resp, String> {
        Resp::connect(self.port, Duration::from_secs(120)).map_err(|e| format!("redis on port {}: {e}", self.port))
    }

    /// Its resident memory in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        self.child.as_ref().map_or(0, |c| proc_kib(c.id(), "VmRSS"))
    }

    /// A number from `INFO`, e.g. `used_memory` (bytes).
    pub(crate) fn info_number(&self, field: &str) -> Option<u64> {
        let mut c = self.connect().ok()?;
        let Ok(Reply::Bulk(Some(text))) = c.command(&[b"INFO", b"memory"]) else { return None };
        String::from_utf8_lossy(&text).lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().parse().ok())
    }

    /// The number of keys (`DBSIZE`).
    pub(crate) fn dbsize(&self) -> Result<u64, String> {
        match self.connect()?.command(&[b"DBSIZE"]) {
            Ok(Reply::Integer(n)) => Ok(n as u64),
            other => Err(format!("DBSIZE: {other:?}")),
        }
    }

    /// Writes the RDB file (`SAVE`); returns its size in bytes.
    pub(crate) fn save(&self) -> Result<u64, String> {
        match self.connect()?.command(&[b"SAVE"]) {
            Ok(Reply::Simple(s)) if s == "OK" => {}
            other => return Err(format!("SAVE: {other:?}")),
        }
        std::fs::metadata(self.dir.join("dump.rdb")).map(|m| m.len()).map_err(|e| format!("the RDB file: {e}"))
    }

    /// Kills the server (SIGKILL, by pid), starts it again on the same port and
    /// folder, and times it from the spawn until `DBSIZE` answers `keys` (while it
    /// loads the RDB file it answers `-LOADING`).
    pub(crate) fn restart_timed(&mut self, keys: u64) -> Result<Duration, String> {
        self.kill();
        let started = self.spawn()?;
        let loaded = |c: &mut Resp| c.command(&[b"DBSIZE"]).map(|r| matches!(r, Reply::Integer(n) if n as u64 >= keys));
        self.wait_for(loaded, started, Duration::from_secs(300))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
