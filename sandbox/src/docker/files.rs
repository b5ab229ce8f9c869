//! The host files the Docker backend prepares for its containers: private copies of exactly the
//! secrets each container may read, and its configuration. Each container's directory under the
//! state directory carries a marker naming the instance, so teardown removes only what this
//! instance wrote.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::image::{AGENT_GID, AGENT_UID};
use super::names::Instance;
use crate::{SandboxError, SecretFile};

/// The marker file in every directory this backend creates under the state directory.
pub(super) const MARKER: &str = ".sandbox-instance";

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |source| SandboxError::Io {
        operation,
        path,
        source,
    }
}

/// Whether files handed to containers must be given to the container user: only root can, and
/// only root needs to (otherwise the caller's own files are used as they are).
pub(super) fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn give_to_agent(path: &Path) -> Result<(), SandboxError> {
    if running_as_root() {
        std::os::unix::fs::chown(path, Some(AGENT_UID), Some(AGENT_GID))
            .map_err(io("chown", path))?;
    }
    Ok(())
}

/// Creates a directory (and its parents) with mode 0700.
pub(super) fn private_dir(path: &Path) -> Result<(), SandboxError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io("create directory", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io("chmod", path))
}

/// Creates (or empties) a container's own directory under the state directory and marks it as
/// this instance's.
pub(super) fn fresh_container_dir(path: &Path, instance: &Instance) -> Result<(), SandboxError> {
    if path.exists() {
        remove_container_dir(path, instance)?;
    }
    private_dir(path)?;
    write_atomic(&path.join(MARKER), instance.as_str().as_bytes(), 0o600)
}

/// Removes a container's directory if it carries this instance's marker (nothing happens if it
/// is absent; a directory without the marker is refused, never deleted).
pub(super) fn remove_container_dir(path: &Path, instance: &Instance) -> Result<(), SandboxError> {
    match fs::read_to_string(path.join(MARKER)) {
        Ok(owner) if owner == instance.as_str() => {
            fs::remove_dir_all(path).map_err(io("remove directory", path))
        }
        Ok(_) => Err(SandboxError::Invalid(format!(
            "{} belongs to another instance",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path.exists() => Ok(()),
        Err(e) => Err(SandboxError::Io {
            operation: "read marker",
            path: path.join(MARKER),
            source: e,
        }),
    }
}

/// Writes a file atomically (temporary file, fsync, rename) with a mode.
pub(super) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SandboxError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))
}

/// Writes a file the container reads (not a secret): mode 0644, atomically.
pub(super) fn write_public(path: &Path, bytes: &[u8]) -> Result<(), SandboxError> {
    write_atomic(path, bytes, 0o644)
}

/// Checks a secret's target: relative, plain components only.
fn target_path(target: &Path) -> Result<PathBuf, SandboxError> {
    let mut out = PathBuf::new();
    for c in target.components() {
        match c {
            Component::Normal(part) => out.push(part),
            _ => {
                return Err(SandboxError::Invalid(format!(
                    "secret target {} must be a relative path without '..'",
                    target.display()
                )));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(SandboxError::Invalid("a secret target is empty".to_owned()));
    }
    Ok(out)
}

/// Copies the secrets into a fresh `dir` at their target paths: directories 0700, files 0400,
/// all owned by the container user when running as root. Returns the directory.
pub(super) fn copy_secrets(dir: &Path, secrets: &[SecretFile]) -> Result<(), SandboxError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io("remove directory", dir))?;
    }
    private_dir(dir)?;
    give_to_agent(dir)?;
    for secret in secrets {
        let target = target_path(&secret.target)?;
        let dest = dir.join(&target);
        // Create each missing parent below `dir` with the same ownership.
        let mut current = dir.to_path_buf();
        if let Some(parent) = target.parent() {
            for part in parent.components() {
                current.push(part);
                if !current.exists() {
                    private_dir(&current)?;
                    give_to_agent(&current)?;
                }
            }
        }
        let bytes = fs::read(&secret.source).map_err(io("read", &secret.source))?;
        if dest.exists() {
            return Err(SandboxError::Invalid(format!(
                "two secrets target {}",
                secret.target.display()
            )));
        }
        write_atomic(&dest, &bytes, 0o400)?;
        give_to_agent(&dest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_keep_their_targets_and_refuse_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src.key");
        fs::write(&src, b"secret").unwrap();
        let dir = tmp.path().join("secrets");
        let ok = [SecretFile {
            source: src.clone(),
            target: PathBuf::from("tls/clients/hue.key"),
        }];
        copy_secrets(&dir, &ok).unwrap();
        let copied = dir.join("tls/clients/hue.key");
        assert_eq!(fs::read(&copied).unwrap(), b"secret");
        assert_eq!(
            fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert_eq!(
            fs::metadata(dir.join("tls")).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for bad in ["../escape", "/etc/passwd", "", "a/../../b"] {
            let e = copy_secrets(
                &dir,
                &[SecretFile {
                    source: src.clone(),
                    target: PathBuf::from(bad),
                }],
            )
            .unwrap_err();
            assert_eq!(e.code(), "sandbox_invalid_deployment", "{bad}");
        }
        let twice = [ok[0].clone(), ok[0].clone()];
        assert_eq!(
            copy_secrets(&dir, &twice).unwrap_err().code(),
            "sandbox_invalid_deployment"
        );
    }

    #[test]
    fn only_marked_directories_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mine = Instance::new("mine").unwrap();
        let other = Instance::new("other").unwrap();
        let dir = tmp.path().join("hue");
        fresh_container_dir(&dir, &mine).unwrap();
        assert!(remove_container_dir(&dir, &other).is_err());
        assert!(dir.exists());
        remove_container_dir(&dir, &mine).unwrap();
        assert!(!dir.exists());
        remove_container_dir(&dir, &mine).unwrap();
        let unmarked = tmp.path().join("keys");
        fs::create_dir(&unmarked).unwrap();
        assert!(remove_container_dir(&unmarked, &mine).is_err());
        assert!(unmarked.exists());
    }
}
