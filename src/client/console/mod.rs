//! The console: command parsing, execution against a coordinator, and output.
//!
//! The `client` binary reads lines (or one command from its arguments), turns
//! them into [`Command`]s with [`tokenize`] and [`parse()`], and runs them with
//! a [`Session`]. Parsing never panics and names what is wrong with the input;
//! every outcome maps to the exit status documented in the README
//! ([`Outcome::exit_code`]).
//!
//! # One-shot and interactive
//!
//! The binary first opens a [`Session`] with [`Session::connect`]; if the
//! coordinator cannot be reached it exits with status 4 in either mode.
//!
//! **One-shot** (`client HOST PORT [-c CL] COMMAND ARGS...`): the shell has
//! already split the words, so the arguments go straight to [`parse()`] without
//! [`tokenize`]. The session runs the command once with [`Session::console`]
//! off, and the process exits with the command's [`Outcome::exit_code`]. A
//! `get` then prints the value alone; a missing key prints nothing on stdout,
//! only `key N not found` on stderr, and exits 1.
//!
//! **Interactive** (no command): the binary reads stdin line by line, with a
//! banner and a prompt on a terminal and silently from a pipe, so scripts work
//! like typed input. Each line goes through [`tokenize`] (whitespace separates;
//! `"…"` and `'…'` group; inside double quotes `\"` and `\\` escape); empty
//! lines and lines whose first word starts with `#` are skipped; [`parse()`]
//! makes the [`Command`]. A tokenizer or parser error is printed and the next
//! line is read. `quit`, `exit` or end of input leaves, with status 0 whatever
//! the commands did. A missing key prints `(not found)` on stdout.
//!
//! # Commands
//!
//! [`HELP`] lists them, and is also the `--help` epilogue of the binary:
//! `get`, `put`, `del` (each with an optional level), `consistency` (show or
//! set the session's default level, ONE until changed by `-c` or by this
//! command), `status`, `inspect`, `display`, `token` (a key's token, slot and
//! replicas), `ring` (each node's tokens, share of the data and keys held; a
//! view of `status`), `scan` (a page of every key, from a cursor), `fault`
//! (fault injection on the replica connected to), `help` and `quit`.
//! Keywords are case-insensitive; keys are 0 to 255 in a byte-ordered
//! cluster, any text in a murmur3 one.
//!
//! Two commands print differently one-shot, for scripts: `token` prints the
//! token alone on its first line, then the slot, then each replica on a line
//! of its own; `scan` walks every page from the cursor given (the start if
//! none) and prints each key's bytes as they are, one key a line.
//!
//! Results go to `out` (stdout), errors to `err` (stderr) prefixed `error:`.
//! The session keeps one connection; after a connection error
//! ([`Error::Io`](crate::error::Error::Io) or
//! [`Error::Protocol`](crate::error::Error::Protocol)) it drops it, and the
//! next command reconnects. [`format_status`], [`format_ring`],
//! [`format_inspect`], [`format_display`] and [`format_token`] render the
//! replies of the inspection commands, [`fmt_cursor`] a scan's cursor.
//!
//! # Exit statuses
//!
//! | status | [`Outcome`] | meaning |
//! |---|---|---|
//! | 0 | `Ok`, `Quit` | success |
//! | 1 | `NotFound` | `get` found no value |
//! | 2 | `BadInput` | bad usage or input: the command did not parse, or the replica refused the request as invalid |
//! | 3 | `Refused` | the store refused: unavailable, timeout, failure, overloaded |
//! | 4 | `Unreachable` | no connection to the coordinator, or it broke |
//! | 5 | `NotApplied` | a conditional `put`/`del` (`if OLD`, `if absent`) found the condition false; one-shot, stdout has the current value (nothing if none) |
//!
//! A conditional write prints `applied`, or `not applied (current: "VALUE")`
//! (`(current: none)` when the key has no value), like CQL's `[applied]`. A
//! SERIAL operation that timed out after proposing is an error (status 3)
//! saying it may or may not have been applied.
//!
//! # Layout
//!
//! - `parse.rs`: [`HELP`], [`Command`], [`tokenize`] and [`parse()`].
//! - `format.rs`: the output of `status`, `ring`, `inspect`, `display` and
//!   `token`, the scan cursor's notation, and the timestamp notation `put`
//!   and `del` print.
//! - `session.rs`: [`Session`] (connection, default level, running a command)
//!   and [`Outcome`].
//!
//! The three modules are private; everything public is re-exported here, so
//! the paths are `quorumkv::client::console::X`.

mod format;
mod parse;
mod session;

pub use format::{fmt_cursor, format_display, format_inspect, format_ring, format_status, format_token};
pub use parse::{Command, Condition, HELP, Value, parse, tokenize};
pub use session::{Outcome, Session};
