//! The data folder's partitioner: recorded on the folder's first use, checked
//! at every start.
//!
//! Logs and snapshots hold keys, not slots: a key's store slot, and which
//! replicas hold it, come from the cluster's partitioner. Replayed under
//! another partitioner, a folder's keys would land in the wrong slots without
//! a word (a murmur3 cluster's string keys all in slot 0 of a byte-ordered
//! store; a byte-ordered cluster's keys on the wrong replicas of a murmur3
//! ring). So, as Cassandra refuses to start when the configured partitioner
//! differs from the one in its system keyspace, the folder remembers its
//! partitioner in a small text file, [`PARTITIONER_FILE`] (written like the
//! snapshot: a temporary file, fsynced, renamed, the folder fsynced), and
//! [`check_partitioner`] refuses a start whose cluster file names another one
//! before anything in the folder is read or changed:
//!
//! | the folder holds | configured partitioner accepted if | then |
//! |------------------|------------------------------------|------|
//! | a record | it is the recorded one | — |
//! | no record, version 1 files (`QKVLOG01`, `QKVSNAP1`: the seed's integer keys) | it is byte-ordered | recorded |
//! | no record otherwise (a new or empty folder, or one written before the record existed) | always | recorded |

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use log::info;

use super::record::{LOG_MAGIC_V1, SNAP_MAGIC_V1};
use super::snapshot::SNAPSHOT_FILE;
use super::{io_err, list_logs, log_path, write_atomically};
use crate::cluster::key::Partitioner;
use crate::error::{Error, Result};

/// The name of the record in the data folder.
pub const PARTITIONER_FILE: &str = "partitioner";

/// What the record says, line by line (`#` lines are comments).
fn record_text(p: Partitioner) -> String {
    format!(
        "# The partitioner of the cluster whose data this folder holds, written by quorumkv.\n\
         # A replica refuses to start on this folder with a cluster file of another partitioner.\n\
         partitioner {}\n",
        p.name()
    )
}

/// The partitioner a record names: one `partitioner NAME` line besides
/// comments and blank lines; `None` if the text is anything else.
fn parse_record(text: &str) -> Option<Partitioner> {
    let mut found = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match (fields.as_slice(), found) {
            (["partitioner", name], None) => found = Some(Partitioner::from_name(name)?),
            _ => return None,
        }
    }
    found
}

/// Whether the file at `path` starts with `magic` (false if there is no such file).
fn starts_with(path: &Path, magic: &[u8]) -> Result<bool> {
    let mut head = Vec::with_capacity(magic.len());
    match File::open(path).and_then(|f| f.take(magic.len() as u64).read_to_end(&mut head)) {
        Ok(_) => Ok(head == magic),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("cannot read", path, e)),
    }
}

/// A file of the seed's format (version 1, integer keys) in `dir`, if any.
fn version_1_file(dir: &Path) -> Result<Option<PathBuf>> {
    let snapshot = dir.join(SNAPSHOT_FILE);
    if starts_with(&snapshot, SNAP_MAGIC_V1)? {
        return Ok(Some(snapshot));
    }
    let mut seqs = list_logs(dir)?;
    seqs.sort_unstable();
    for seq in seqs {
        let log = log_path(dir, seq);
        if starts_with(&log, LOG_MAGIC_V1)? {
            return Ok(Some(log));
        }
    }
    Ok(None)
}

