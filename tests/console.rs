//! The console client and the replica's start-up checks, through the real binaries.

mod common;

use std::process::{Command, Stdio};

use common::{Cluster, TempDir, bin, free_ports, run_client_at, stderr, stdout, wait_for};

#[test]
fn console_driven_through_a_pipe() {
    let c = Cluster::start(4, &[]);
    let script = "\
# comments and blank lines are skipped

put 5 \"hello world\" quorum
GET 5
get 5 ALL
consistency
consistency quorum
consistency
put 70 x
del 70
get 70
get 300
put 5 hello world
frobnicate
quit
get 5
";
    let out = c.run_client(1, &[], script);
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 9, "{lines:#?}");
    // At QUORUM 2 or 3 acks may have arrived by the time the coordinator answers.
    let at_quorum = |l: &str| l.starts_with("OK (") && l.contains(" acks at QUORUM, ts ");
    assert!(at_quorum(&lines[0]), "{}", lines[0]);
    assert_eq!(lines[1], "hello world");
    assert_eq!(lines[2], "hello world");
    assert_eq!(lines[3], "Current consistency level is ONE.");
    assert_eq!(lines[4], "Consistency level set to QUORUM.");
    assert_eq!(lines[5], "Current consistency level is QUORUM.");
    assert!(at_quorum(&lines[6]), "the session default applies: {}", lines[6]);
    assert!(at_quorum(&lines[7]));
    assert_eq!(lines[8], "(not found)");
    let err = stderr(&out);
    let errs: Vec<&str> = err.lines().collect();
    assert_eq!(errs.len(), 3, "{err}");
    assert!(errs[0].starts_with("error: Invalid request: key 300 is out of range; keys are 0 to 255"), "{}", errs[0]);
    assert!(errs[1].contains("unknown consistency level \"world\"") && errs[1].contains("put 5 \"hello world\""), "{}", errs[1]);
    assert!(errs[2].starts_with("error: unknown command"));
    assert!(!stdout(&out).contains("quorumkv"), "no prompt on a pipe");
}

#[test]
fn help_lists_every_command() {
    let c = Cluster::start(4, &[]);
    let out = c.run_client(0, &["help"], "");
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for cmd in ["get KEY", "put KEY VALUE", "del KEY", "consistency", "status", "inspect KEY", "display", "quit"] {
        assert!(text.contains(cmd), "help lacks {cmd}: {text}");
    }
}

#[test]
fn one_shot_exit_statuses() {
    let c = Cluster::start(4, &[]);
    let ok = c.run_client(2, &["-c", "quorum", "put", "9", "nine"], "");
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let got = c.run_client(3, &["get", "9", "quorum"], "");
    assert_eq!(got.status.code(), Some(0));
    assert_eq!(stdout(&got), "nine\n", "get prints the value alone");

    let missing = c.run_client(0, &["get", "10"], "");
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stdout(&missing), "");

    for bad in [&["get", "256"][..], &["get"], &["put", "5"], &["get", "5", "sometimes"], &["dance"]] {
        let o = c.run_client(0, bad, "");
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("error:"), "{bad:?}: {}", stderr(&o));
    }
    let bad_level = c.run_client(0, &["-c", "twice", "get", "5"], "");
    assert_eq!(bad_level.status.code(), Some(2));

    let closed = free_ports(1)[0];
    let o = run_client_at(closed, &["get", "5"], "");
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).starts_with("error:"), "{}", stderr(&o));
    // A bad command is bad input whether or not the coordinator can be reached.
    let o = run_client_at(closed, &["dance"], "");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let status = c.run_client(0, &["status"], "");
    let text = stdout(&status);
    assert!(text.contains("r0") && text.contains("0-63") && text.contains("(this coordinator)"), "{text}");
}

#[test]
fn display_shows_what_each_replica_holds_and_differences() {
    let mut c = Cluster::start(4, &["READ-REPAIR"]);
    c.client(0).put(5, "everywhere", common_all()).unwrap();
    c.kill(2);
    c.wait_seen(0, 2, false);
    c.client(0).put(6, "missed-by-r2", quorumkv::cluster::consistency::Consistency::Quorum).unwrap();
    c.restart(2);
    c.wait_all_up();
    let out = c.run_client(0, &["display"], "");
    let text = stdout(&out);
    assert!(text.contains("r0 (owns 0-63): 2 key(s)"), "{text}");
    // r2 is durable: it kept key 5 across its restart, but missed key 6.
    assert!(text.contains("r2 (owns 128-191): 1 key(s)"), "{text}");
    assert!(!text.contains("key 5:"), "every replica of key 5 agrees: {text}");
    assert!(text.contains("key 6: r0 \"missed-by-r2\""), "{text}");
    assert!(text.contains("r2 none"), "{text}");
}

fn common_all() -> quorumkv::cluster::consistency::Consistency {
    quorumkv::cluster::consistency::Consistency::All
}

fn start_replica(args: &[&str]) -> std::process::Output {
    Command::new(bin("replica")).args(args).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn replica_refuses_bad_cluster_files_and_arguments() {
    let dir = TempDir::new("badfiles");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let good = write("good.txt", "a 127.0.0.1 1\nb 127.0.0.1 2\nc 127.0.0.1 3\n");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["a".into(), "1".into(), write("dup.txt", "a 127.0.0.1 1\na 127.0.0.1 2\n")], "line 2: duplicate name"),
        (vec!["a".into(), "1".into(), write("addr.txt", "a 127.0.0.1 1\nb 127.0.0.1 1\n")], "line 2: duplicate address"),
        (vec!["a".into(), "1".into(), write("short.txt", "# x\na 127.0.0.1\n")], "line 2: expected `name host port`"),
        (vec!["zed".into(), "1".into(), good.clone()], "zed is not in"),
        (vec!["a".into(), "7".into(), good.clone()], "does not match"),
        (vec!["a".into(), "1".into(), good.clone(), "SOMETIMES".into()], "unknown mode"),
        (vec!["a".into(), "1".into(), good.clone(), "--rf".into(), "4".into()], "replication factor 4"),
        (vec!["a".into(), "1".into(), dir.path().join("nope.txt").to_string_lossy().into_owned()], "cannot read"),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = start_replica(&args);
        assert!(!out.status.success(), "{args:?} should be refused");
        assert!(stderr(&out).contains(want), "{args:?}: want {want:?} in {}", stderr(&out));
    }
}

#[test]
fn replicas_with_different_rings_refuse_each_other() {
    let mut c = Cluster::start_no_wait(3, &[]);
    // r2 disagrees on the replication factor.
    c.kill(2);
    c.restart_with(2, &["--rf", "2"]);
    let ok = wait_for(common::slack(std::time::Duration::from_secs(10)), || {
        c.log(2).contains("refusing replica link") && c.log(0).contains("refused our handshake")
    });
    assert!(ok, "{}", c.logs());
    assert!(c.log(0).contains("rf 3") && c.log(0).contains("rf 2"), "the log line names both rings: {}", c.log(0));
    // r1 agrees on the ring: r0 sees it up (polled: its link may connect after the refusals
    // above were logged), while r2 stays refused.
    c.wait_seen(0, 1, true);
    let s = c.client(0).status().unwrap();
    assert!(s.replicas[1].up && !s.replicas[2].up, "{s:?}");
}
