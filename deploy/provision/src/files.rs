//! File primitives: private directories, secret-mode checks and atomic writes.
//!
//! Every write goes to a temporary file in the same directory (created with its final mode, so
//! a secret is never briefly readable), is synced, and then either hard-linked into place
//! (`create_new`: fails if the target exists, so an existing secret is never overwritten, even by
//! a concurrent run) or renamed over the target (`replace`: for derived, public files).

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::ProvisionError;

/// Mode of secret files.
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode of public files.
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode of every directory in the layout.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Bits that must be clear on a secret file or private directory.
const GROUP_OTHER: u32 = 0o077;

/// Creates `dir` (and missing parents) with mode 0700, or checks that an existing one is not open
/// to group or others.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), ProvisionError> {
    match fs::metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(ProvisionError::malformed(dir, "expected a directory"));
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode & GROUP_OTHER != 0 {
                return Err(ProvisionError::InsecurePermissions {
                    path: dir.to_path_buf(),
                    mode,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| ProvisionError::io("create directory", dir, e)),
        Err(e) => Err(ProvisionError::io("stat", dir, e)),
    }
}

/// Refuses a secret file that group or others may read or write.
pub(crate) fn check_secret_mode(path: &Path) -> Result<(), ProvisionError> {
    let meta = fs::metadata(path).map_err(|e| ProvisionError::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(ProvisionError::malformed(path, "expected a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER != 0 {
        return Err(ProvisionError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Whether `path` exists (a dangling symlink counts as existing, so it is never written through).
pub(crate) fn exists(path: &Path) -> Result<bool, ProvisionError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ProvisionError::io("stat", path, e)),
    }
}

/// Reads a file, refusing it first if it is a secret with a loose mode.
pub(crate) fn read_secret(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, ProvisionError> {
    check_secret_mode(path)?;
    fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| ProvisionError::io("read", path, e))
}

/// Reads a public file.
pub(crate) fn read_public(path: &Path) -> Result<Vec<u8>, ProvisionError> {
    fs::read(path).map_err(|e| ProvisionError::io("read", path, e))
}

/// Writes `bytes` to `path` with `mode` only if `path` does not exist yet. Returns whether it was
/// created (`false`: it already existed and was left alone).
pub(crate) fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, ProvisionError> {
    if exists(path)? {
        return Ok(false);
    }
    let tmp = write_temp(path, bytes, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let removed = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(ProvisionError::io("link", path, e)),
    }
    removed.map_err(|e| ProvisionError::io("remove", &tmp, e))?;
    sync_parent(path)?;
    Ok(true)
}

/// Writes `bytes` to `path` with `mode`, atomically replacing any previous content.
pub(crate) fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ProvisionError> {
    let tmp = write_temp(path, bytes, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        // Best effort: the rename error is the one worth reporting.
        let _cleanup = fs::remove_file(&tmp);
        return Err(ProvisionError::io("rename", path, e));
    }
    sync_parent(path)
}

/// Writes a synced temporary file next to `path`, created with `mode` from the start.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf, ProvisionError> {
    let dir = parent(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| ProvisionError::malformed(path, "expected a file name"))?
        .to_string_lossy();
    let mut suffix = [0u8; 8];
    getrandom::getrandom(&mut suffix).map_err(ProvisionError::Random)?;
    let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(suffix)));
    let result = (|| {
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| ProvisionError::io("create", &tmp, e))?;
        // The umask may have narrowed the mode; set it exactly (never wider than asked).
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| ProvisionError::io("chmod", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| ProvisionError::io("write", &tmp, e))?;
        file.sync_all()
            .map_err(|e| ProvisionError::io("sync", &tmp, e))
    })();
    if let Err(e) = result {
        let _cleanup = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

fn parent(path: &Path) -> Result<&Path, ProvisionError> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| ProvisionError::malformed(path, "expected a parent directory"))
}

/// Syncs the directory holding `path`, so the new name survives a crash.
fn sync_parent(path: &Path) -> Result<(), ProvisionError> {
    let dir = parent(path)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ProvisionError::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_new_never_overwrites_and_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        assert!(create_new(&p, b"one", SECRET_MODE).unwrap());
        assert!(!create_new(&p, b"two", SECRET_MODE).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(mode(&p), 0o600);
        let public = dir.path().join("public");
        assert!(create_new(&public, b"x", PUBLIC_MODE).unwrap());
        assert_eq!(mode(&public), 0o644);
        // No temporary files are left behind.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn replace_overwrites_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("conf");
        replace(&p, b"one", PUBLIC_MODE).unwrap();
        replace(&p, b"two", PUBLIC_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o644);
    }

    #[test]
    fn loose_secrets_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        create_new(&p, b"s", SECRET_MODE).unwrap();
        check_secret_mode(&p).unwrap();
        for loose in [0o640, 0o604, 0o660, 0o666] {
            fs::set_permissions(&p, Permissions::from_mode(loose)).unwrap();
            let e = check_secret_mode(&p).unwrap_err();
            assert_eq!(e.code(), "provision_insecure_permissions", "{loose:o}");
            assert!(read_secret(&p).is_err());
        }
        let sub = dir.path().join("sub");
        ensure_private_dir(&sub).unwrap();
        assert_eq!(mode(&sub), 0o700);
        fs::set_permissions(&sub, Permissions::from_mode(0o755)).unwrap();
        let e = ensure_private_dir(&sub).unwrap_err();
        assert_eq!(e.code(), "provision_insecure_permissions");
        assert!(e.to_string().contains("755"), "{e}");
    }
}
