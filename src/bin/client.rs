//! `client HOST PORT [-c CL] [COMMAND ARGS...]`: the quorumkv console.
//!
//! Without a command it reads commands line by line: with a prompt on a
//! terminal, silently from a pipe. With a command it runs that one command and
//! exits with its status: 0 success, 1 key not found, 2 bad usage or input,
//! 3 the store refused (unavailable, timeout), 4 cannot connect, 5 a
//! conditional `put`/`del` (`if OLD`, `if absent`) was not applied (the
//! current value is printed on stdout). One-shot,
//! `token KEY` prints the token alone on its first line (then the slot, then
//! each replica), and `scan` walks every page and prints each key's bytes, one
//! key a line (see [`quorumkv::client::console`]).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use quorumkv::client::console::{Command, Outcome, Session, parse, tokenize};
use quorumkv::cluster::consistency::Consistency;

/// Console client for a quorumkv coordinator.
#[derive(Parser, Debug)]
#[command(version, about, after_help = quorumkv::client::console::HELP)]
struct Args {
    /// Coordinator host.
    host: String,
    /// Coordinator port.
    port: u16,
    /// Default consistency level: ONE, QUORUM, ALL or SERIAL.
    #[arg(short = 'c', long = "consistency", value_parser = parse_level)]
    level: Option<Consistency>,
    /// A command to run once (e.g. `get 5`), instead of the console.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_level(s: &str) -> Result<Consistency, String> {
    Consistency::parse(s).ok_or_else(|| format!("unknown consistency level {s:?}: use ONE, QUORUM, ALL or SERIAL"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    // A one-shot command is checked before connecting: a typo is bad input (2) whether or not the coordinator is up.
    let one_shot = if args.command.is_empty() {
        None
    } else {
        match parse(&args.command) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(Outcome::BadInput.exit_code());
            }
        }
    };
    let mut session = match Session::connect(&args.host, args.port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(Outcome::Unreachable.exit_code());
        }
    };
    if let Some(l) = args.level {
        session.default_level = l;
    }
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    if let Some(cmd) = one_shot {
        session.console = false;
        let outcome = session.execute(cmd, &mut stdout.lock(), &mut stderr.lock());
        return ExitCode::from(outcome.exit_code());
    }
    let interactive = std::io::stdin().is_terminal();
    let prompt = if interactive {
        let name = session.coordinator_name().unwrap_or_else(|_| format!("{}:{}", args.host, args.port));
        println!("Connected to {name} at {}:{}. Type help for commands.", args.host, args.port);
        format!("quorumkv {name}> ")
    } else {
        String::new()
    };
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            print!("{prompt}");
            let _ = std::io::stdout().flush();
        }
        let line = match lines.next() {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                eprintln!("error: cannot read input: {e}");
                return ExitCode::from(Outcome::BadInput.exit_code());
            }
            None => break,
        };
        let words = match tokenize(&line) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        if words.is_empty() || words[0].starts_with('#') {
            continue;
        }
        let cmd = match parse(&words) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        if cmd == Command::Quit {
            break;
        }
        session.execute(cmd, &mut stdout.lock(), &mut stderr.lock());
    }
    if interactive {
        println!();
    }
    ExitCode::SUCCESS
}
