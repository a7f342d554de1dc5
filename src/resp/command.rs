//! A RESP command's arguments, checked and typed: the table of the commands
//! quorumkv speaks (name, arity, flags, key positions: what `COMMAND`
//! reports and what the arity check uses), and [`Cmd::parse`], which turns
//! `["SET", "k", "v", "NX"]` into [`Cmd::Set`] or says, in Redis's words,
//! what is wrong. Keys and values stay bytes here; the session checks them
//! against the cluster's limits (a byte-ordered cluster's integer keys).

use crate::cluster::consistency::Consistency;

/// One command quorumkv speaks, as `COMMAND` describes it.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The name, in lower case.
    pub name: &'static str,
    /// Redis's arity: `n` exactly `n` arguments (the name counts), `-n` at least `n`.
    pub arity: i64,
    /// Redis's flags (`write`, `readonly`, `fast`, …).
    pub flags: &'static [&'static str],
    /// The first key's position (0: no keys).
    pub first_key: i64,
    /// The last key's position (-1: the last argument).
    pub last_key: i64,
    /// The step between keys.
    pub step: i64,
}

const fn spec(name: &'static str, arity: i64, flags: &'static [&'static str], first_key: i64, last_key: i64, step: i64) -> Spec {
    Spec { name, arity, flags, first_key, last_key, step }
}

const W: &[&str] = &["write", "denyoom"];
const R: &[&str] = &["readonly", "fast"];
const A: &[&str] = &["fast"];

/// Every command quorumkv speaks on its RESP port.
pub const COMMANDS: &[Spec] = &[
    spec("get", 2, R, 1, 1, 1),
    spec("set", -3, W, 1, 1, 1),
    spec("setnx", 3, W, 1, 1, 1),
    spec("getset", 3, W, 1, 1, 1),
    spec("del", -2, &["write"], 1, -1, 1),
    spec("exists", -2, R, 1, -1, 1),
    spec("type", 2, R, 1, 1, 1),
    spec("mget", -2, R, 1, -1, 1),
    spec("mset", -3, W, 1, -1, 2),
    spec("msetnx", -3, W, 1, -1, 2),
    spec("watch", -2, A, 1, -1, 1),
    spec("unwatch", 1, A, 0, 0, 0),
    spec("multi", 1, A, 0, 0, 0),
    spec("exec", 1, &["noscript"], 0, 0, 0),
    spec("discard", 1, A, 0, 0, 0),
    spec("scan", -2, &["readonly"], 0, 0, 0),
    spec("dbsize", 1, R, 0, 0, 0),
    spec("ping", -1, A, 0, 0, 0),
    spec("echo", 2, A, 0, 0, 0),
    spec("select", 2, A, 0, 0, 0),
    spec("quit", -1, A, 0, 0, 0),
    spec("hello", -1, A, 0, 0, 0),
    spec("client", -2, &["admin"], 0, 0, 0),
    spec("info", -1, &["loading"], 0, 0, 0),
    spec("command", -1, &["loading"], 0, 0, 0),
    spec("consistency", -1, A, 0, 0, 0),
    spec("config", -2, &["admin"], 0, 0, 0),
];

/// The spec of command `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// What `SET` does when the key exists or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetIf {
    /// Always.
    Always,
    /// `NX`: only if the key has no value.
    Absent,
    /// `XX`: only if it has one.
    Present,
}

