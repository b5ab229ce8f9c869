//! The witness file: every signed checkpoint note, appended and fsync'd outside the database
//! (in production on another disk or host). Someone who can rewrite the database cannot take a
//! note back out of the witness, so the verifier uses it to catch deleted checkpoint rows and
//! a truncated tail.
//!
//! Format: the notes one after another, each followed by one empty line. Our notes have no
//! empty line inside their body, so a reader splits records at the empty line that follows a
//! signature block. A record torn by a crash is reported by the verifier as malformed; the
//! writer starts its next record on a fresh line.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::checkpoint::parse_unverified;
use crate::error::AuditError;

/// The witness file, open for appending.
#[derive(Debug)]
pub struct Witness {
    path: PathBuf,
    file: File,
    last_tree_size: u64,
}

/// Largest witness file read, in bytes (about 300 000 checkpoints).
pub const MAX_WITNESS_BYTES: u64 = 64 * 1024 * 1024;

impl Witness {
    /// Opens (creating if needed, and then fsyncing its directory) the witness file.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(AuditError::io("open witness file", path))?;
        if !existed {
            file.sync_all()
                .map_err(AuditError::io("sync witness file", path))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(AuditError::io("sync witness directory", dir))?;
            }
        }
        let text = read_text(path)?;
        let last_tree_size = split_records(&text)
            .iter()
            .filter_map(|r| parse_unverified(r).ok())
            .map(|c| c.tree_size)
            .max()
            .unwrap_or(0);
        if !text.is_empty() && !text.ends_with("\n\n") {
            // A torn record from a crash: end it so the next record starts clean.
            file.write_all(b"\n\n")
                .and_then(|()| file.sync_data())
                .map_err(AuditError::io("repair witness file", path))?;
        }
        Ok(Witness {
            path: path.to_owned(),
            file,
            last_tree_size,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The largest tree size among the notes in the file (0 if none).
    pub fn last_tree_size(&self) -> u64 {
        self.last_tree_size
    }

    /// Appends one note and fsyncs before returning.
    pub fn append(&mut self, note: &str, tree_size: u64) -> Result<(), AuditError> {
        let mut record = Vec::with_capacity(note.len() + 1);
        record.extend_from_slice(note.as_bytes());
        record.push(b'\n');
        self.file
            .write_all(&record)
            .and_then(|()| self.file.sync_data())
            .map_err(AuditError::io("append to witness file", &self.path))?;
        self.last_tree_size = self.last_tree_size.max(tree_size);
        Ok(())
    }
}

fn read_text(path: &Path) -> Result<String, AuditError> {
    let len = std::fs::metadata(path)
        .map_err(AuditError::io("stat witness file", path))?
        .len();
    if len > MAX_WITNESS_BYTES {
        return Err(AuditError::Io {
            op: "read witness file",
            path: path.display().to_string(),
            source: std::io::Error::other("witness file is over the size limit"),
        });
    }
    let bytes = std::fs::read(path).map_err(AuditError::io("read witness file", path))?;
    // Invalid UTF-8 is kept visible (replacement characters make the note fail to verify)
    // rather than failing the whole read.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads every record of a witness file as note text.
pub fn read_notes(path: &Path) -> Result<Vec<String>, AuditError> {
    Ok(split_records(&read_text(path)?))
}

/// Splits witness text into note texts (pure).
pub fn split_records(text: &str) -> Vec<String> {
    #[derive(PartialEq)]
    enum State {
        Body,
        Signatures,
    }
    let mut out = Vec::new();
    let mut current = String::new();
    let mut signatures = 0usize;
    let mut state = State::Body;
    for line in text.split_inclusive('\n') {
        let bare = line.strip_suffix('\n').unwrap_or(line);
        match state {
            State::Body => {
                if bare.is_empty() {
                    if current.is_empty() {
                        // Blank lines between records.
                        continue;
                    }
                    state = State::Signatures;
                }
                current.push_str(line);
            }
            State::Signatures => {
                if bare.starts_with('\u{2014}') {
                    signatures += 1;
                    current.push_str(line);
                } else if bare.is_empty() && signatures > 0 {
                    out.push(std::mem::take(&mut current));
                    signatures = 0;
                    state = State::Body;
                } else {
                    // A record cut short: keep what there is (it will not verify) and start
                    // over with this line.
                    out.push(std::mem::take(&mut current));
                    signatures = 0;
                    state = State::Body;
                    if !bare.is_empty() {
                        current.push_str(line);
                    }
                }
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, CheckpointSigner, LogName};
    use crate::hash::RowHash;

    fn note(size: u64) -> String {
        CheckpointSigner::from_seed(LogName::default_name(), &[1; 32]).sign(&Checkpoint {
            tree_size: size,
            head: RowHash([size as u8; 32]),
        })
    }

    #[test]
    fn notes_round_trip_and_a_torn_record_is_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness");
        let mut w = Witness::open(&path).unwrap();
        assert_eq!(w.last_tree_size(), 0);
        w.append(&note(100), 100).unwrap();
        w.append(&note(200), 200).unwrap();
        drop(w);
        assert_eq!(read_notes(&path).unwrap(), vec![note(100), note(200)]);

        // Simulate a crash in the middle of a write.
        let torn = &note(300)[..30];
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(torn.as_bytes()).unwrap();
        drop(f);
        let mut w = Witness::open(&path).unwrap();
        assert_eq!(w.last_tree_size(), 200);
        w.append(&note(300), 300).unwrap();
        let notes = read_notes(&path).unwrap();
        assert_eq!(notes.len(), 4);
        assert_eq!(notes[0], note(100));
        assert_eq!(notes[1], note(200));
        assert!(parse_unverified(&notes[2]).is_err());
        assert_eq!(notes[3], note(300));
        assert_eq!(Witness::open(&path).unwrap().last_tree_size(), 300);
    }
}
