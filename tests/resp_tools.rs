//! The real Redis tools against quorumkv's RESP port (issue 16): `redis-cli`
//! (commands, a piped script, `--scan`, `--pipe` mass insertion of 100,000
//! keys), `redis-benchmark` (SET, GET, MSET, with and without pipelining, no
//! errors), and the Python `redis` client library (pipelines, `WATCH`/`MULTI`/
//! `EXEC` and `SET NX` races with exactly one winner).
//!
//! The tools come from Debian's packages (`redis-tools`) and PyPI (`redis`,
//! into a virtual environment under the target folder). A test whose tool
//! is missing installs it if it can (`apt-get` as root; `pip` with the
//! network); if it cannot, it says so loudly on stderr and passes without
//! running, so `make test` stays green on a machine with neither.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{Cluster, slack, under_tsan};
use quorumkv::resp::Reply;
use quorumkv::resp::client::Resp;

const RESP: &[&str] = &["--resp-port", "{resp}"];

/// One install at a time (the tests of this file run in parallel).
static INSTALL: Mutex<()> = Mutex::new(());

fn skip(what: &str, why: &str) {
    eprintln!("!!!!!!!! SKIPPED {what}: {why} !!!!!!!!");
}

fn on_path(name: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {name}")).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// `name` from Debian's `package`, installed if missing and this runs as root.
fn debian_tool(name: &str, package: &str) -> bool {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if on_path(name) {
        return true;
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root && on_path("apt-get") {
        eprintln!("installing {package} for {name} (apt-get)");
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("timeout 300 apt-get install -y -q --no-install-recommends {package} >/dev/null 2>&1 || (timeout 300 apt-get update -q >/dev/null 2>&1 && timeout 300 apt-get install -y -q --no-install-recommends {package} >/dev/null 2>&1)"))
            .status();
    }
    on_path(name)
}

fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the tool");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.map(<[u8]>::to_vec).unwrap_or_default();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("the tool ran");
    writer.join().unwrap();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `redis-cli -p PORT args…` (bounded by `timeout`), its stdout.
fn cli(port: u16, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = run(Command::new("timeout").arg("120").arg("redis-cli").arg("-p").arg(port.to_string()).args(args), stdin);
    assert!(out.status.success(), "redis-cli {args:?} failed: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn redis_cli_works_against_a_resp_port() {
    if !debian_tool("redis-cli", "redis-tools") {
        return skip("redis-cli against quorumkv", "redis-cli is not installed and could not be (apt-get install redis-tools)");
    }
    let c = Cluster::start_murmur3(3, RESP);
    let port = c.resp_port(0);
    assert_eq!(cli(port, &["set", "greeting", "hello world"], None), "OK\n");
    assert_eq!(cli(c.resp_port(1), &["get", "greeting"], None), "hello world\n");
    assert_eq!(cli(port, &["mset", "a", "1", "b", "2"], None), "OK\n");
    assert_eq!(cli(port, &["mget", "a", "b", "nothing"], None), "1\n2\n\n");
    assert_eq!(cli(port, &["del", "a", "nothing"], None), "1\n");
    assert_eq!(cli(port, &["exists", "a", "b"], None), "1\n");
    // A script piped in, one command a line (redis-cli sends each as a command).
    let script = b"SET s1 one\nSET s2 two\nGET s1\nDEL s2\nGET s2\nINCR s1\n";
    let out = cli(port, &[], Some(script));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..5], &["OK", "OK", "one", "1", ""], "{out}");
    assert!(lines[5].starts_with("ERR unknown command 'INCR'"), "{out}");
    // Interactive start-up (COMMAND DOCS and friends) ends cleanly too: one command through the prompt.
    let out = cli(port, &["--no-raw"], Some(b"ping\n"));
    assert!(out.contains("PONG"), "{out}");

    // Mass insertion with --pipe: 100,000 keys, no errors.
    let keys = if under_tsan() { 20_000 } else { 100_000 };
    let mut proto = Vec::new();
    for i in 0..keys {
        let key = format!("mass:{i}");
        quorumkv::resp::encode_command(&mut proto, &[b"SET", key.as_bytes(), b"value"]);
    }
    let out = cli(port, &["--pipe"], Some(&proto));
    assert!(out.contains(&format!("errors: 0, replies: {keys}")), "{out}");
    // Every key is there: --scan lists them (through another replica).
    let listed = cli(c.resp_port(2), &["--scan", "--pattern", "mass:*"], None);
    let mut found: Vec<&str> = listed.lines().collect();
    found.sort_unstable();
    found.dedup();
    assert_eq!(found.len(), keys, "--scan found {} of {keys} keys", found.len());
    let mut r = Resp::connect(port, slack(Duration::from_secs(10))).unwrap();
    assert_eq!(r.command(&[b"GET", format!("mass:{}", keys - 1).as_bytes()]).unwrap(), Reply::Bulk(Some(b"value".to_vec())));
}

