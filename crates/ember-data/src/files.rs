//! Writing files so that a crash never leaves half of one, and checking what was written.
//!
//! Every crate of Ember that writes a file a later run depends on (shards, weights,
//! checkpoints, run files) goes through [`write_atomic`]; checkpoints and models record
//! the [`sha256_hex`] of each file and check it on load.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Prefix of the temporary files [`write_atomic`] creates next to their target, so that
/// the ones a killed process left behind can be recognised and removed
/// ([`remove_stale_temporaries`]).
pub const TEMP_PREFIX: &str = ".ember-tmp-";

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced,
/// then renamed over the target (and the directory synced), so a crash leaves either the
/// old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] for content produced by `write` (which may write in pieces).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename durable (best effort: not every platform can sync a directory).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes the temporary files of [`write_atomic`] in `dir` that a killed process left
/// behind (they can be as large as a model). Returns how many were removed; a missing
/// directory holds none.
pub fn remove_stale_temporaries(dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && entry.file_type()?.is_file()
        {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The SHA-256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The SHA-256 of a file's content, as 64 lowercase hex digits, read in pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The name of the checksum manifest written beside checkpoints and models, in the
/// format of `sha256sum` (so `sha256sum -c SHA256SUMS` checks a directory by hand too).
pub const CHECKSUMS_FILE: &str = "SHA256SUMS";

/// A file that does not hold what its manifest says.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    /// A file could not be read.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A manifest line that is not `HEX  NAME` naming a file in the directory.
    #[error("{}: malformed line {line}", path.display())]
    Malformed {
        /// The manifest.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A file whose content changed since it was written.
    #[error("{} is corrupt: its SHA-256 is {actual}, the manifest says {expected}", path.display())]
    Mismatch {
        /// The file.
        path: std::path::PathBuf,
        /// What the manifest records.
        expected: String,
        /// What the file holds now.
        actual: String,
    },
}

/// Writes `dir/SHA256SUMS` for the files `names` of `dir` (atomically, after them).
pub fn write_checksums(dir: &Path, names: &[&str]) -> Result<(), ChecksumError> {
    let mut manifest = String::new();
    for name in names {
        let path = dir.join(name);
        let sum = sha256_file(&path).map_err(|source| ChecksumError::Io { path, source })?;
        manifest.push_str(&format!("{sum}  {name}\n"));
    }
    let path = dir.join(CHECKSUMS_FILE);
    write_atomic(&path, manifest.as_bytes()).map_err(|source| ChecksumError::Io { path, source })
}

/// Checks every file listed in `dir/SHA256SUMS`; `Ok(false)` when there is no manifest
/// (a directory Ember did not write), `Ok(true)` when every file matches.
pub fn verify_checksums(dir: &Path) -> Result<bool, ChecksumError> {
    let manifest_path = dir.join(CHECKSUMS_FILE);
    let manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(ChecksumError::Io {
                path: manifest_path,
                source,
            });
        }
    };
    for (i, line) in manifest
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let malformed = || ChecksumError::Malformed {
            path: manifest_path.clone(),
            line: i + 1,
        };
        let (expected, name) = line.split_once("  ").ok_or_else(malformed)?;
        // Only plain file names beside the manifest: never a path out of the directory.
        if expected.len() != 64 || name.contains('/') || name.contains('\\') || name == ".." {
            return Err(malformed());
        }
        let path = dir.join(name);
        let actual = sha256_file(&path).map_err(|source| ChecksumError::Io {
            path: path.clone(),
            source,
        })?;
        if actual != expected {
            return Err(ChecksumError::Mismatch {
                path,
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(true)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // What a killed writer leaves behind is recognised and removed.
        std::fs::write(dir.path().join(format!("{TEMP_PREFIX}abc")), b"junk").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert_eq!(
            remove_stale_temporaries(&dir.path().join("none")).unwrap(),
            0
        );
        assert!(path.exists());
    }

    #[test]
    fn manifests_catch_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!verify_checksums(dir.path()).unwrap());
        std::fs::write(dir.path().join("a.bin"), b"abc").unwrap();
        write_checksums(dir.path(), &["a.bin"]).unwrap();
        assert!(verify_checksums(dir.path()).unwrap());
        let manifest = std::fs::read_to_string(dir.path().join(CHECKSUMS_FILE)).unwrap();
        assert_eq!(manifest, format!("{}  a.bin\n", sha256_hex(b"abc")));
        std::fs::write(dir.path().join("a.bin"), b"abd").unwrap();
        let err = verify_checksums(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a.bin is corrupt"), "{err}");
        std::fs::write(dir.path().join(CHECKSUMS_FILE), "x  ../etc/passwd\n").unwrap();
        assert!(matches!(
            verify_checksums(dir.path()),
            Err(ChecksumError::Malformed { line: 1, .. })
        ));
    }

    #[test]
    fn sha256_of_known_values() {
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(b"abc"));
    }
}