/// Checks that the data in `dir` was written under `configured`, the
/// partitioner of the cluster file this replica was started with, and records
/// it if the folder has no record yet (see the module docs). A folder of
/// another partitioner is refused, and left as it was, with an error naming
/// the folder, both partitioners and what to do.
pub fn check_partitioner(dir: &Path, configured: Partitioner) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| io_err("cannot create data folder", dir, e))?;
    let path = dir.join(PARTITIONER_FILE);
    let (found, why) = match fs::read_to_string(&path) {
        Ok(text) => {
            let Some(p) = parse_record(&text) else {
                return Err(Error::Storage(format!(
                    "{}: not a partitioner record (expected one line `partitioner byte-ordered` or `partitioner murmur3`); \
                     refusing to start without knowing how this folder's keys were placed. Write the line naming the \
                     partitioner its data was written under, or point --data-dir at an empty folder",
                    path.display()
                )));
            };
            (Some(p), format!("recorded in {}", path.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => match version_1_file(dir)? {
            Some(old) => (
                Some(Partitioner::ByteOrdered),
                format!("its version 1 file {} holds the integer keys of the seed's byte-ordered ring", old.display()),
            ),
            None => (None, String::new()),
        },
        Err(e) => return Err(io_err("cannot read", &path, e)),
    };
    if let Some(found) = found.filter(|&p| p != configured) {
        return Err(Error::Config(format!(
            "data folder {} holds the data of a {} cluster ({why}), but the cluster file says `partitioner {}`; \
             refusing to start, since its keys would be placed by the wrong partitioner. To start this replica \
             empty under {}, point --data-dir at an empty folder; to keep its data, restore the old cluster file \
             (`partitioner {}`)",
            dir.display(),
            found.name(),
            configured.name(),
            configured.name(),
            found.name()
        )));
    }
    if !path.exists() {
        write_atomically(dir, PARTITIONER_FILE, record_text(configured).as_bytes())?;
        info!("recorded partitioner {} in {}", configured.name(), path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{Dir, cell};
    use super::super::{FsyncMode, Wal};
    use super::*;

    /// Every file in `dir` with its contents.
    fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    fn recorded(dir: &Path) -> Option<Partitioner> {
        parse_record(&fs::read_to_string(dir.join(PARTITIONER_FILE)).ok()?)
    }

    /// A new folder gets the record; the same partitioner is accepted again, the
    /// other one is refused with every fact the operator needs, and the folder
    /// is left exactly as it was.
    #[test]
    fn a_new_folder_records_its_partitioner_and_refuses_another() {
        for (first, other) in [(Partitioner::ByteOrdered, Partitioner::Murmur3), (Partitioner::Murmur3, Partitioner::ByteOrdered)] {
            let d = Dir::new("part-new");
            check_partitioner(&d.0, first).unwrap();
            assert_eq!(recorded(&d.0), Some(first));
            let (wal, _) = Wal::open(&d.0, FsyncMode::Always).unwrap();
            wal.commit(wal.append(&cell(5, 1, "v")).unwrap()).unwrap();
            drop(wal);
            check_partitioner(&d.0, first).unwrap();
            let before = contents(&d.0);
            let err = check_partitioner(&d.0, other).unwrap_err();
            let m = err.to_string();
            assert!(matches!(err, Error::Config(_)), "{m}");
            for want in [
                d.0.display().to_string(),
                format!("a {} cluster", first.name()),
                format!("recorded in {}", d.0.join(PARTITIONER_FILE).display()),
                format!("the cluster file says `partitioner {}`", other.name()),
                "refusing to start".into(),
                "point --data-dir at an empty folder".into(),
                format!("restore the old cluster file (`partitioner {}`)", first.name()),
            ] {
                assert!(m.contains(&want), "want {want:?} in {m}");
            }
            assert_eq!(contents(&d.0), before, "a refused start changes nothing in the folder");
        }
    }

    /// Written before the record existed: version 1 files imply byte-ordered,
    /// version 2 data takes the configured partitioner.
    #[test]
    fn a_folder_without_a_record_is_judged_by_its_files() {
        for (magic, name) in [(LOG_MAGIC_V1, "wal-0000000000000003.log"), (SNAP_MAGIC_V1, SNAPSHOT_FILE)] {
            let d = Dir::new("part-v1");
            fs::create_dir_all(&d.0).unwrap();
            fs::write(d.0.join(name), magic).unwrap();
            let m = check_partitioner(&d.0, Partitioner::Murmur3).unwrap_err().to_string();
            assert!(m.contains(&format!("version 1 file {}", d.0.join(name).display())) && m.contains("byte-ordered cluster"), "{m}");
            assert_eq!(recorded(&d.0), None, "nothing recorded for a refused start");
            check_partitioner(&d.0, Partitioner::ByteOrdered).unwrap();
            assert_eq!(recorded(&d.0), Some(Partitioner::ByteOrdered));
        }
        for p in [Partitioner::ByteOrdered, Partitioner::Murmur3] {
            let d = Dir::new("part-v2");
            let (wal, _) = Wal::open(&d.0, FsyncMode::Always).unwrap();
            wal.commit(wal.append(&cell(5, 1, "v")).unwrap()).unwrap();
            drop(wal);
            check_partitioner(&d.0, p).unwrap();
            assert_eq!(recorded(&d.0), Some(p));
            assert!(!d.0.join("partitioner.tmp").exists());
        }
    }

    /// A record that names no partitioner refuses the start, naming the file.
    #[test]
    fn a_damaged_record_refuses_to_start() {
        assert_eq!(parse_record(&record_text(Partitioner::Murmur3)), Some(Partitioner::Murmur3));
        assert_eq!(parse_record("partitioner byte-ordered # old\n\n"), Some(Partitioner::ByteOrdered));
        for text in ["", "partitioner\n", "partitioner random\n", "partitioner murmur3\npartitioner murmur3\n", "rf 3\n"] {
            assert_eq!(parse_record(text), None, "{text:?}");
            let d = Dir::new("part-bad");
            fs::create_dir_all(&d.0).unwrap();
            fs::write(d.0.join(PARTITIONER_FILE), text).unwrap();
            let m = check_partitioner(&d.0, Partitioner::Murmur3).unwrap_err().to_string();
            assert!(m.contains(&format!("{}: not a partitioner record", d.0.join(PARTITIONER_FILE).display())), "{m}");
        }
    }
}