#[test]
fn redis_benchmark_runs_to_completion_without_errors() {
    if !debian_tool("redis-benchmark", "redis-tools") {
        return skip("redis-benchmark against quorumkv", "redis-benchmark is not installed and could not be (apt-get install redis-tools)");
    }
    let c = Cluster::start_murmur3(3, &["--resp-port", "{resp}", "--resp-consistency", "one"]);
    let n = if under_tsan() { "2000" } else { "20000" };
    for pipeline in ["1", "16"] {
        let out = run(
            Command::new("timeout").args(["300", "redis-benchmark", "-p", &c.resp_port(0).to_string()]).args([
                "-t",
                "set,get,mset",
                "-n",
                n,
                "-c",
                "50",
                "-d",
                "100",
                "-P",
                pipeline,
                "-q",
            ]),
            None,
        );
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "redis-benchmark -P {pipeline} failed: {stdout}{stderr}");
        // Progress lines end in CR, results in LF.
        for test in ["SET:", "GET:", "MSET (10 keys):"] {
            assert!(
                stdout.split(['\r', '\n']).any(|l| l.trim_start().starts_with(test) && l.contains("requests per second")),
                "-P {pipeline}: no {test} result in {stdout}"
            );
        }
        assert!(!stdout.contains("Error") && !stdout.contains("ERR") && !stderr.contains("ERR"), "-P {pipeline}: {stdout}{stderr}");
    }
}

/// A virtual environment with the `redis` package (made once, under the target folder).
fn python_redis() -> Option<PathBuf> {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-redis");
    let python = venv.join("bin/python");
    let has = |p: &Path| Command::new(p).args(["-c", "import redis"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if has(&python) {
        return Some(python);
    }
    eprintln!("making a Python virtual environment with redis in {}", venv.display());
    let made =
        Command::new("timeout").args(["120", "python3", "-m", "venv"]).arg(&venv).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !made.is_ok_and(|s| s.success()) {
        return None;
    }
    let _ = Command::new("timeout")
        .args(["300"])
        .arg(venv.join("bin/pip"))
        .args(["install", "-q", "redis"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    has(&python).then_some(python)
}

const PY_CLIENT: &str = r#"
import sys, threading, redis
ports = [int(p) for p in sys.argv[1:]]
clients = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=30) for p in ports]
r = clients[0]
# Race outcomes are read at SERIAL (a write whose outcome was unknown is settled first).
serial = redis.Redis(host="127.0.0.1", port=ports[1], socket_timeout=30, single_connection_client=True)
assert serial.execute_command("CONSISTENCY", "SERIAL") in (b"OK", "OK", True)

def unknown(e):
    return str(e).startswith("TIMEOUT") and "may or may not" in str(e)

# Pipelines (no transaction): replies in order.
p = r.pipeline(transaction=False)
for i in range(500):
    p.set(f"py:{i}", i)
    p.get(f"py:{i}")
out = p.execute()
assert all(out[2 * i] is True and out[2 * i + 1] == str(i).encode() for i in range(500)), out[:10]
assert r.mget(["py:1", "py:2", "nope"]) == [b"1", b"2", None]
assert r.delete("py:1", "nope") == 1
assert r.exists("py:1", "py:2") == 1
assert sorted(r.scan_iter(match="py:4??", count=50)) == sorted(f"py:{i}".encode() for i in range(400, 500))
assert r.set("py:nx", "a", nx=True) is True and r.set("py:nx", "b", nx=True) is None
assert r.getset("py:nx", "c") == b"a"

# A transaction pipeline (MULTI/EXEC).
p = r.pipeline(transaction=True)
p.set("py:t1", "x").set("py:t2", "y").get("py:t1")
assert p.execute() == [True, True, b"x"]

def race(n, attempt):
    barrier = threading.Barrier(n)
    results = [None] * n
    def run(i):
        c = redis.Redis(host="127.0.0.1", port=ports[i % len(ports)], socket_timeout=30)
        results[i] = attempt(c, i, barrier)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads: t.start()
    for t in threads: t.join()
    return results

def check_one_winner(what, key, results):
    holder = serial.get(key).decode()
    won = [i for i, x in enumerate(results) if x == "won"]
    assert won in ([], [int(holder)]), f"{what}: {results}, key holds {holder}"
    assert results[int(holder)] in ("won", "unknown"), f"{what}: {results}, key holds {holder}"
    assert all(x in ("won", "lost", "unknown") for x in results), results

for round in range(5):
    # SET NX: one True.
    def set_nx(c, i, barrier, key=f"py:race{round}"):
        barrier.wait()
        try:
            return "won" if c.set(key, i, nx=True) else "lost"
        except redis.exceptions.ResponseError as e:
            if unknown(e): return "unknown"
            raise
    check_one_winner("SET NX", f"py:race{round}", race(6, set_nx))

    # WATCH/MULTI/EXEC: all watch the same value, one commits, the others get WatchError.
    key = f"py:watch{round}"
    r.set(key, "start")
    def watch(c, i, barrier):
        with c.pipeline() as p:
            p.watch(key)
            assert p.get(key) == b"start"
            barrier.wait()
            p.multi()
            p.set(key, i)
            try:
                p.execute()
                return "won"
            except redis.WatchError:
                return "lost"
            except redis.exceptions.ResponseError as e:
                if unknown(e): return "unknown"
                raise
    check_one_winner("WATCH/MULTI/EXEC", key, race(6, watch))
print("python redis client: all checks passed")
"#;

#[test]
fn a_python_redis_client_works_against_quorumkv() {
    let Some(python) = python_redis() else {
        return skip(
            "the Python redis client against quorumkv",
            "no Python venv with the redis package (python3 -m venv, pip install redis: offline?)",
        );
    };
    let c = Cluster::start_murmur3(3, RESP);
    let ports: Vec<String> = (0..3).map(|i| c.resp_port(i).to_string()).collect();
    let out = run(Command::new("timeout").arg("300").arg(&python).arg("-c").arg(PY_CLIENT).args(&ports), None);
    assert!(out.status.success(), "the Python client failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("all checks passed"));
}