/// `CLIENT` subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCmd {
    /// `CLIENT SETNAME name`.
    SetName(Vec<u8>),
    /// `CLIENT GETNAME`.
    GetName,
    /// `CLIENT ID`.
    Id,
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value` (accepted, remembered nowhere).
    SetInfo,
}

/// `COMMAND` subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandCmd {
    /// `COMMAND`: every command's description.
    All,
    /// `COMMAND COUNT`.
    Count,
    /// `COMMAND INFO name…`.
    Info(Vec<Vec<u8>>),
    /// `COMMAND DOCS …`: none kept (redis-cli falls back to its own help).
    Docs,
}

/// A command, checked and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// `GET key`
    Get(Vec<u8>),
    /// `SET key value [NX|XX] [GET]`
    Set {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// `NX`/`XX`.
        only: SetIf,
        /// `GET`: answer with the old value.
        get: bool,
    },
    /// `SETNX key value`
    SetNx(Vec<u8>, Vec<u8>),
    /// `GETSET key value`
    GetSet(Vec<u8>, Vec<u8>),
    /// `DEL key…`
    Del(Vec<Vec<u8>>),
    /// `EXISTS key…`
    Exists(Vec<Vec<u8>>),
    /// `TYPE key`
    Type(Vec<u8>),
    /// `MGET key…`
    MGet(Vec<Vec<u8>>),
    /// `MSET key value…`
    MSet(Pairs),
    /// `MSETNX key value…`
    MSetNx(Pairs),
    /// `WATCH key…`
    Watch(Vec<Vec<u8>>),
    /// `UNWATCH`
    Unwatch,
    /// `MULTI`
    Multi,
    /// `EXEC`
    Exec,
    /// `DISCARD`
    Discard,
    /// `SCAN cursor [MATCH pattern] [COUNT n]`
    Scan {
        /// The cursor (0: start).
        cursor: u64,
        /// Only keys matching this glob.
        pattern: Option<Vec<u8>>,
        /// Keys to look at (a hint, as in Redis).
        count: u32,
    },
    /// `DBSIZE`
    DbSize,
    /// `PING [message]`
    Ping(Option<Vec<u8>>),
    /// `ECHO message`
    Echo(Vec<u8>),
    /// `SELECT 0`
    Select,
    /// `QUIT`
    Quit,
    /// `HELLO [2|3 [SETNAME name]]`
    Hello {
        /// The protocol version asked for.
        version: Option<crate::resp::Version>,
        /// `SETNAME`'s name.
        name: Option<Vec<u8>>,
    },
    /// `CLIENT …`
    Client(ClientCmd),
    /// `INFO [section…]`: the sections asked (none: the default ones).
    Info(Vec<String>),
    /// `COMMAND …`
    Command(CommandCmd),
    /// `CONSISTENCY [level]`: set the connection's level, or tell it.
    Consistency(Option<Consistency>),
    /// `CONFIG GET parameter…`: the few Redis settings tools ask for.
    ConfigGet(Vec<Vec<u8>>),
}

/// Why a command was refused before anything was done: the whole error
/// reply (its code first).
pub type Refusal = String;

fn wrong_args(name: &str) -> Refusal {
    format!("ERR wrong number of arguments for '{name}' command")
}

fn syntax() -> Refusal {
    "ERR syntax error".into()
}

/// Redis's text for an unknown command, with the first arguments shown.
pub fn unknown(args: &[Vec<u8>]) -> Refusal {
    let mut s = format!("ERR unknown command '{}', with args beginning with: ", shown(&args[0]));
    for a in args.iter().skip(1).take(16) {
        s.push_str(&format!("'{}' ", shown(a)));
    }
    s
}

/// An argument as an error shows it: lossy UTF-8, cut to 128 characters.
pub fn shown(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().take(128).collect()
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Keys with their values, as `MSET` names them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn pairs(name: &str, args: Vec<Vec<u8>>) -> Result<Pairs, Refusal> {
    if !args.len().is_multiple_of(2) {
        return Err(wrong_args(name));
    }
    let mut out = Vec::with_capacity(args.len() / 2);
    let mut it = args.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// The first of the arguments left (the arity check made sure there is one).
fn take(rest: &mut Vec<Vec<u8>>) -> Vec<u8> {
    if rest.is_empty() { Vec::new() } else { rest.remove(0) }
}

/// A decimal integer argument.
fn integer(a: &[u8]) -> Option<i64> {
    std::str::from_utf8(a).ok()?.parse().ok()
}

impl Cmd {
    /// Checks and types a command (its name first, any case).
    pub fn parse(args: Vec<Vec<u8>>) -> Result<Cmd, Refusal> {
        let Some(name) = args.first() else { return Err("ERR empty command".into()) };
        let Some(spec) = lookup(name) else { return Err(unknown(&args)) };
        let n = args.len() as i64;
        if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
            return Err(wrong_args(spec.name));
        }
        let mut it = args.into_iter();
        it.next();
        let mut rest: Vec<Vec<u8>> = it.collect();
        Ok(match spec.name {
            "get" => Cmd::Get(take(&mut rest)),
            "set" => {
                let (key, value) = (take(&mut rest), take(&mut rest));
                let (mut only, mut get) = (SetIf::Always, false);
                for opt in rest {
                    if eq(&opt, "nx") && only == SetIf::Always {
                        only = SetIf::Absent;
                    } else if eq(&opt, "xx") && only == SetIf::Always {
                        only = SetIf::Present;
                    } else if eq(&opt, "get") && !get {
                        get = true;
                    } else if ["ex", "px", "exat", "pxat", "keepttl"].iter().any(|o| eq(&opt, o)) {
                        return Err(format!("ERR SET {}: quorumkv keys do not expire", shown(&opt).to_ascii_uppercase()));
                    } else {
                        return Err(syntax());
                    }
                }
                Cmd::Set { key, value, only, get }
            }
            "setnx" => Cmd::SetNx(take(&mut rest), take(&mut rest)),
            "getset" => Cmd::GetSet(take(&mut rest), take(&mut rest)),
            "del" => Cmd::Del(rest),
            "exists" => Cmd::Exists(rest),
            "type" => Cmd::Type(take(&mut rest)),
            "mget" => Cmd::MGet(rest),
            "mset" => Cmd::MSet(pairs("mset", rest)?),
            "msetnx" => Cmd::MSetNx(pairs("msetnx", rest)?),
            "watch" => Cmd::Watch(rest),
            "unwatch" => Cmd::Unwatch,
            "multi" => Cmd::Multi,
            "exec" => Cmd::Exec,
            "discard" => Cmd::Discard,
            "scan" => {
                let cursor = take(&mut rest);
                let cursor = std::str::from_utf8(&cursor).ok().and_then(|s| s.parse::<u64>().ok()).ok_or("ERR invalid cursor")?;
                let (mut pattern, mut count) = (None, crate::message::DEFAULT_SCAN_COUNT);
                let mut opts = rest.into_iter();
                while let Some(opt) = opts.next() {
                    let Some(arg) = opts.next() else { return Err(syntax()) };
                    if eq(&opt, "match") {
                        pattern = Some(arg);
                    } else if eq(&opt, "count") {
                        match integer(&arg) {
                            Some(c) if c >= 1 => count = c.min(crate::message::MAX_SCAN_COUNT as i64) as u32,
                            Some(_) => return Err(syntax()),
                            None => return Err("ERR value is not an integer or out of range".into()),
                        }
                    } else if eq(&opt, "type") {
                        if !eq(&arg, "string") {
                            return Err(format!("ERR SCAN TYPE {}: every quorumkv value is a string", shown(&arg)));
                        }
                    } else {
                        return Err(syntax());
                    }
                }
                Cmd::Scan { cursor, pattern, count }
            }
            "dbsize" => Cmd::DbSize,
            "ping" => match rest.len() {
                0 => Cmd::Ping(None),
                1 => Cmd::Ping(Some(take(&mut rest))),
                _ => return Err(wrong_args("ping")),
            },
            "echo" => Cmd::Echo(take(&mut rest)),
            "select" => match integer(&take(&mut rest)) {
                Some(0) => Cmd::Select,
                Some(_) => return Err("ERR DB index is out of range".into()),
                None => return Err("ERR value is not an integer or out of range".into()),
            },
            "quit" => Cmd::Quit,
            "hello" => {
                let (mut name, mut version) = (None, None);
                if !rest.is_empty() {
                    match integer(&take(&mut rest)) {
                        Some(2) => version = Some(crate::resp::Version::Resp2),
                        Some(3) => version = Some(crate::resp::Version::Resp3),
                        Some(_) => return Err("NOPROTO unsupported protocol version (quorumkv speaks RESP2 and RESP3)".into()),
                        None => return Err("ERR Protocol version is not an integer or out of range".into()),
                    }
                }
                let mut opts = rest.into_iter();
                while let Some(opt) = opts.next() {
                    if eq(&opt, "setname") {
                        name = Some(opts.next().ok_or_else(syntax)?);
                    } else if eq(&opt, "auth") {
                        return Err("ERR AUTH: quorumkv has no passwords; connect without AUTH".into());
                    } else {
                        return Err(format!("ERR Syntax error in HELLO option '{}'", shown(&opt)));
                    }
                }
                Cmd::Hello { version, name }
            }
            "client" => {
                let sub = take(&mut rest);
                let c = if eq(&sub, "setname") && rest.len() == 1 {
                    let name = take(&mut rest);
                    if name.iter().any(|&b| b <= b' ' || b > b'~') {
                        return Err("ERR Client names cannot contain spaces, newlines or special characters.".into());
                    }
                    ClientCmd::SetName(name)
                } else if eq(&sub, "getname") && rest.is_empty() {
                    ClientCmd::GetName
                } else if eq(&sub, "id") && rest.is_empty() {
                    ClientCmd::Id
                } else if eq(&sub, "setinfo") && rest.len() == 2 {
                    ClientCmd::SetInfo
                } else {
                    return Err(format!(
                        "ERR unknown subcommand or wrong number of arguments for 'CLIENT|{}'; quorumkv has SETNAME, GETNAME, ID, SETINFO",
                        shown(&sub)
                    ));
                };
                Cmd::Client(c)
            }
            "info" => Cmd::Info(rest.iter().map(|s| shown(s).to_ascii_lowercase()).collect()),
            "command" => {
                if rest.is_empty() {
                    Cmd::Command(CommandCmd::All)
                } else {
                    let sub = take(&mut rest);
                    if eq(&sub, "count") && rest.is_empty() {
                        Cmd::Command(CommandCmd::Count)
                    } else if eq(&sub, "info") {
                        Cmd::Command(CommandCmd::Info(rest))
                    } else if eq(&sub, "docs") {
                        Cmd::Command(CommandCmd::Docs)
                    } else {
                        return Err(format!(
                            "ERR unknown subcommand or wrong number of arguments for 'COMMAND|{}'; quorumkv has COUNT, INFO, DOCS",
                            shown(&sub)
                        ));
                    }
                }
            }
            "consistency" => match rest.len() {
                0 => Cmd::Consistency(None),
                1 => match Consistency::parse(&shown(&rest[0])) {
                    Some(l) => Cmd::Consistency(Some(l)),
                    None => return Err(format!("ERR consistency level '{}'; ONE, QUORUM, ALL or SERIAL", shown(&rest[0]))),
                },
                _ => return Err(wrong_args("consistency")),
            },
            "config" => {
                let sub = take(&mut rest);
                if eq(&sub, "get") && !rest.is_empty() {
                    Cmd::ConfigGet(rest)
                } else {
                    return Err(format!(
                        "ERR CONFIG {}: quorumkv has CONFIG GET only; its settings are each replica's flags",
                        shown(&sub).to_ascii_uppercase()
                    ));
                }
            }
            other => return Err(format!("ERR internal: command '{other}' has no parser")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Cmd, Refusal> {
        Cmd::parse(crate::resp::split_args(s.as_bytes()).unwrap())
    }

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn commands_parse_in_any_case_with_their_options() {
        assert_eq!(p("get k"), Ok(Cmd::Get(b("k"))));
        assert_eq!(p("SeT k v"), Ok(Cmd::Set { key: b("k"), value: b("v"), only: SetIf::Always, get: false }));
        assert_eq!(p("set k v nx get"), Ok(Cmd::Set { key: b("k"), value: b("v"), only: SetIf::Absent, get: true }));
        assert_eq!(p("set k v XX"), Ok(Cmd::Set { key: b("k"), value: b("v"), only: SetIf::Present, get: false }));
        assert_eq!(p("mset a 1 b 2"), Ok(Cmd::MSet(vec![(b("a"), b("1")), (b("b"), b("2"))])));
        assert_eq!(p("del a b"), Ok(Cmd::Del(vec![b("a"), b("b")])));
        assert_eq!(p("scan 0"), Ok(Cmd::Scan { cursor: 0, pattern: None, count: 10 }));
        assert_eq!(p("scan 7 match k* count 100"), Ok(Cmd::Scan { cursor: 7, pattern: Some(b("k*")), count: 100 }));
        assert_eq!(p("consistency one"), Ok(Cmd::Consistency(Some(Consistency::One))));
        assert_eq!(p("client setname app"), Ok(Cmd::Client(ClientCmd::SetName(b("app")))));
        assert_eq!(p("hello 2 setname x"), Ok(Cmd::Hello { version: Some(crate::resp::Version::Resp2), name: Some(b("x")) }));
        assert_eq!(p("hello 3"), Ok(Cmd::Hello { version: Some(crate::resp::Version::Resp3), name: None }));
        assert_eq!(p("command docs"), Ok(Cmd::Command(CommandCmd::Docs)));
        assert_eq!(p("select 0"), Ok(Cmd::Select));
    }

    #[test]
    fn wrong_commands_get_redis_s_error_texts() {
        assert_eq!(p("get"), Err("ERR wrong number of arguments for 'get' command".into()));
        assert_eq!(p("get a b"), Err("ERR wrong number of arguments for 'get' command".into()));
        assert_eq!(p("mset a 1 b"), Err("ERR wrong number of arguments for 'mset' command".into()));
        assert_eq!(p("set k v nx xx"), Err("ERR syntax error".into()));
        assert_eq!(p("set k v get get"), Err("ERR syntax error".into()));
        assert_eq!(p("flushall now"), Err("ERR unknown command 'flushall', with args beginning with: 'now' ".into()));
        assert_eq!(p("scan x"), Err("ERR invalid cursor".into()));
        assert_eq!(p("scan 0 count 0"), Err("ERR syntax error".into()));
        assert_eq!(p("scan 0 count"), Err("ERR syntax error".into()));
        assert_eq!(p("select 1"), Err("ERR DB index is out of range".into()));
        assert!(p("hello 4").unwrap_err().starts_with("NOPROTO"));
        assert!(p("set k v ex 10").unwrap_err().contains("do not expire"));
        assert!(p("consistency twice").unwrap_err().contains("ONE, QUORUM, ALL or SERIAL"));
        assert!(p("client kill x").unwrap_err().starts_with("ERR unknown subcommand"));
        assert_eq!(Cmd::parse(vec![]), Err("ERR empty command".into()));
    }

    #[test]
    fn every_command_in_the_table_has_a_parser() {
        for s in COMMANDS {
            // Enough arguments for any arity; the parser may refuse them, but never as unparsed.
            let mut args = vec![s.name.as_bytes().to_vec()];
            args.extend((1..s.arity.unsigned_abs()).map(|i| format!("{i}").into_bytes()));
            if let Err(e) = Cmd::parse(args) {
                assert!(!e.contains("has no parser") && !e.starts_with("ERR wrong number of arguments"), "{}: {e}", s.name);
            }
        }
    }
}
