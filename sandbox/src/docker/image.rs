//! Images built from our own compiled binaries: the binary, exactly the shared libraries it loads
//! (found by reading its ELF program interpreter and `DT_NEEDED` entries, recursively), the
//! directories `/tmp` and `/data` owned by the unprivileged user, and nothing else: no shell, no
//! package manager, no `/etc`.
//!
//! The image is a `docker load` archive (`manifest.json`, the config JSON and one layer tar)
//! written deterministically (sorted entries, fixed times and owners), so the same binary always
//! gives the same image id (the SHA-256 of the config), and importing an image the engine
//! already holds is skipped.
//!
//! [`parse_elf`] and [`build_archive`] are pure; [`collect`] reads the binary and its libraries
//! from the host and [`import`] talks to the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::ImportImageOptionsBuilder;
use futures::StreamExt;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::SandboxError;

/// The unprivileged user every container runs as.
pub const AGENT_UID: u32 = 10_001;
/// Its group.
pub const AGENT_GID: u32 = 10_001;
/// Most shared libraries one image may hold (a guard against a runaway dependency walk).
pub const MAX_LIBRARIES: usize = 64;
/// Largest file accepted into an image, in bytes.
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;
/// Every entry's modification time (the epoch), so archives are reproducible.
const FIXED_MTIME: u64 = 0;
/// The config's creation time, fixed for the same reason.
const FIXED_CREATED: &str = "1970-01-01T00:00:00Z";

/// An image id: `sha256:<hex of the config's SHA-256>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(String);

impl ImageId {
    /// Parses `sha256:<64 lowercase hex digits>`.
    pub fn parse(s: &str) -> Result<ImageId, SandboxError> {
        let ok = s.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(ImageId(s.to_owned()))
        } else {
            Err(SandboxError::Image(format!("{s:?} is not an image id")))
        }
    }

    /// `sha256:<64 hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits (as `docker images` shows them).
    pub fn short(&self) -> &str {
        self.0
            .strip_prefix("sha256:")
            .and_then(|h| h.get(..12))
            .unwrap_or(&self.0)
    }

    fn of(bytes: &[u8]) -> ImageId {
        ImageId(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The CPU architecture of an ELF file, as far as images are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86-64 (`amd64`).
    X86_64,
    /// 64-bit ARM (`arm64`).
    Aarch64,
}

impl Arch {
    /// The OCI architecture name.
    pub fn oci(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Where the dynamic linker looks (Debian multiarch layout first), in its order.
    pub fn library_dirs(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[
                "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu",
                "/lib64",
                "/usr/lib64",
                "/lib",
                "/usr/lib",
            ],
            Arch::Aarch64 => &[
                "/lib/aarch64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu",
                "/lib64",
                "/usr/lib64",
                "/lib",
                "/usr/lib",
            ],
        }
    }
}

/// What the dynamic linker needs to load one ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// Its architecture.
    pub arch: Arch,
    /// `PT_INTERP` (the program interpreter), if any.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` entries, in file order.
    pub needed: Vec<String>,
}

/// Reads the architecture, `PT_INTERP` and `DT_NEEDED` entries of a 64-bit little-endian ELF
/// file. Pure: no I/O.
pub fn parse_elf(data: &[u8]) -> Result<ElfInfo, SandboxError> {
    let bad = |e: object::read::Error| SandboxError::Image(format!("not a usable ELF file: {e}"));
    let header = elf::FileHeader64::<object::Endianness>::parse(data).map_err(bad)?;
    let endian = header.endian().map_err(bad)?;
    let arch = match header.e_machine(endian) {
        elf::EM_X86_64 => Arch::X86_64,
        elf::EM_AARCH64 => Arch::Aarch64,
        other => {
            return Err(SandboxError::Image(format!(
                "unsupported ELF machine {}",
                other.0
            )));
        }
    };
    let mut interpreter = None;
    for segment in header.program_headers(endian, data).map_err(bad)? {
        if let Some(interp) = segment.interpreter(endian, data).map_err(bad)? {
            interpreter = Some(utf8(interp)?);
        }
    }
    let sections = header.sections(endian, data).map_err(bad)?;
    let table = sections.dynamic_table(endian, data).map_err(bad)?;
    let mut needed = Vec::new();
    for entry in &table {
        if entry.tag == elf::DT_NEEDED {
            let name = utf8(table.string(entry).map_err(bad)?)?;
            if name.is_empty() || name.contains('/') {
                return Err(SandboxError::Image(format!(
                    "DT_NEEDED {name:?} is not a plain library name"
                )));
            }
            needed.push(name);
        }
    }
    Ok(ElfInfo {
        arch,
        interpreter,
        needed,
    })
}

fn utf8(bytes: &[u8]) -> Result<String, SandboxError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| SandboxError::Image(format!("ELF string is not UTF-8: {e}")))
}

/// One regular file in the image.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Absolute path inside the image.
    pub path: String,
    /// Permission bits (never setuid or setgid).
    pub mode: u32,
    /// Contents.
    pub contents: Vec<u8>,
}

impl std::fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("bytes", &self.contents.len())
            .finish()
    }
}

/// Everything an image is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// A short name for the tag (`assistant/<name>:<short id>`): `[a-z0-9-]`, 1 to 64 bytes.
    pub name: String,
    /// Its architecture.
    pub arch: Arch,
    /// The program (an absolute path among `files`).
    pub entrypoint: String,
    /// The files.
    pub files: Vec<ImageFile>,
}

/// One entry of the layer, as listed by [`ImageArchive::entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Path inside the image, without the leading `/`; directories end in `/`.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (0 for directories).
    pub size: u64,
}

/// A `docker load` archive and what it holds.
#[derive(Clone)]
pub struct ImageArchive {
    /// The archive bytes.
    pub bytes: Vec<u8>,
    /// The image id (SHA-256 of the config).
    pub id: ImageId,
    /// The tag it carries.
    pub tag: String,
    /// The layer's entries, in archive order.
    pub entries: Vec<LayerEntry>,
}

impl std::fmt::Debug for ImageArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageArchive")
            .field("id", &self.id)
            .field("tag", &self.tag)
            .field("bytes", &self.bytes.len())
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// The image config (the subset of the OCI/Docker image config we set). Field order is the
/// serialisation order, so the bytes (and the id) are stable.
#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    config: RunConfig<'a>,
    created: &'a str,
    os: &'a str,
    rootfs: RootFs,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig<'a> {
    entrypoint: Vec<&'a str>,
    env: Vec<String>,
    user: String,
    working_dir: &'a str,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// A directory of the layer.
struct Dir {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Checks an image path: absolute, normal components only, UTF-8 (it is a `String`).
fn relative_image_path(path: &str) -> Result<String, SandboxError> {
    let p = Path::new(path);
    let mut parts = Vec::new();
    for (i, c) in p.components().enumerate() {
        match c {
            Component::RootDir if i == 0 => {}
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            _ => {
                return Err(SandboxError::Image(format!(
                    "image path {path:?} must be absolute and plain"
                )));
            }
        }
    }
    if parts.is_empty() || !path.starts_with('/') {
        return Err(SandboxError::Image(format!(
            "image path {path:?} must be absolute and plain"
        )));
    }
    Ok(parts.join("/"))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn tar_error(e: std::io::Error) -> SandboxError {
    SandboxError::Image(format!("writing the archive: {e}"))
}

/// A ustar header with fixed time; `append_data` sets the path and the checksum.
fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mtime(FIXED_MTIME);
    h.set_size(size);
    h
}

/// Builds the layer and the `docker load` archive. Pure: the same spec gives the same bytes.
pub fn build_archive(spec: &ImageSpec) -> Result<ImageArchive, SandboxError> {
    if !valid_name(&spec.name) {
        return Err(SandboxError::Image(format!(
            "image name {:?} must be 1 to 64 bytes of a-z, 0-9 and '-'",
            spec.name
        )));
    }
    if !spec.files.iter().any(|f| f.path == spec.entrypoint) {
        return Err(SandboxError::Image(format!(
            "the entrypoint {} is not among the image's files",
            spec.entrypoint
        )));
    }
    // Paths -> entries; directories come from every file's parents plus /tmp and /data.
    let mut dirs: BTreeMap<String, Dir> = BTreeMap::new();
    let mut files: BTreeMap<String, &ImageFile> = BTreeMap::new();
    for f in &spec.files {
        if f.mode & 0o7000 != 0 || f.mode > 0o777 {
            return Err(SandboxError::Image(format!(
                "{} would have mode {:o}: setuid, setgid and sticky bits are refused",
                f.path, f.mode
            )));
        }
        let rel = relative_image_path(&f.path)?;
        let mut parent = Path::new(&rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.entry(p.to_string_lossy().into_owned()).or_insert(Dir {
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
            parent = p.parent();
        }
        if files.insert(rel, f).is_some() {
            return Err(SandboxError::Image(format!("{} is listed twice", f.path)));
        }
    }
    for owned in ["tmp", "data"] {
        dirs.insert(
            owned.to_owned(),
            Dir {
                mode: 0o700,
                uid: AGENT_UID,
                gid: AGENT_GID,
            },
        );
    }
    if let Some(clash) = files.keys().find(|f| dirs.contains_key(*f)) {
        return Err(SandboxError::Image(format!(
            "{clash} is both a file and a directory"
        )));
    }

    // One sorted list: a directory "a/" sorts before "a/b", so parents precede children.
    enum Item<'a> {
        Dir(&'a Dir),
        File(&'a ImageFile),
    }
    let mut items: Vec<(String, Item<'_>)> = dirs
        .iter()
        .map(|(p, d)| (format!("{p}/"), Item::Dir(d)))
        .chain(files.iter().map(|(p, f)| (p.clone(), Item::File(f))))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));

    let mut layer = tar::Builder::new(Vec::new());
    let mut entries = Vec::with_capacity(items.len());
    for (path, item) in &items {
        match item {
            Item::Dir(d) => {
                let mut h = header(tar::EntryType::Directory, d.mode, d.uid, d.gid, 0);
                layer
                    .append_data(&mut h, path, std::io::empty())
                    .map_err(tar_error)?;
                entries.push(LayerEntry {
                    path: path.clone(),
                    mode: d.mode,
                    uid: d.uid,
                    gid: d.gid,
                    size: 0,
                });
            }
            Item::File(f) => {
                let size = f.contents.len() as u64;
                let mut h = header(tar::EntryType::Regular, f.mode, 0, 0, size);
                layer
                    .append_data(&mut h, path, f.contents.as_slice())
                    .map_err(tar_error)?;
                entries.push(LayerEntry {
                    path: path.clone(),
                    mode: f.mode,
                    uid: 0,
                    gid: 0,
                    size,
                });
            }
        }
    }
    let layer = layer.into_inner().map_err(tar_error)?;
    let layer_hex = hex::encode(Sha256::digest(&layer));

    let config = ImageConfig {
        architecture: spec.arch.oci(),
        config: RunConfig {
            entrypoint: vec![spec.entrypoint.as_str()],
            env: Vec::new(),
            user: format!("{AGENT_UID}:{AGENT_GID}"),
            working_dir: "/",
        },
        created: FIXED_CREATED,
        os: "linux",
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![format!("sha256:{layer_hex}")],
        },
    };
    let config = serde_json::to_vec(&config)
        .map_err(|e| SandboxError::Image(format!("image config: {e}")))?;
    let id = ImageId::of(&config);
    let config_hex = id.as_str().trim_start_matches("sha256:").to_owned();
    let tag = format!("assistant/{}:{}", spec.name, id.short());
    let layer_path = format!("{layer_hex}/layer.tar");
    let manifest = serde_json::to_vec(&[ManifestEntry {
        config: format!("{config_hex}.json"),
        repo_tags: vec![tag.clone()],
        layers: vec![layer_path.clone()],
    }])
    .map_err(|e| SandboxError::Image(format!("image manifest: {e}")))?;

    let mut outer: Vec<(String, Vec<u8>)> = vec![
        (format!("{config_hex}.json"), config),
        (layer_path, layer),
        ("manifest.json".to_owned(), manifest),
    ];
    outer.sort_by(|a, b| a.0.cmp(&b.0));
    let mut archive = tar::Builder::new(Vec::new());
    let mut layer_dir = header(tar::EntryType::Directory, 0o755, 0, 0, 0);
    archive
        .append_data(&mut layer_dir, format!("{layer_hex}/"), std::io::empty())
        .map_err(tar_error)?;
    for (path, bytes) in &outer {
        let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, bytes.len() as u64);
        archive
            .append_data(&mut h, path, bytes.as_slice())
            .map_err(tar_error)?;
    }
    let bytes = archive.into_inner().map_err(tar_error)?;
    Ok(ImageArchive {
        bytes,
        id,
        tag,
        entries,
    })
}

/// Finds a library by name in the architecture's directories, in the dynamic linker's order.
fn find_library(arch: Arch, name: &str) -> Result<PathBuf, SandboxError> {
    for dir in arch.library_dirs() {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(SandboxError::Image(format!(
        "shared library {name} was not found in {}",
        arch.library_dirs().join(", ")
    )))
}

fn read_file(path: &Path) -> Result<Vec<u8>, SandboxError> {
    let io = |source| SandboxError::Io {
        operation: "read",
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(SandboxError::Image(format!(
            "{} is {len} bytes; the limit is {MAX_FILE_BYTES}",
            path.display()
        )));
    }
    std::fs::read(path).map_err(io)
}

fn path_text(path: &Path) -> Result<String, SandboxError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| SandboxError::Image(format!("{} is not UTF-8", path.display())))
}

/// Reads a binary and, recursively, its program interpreter and every shared library it needs
/// from the host, and returns the image spec: the binary at `/<file name>` (mode 0755), the
/// interpreter and libraries at the absolute paths where the host's dynamic linker finds them
/// (the interpreter 0755, libraries 0644). A static binary gives a spec with one file.
pub fn collect(name: &str, binary: &Path) -> Result<ImageSpec, SandboxError> {
    let file_name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            SandboxError::Image(format!("{} has no usable file name", binary.display()))
        })?;
    let contents = read_file(binary)?;
    let info = parse_elf(&contents)?;
    let entrypoint = format!("/{file_name}");
    let mut files = vec![ImageFile {
        path: entrypoint.clone(),
        mode: 0o755,
        contents,
    }];
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = info.needed.clone();
    if let Some(interp) = &info.interpreter {
        let data = read_file(Path::new(interp))?;
        let interp_info = parse_elf(&data)?;
        if interp_info.arch != info.arch {
            return Err(SandboxError::Image(format!(
                "interpreter {interp} is for another architecture"
            )));
        }
        files.push(ImageFile {
            path: interp.clone(),
            mode: 0o755,
            contents: data,
        });
        // The interpreter's own file name counts as present (libc names it in DT_NEEDED).
        if let Some(base) = Path::new(interp).file_name().and_then(|b| b.to_str()) {
            seen.insert(base.to_owned());
        }
    }
    while let Some(lib) = queue.pop() {
        if !seen.insert(lib.clone()) {
            continue;
        }
        if seen.len() > MAX_LIBRARIES {
            return Err(SandboxError::Image(format!(
                "{} needs more than {MAX_LIBRARIES} libraries",
                binary.display()
            )));
        }
        let path = find_library(info.arch, &lib)?;
        let data = read_file(&path)?;
        let lib_info = parse_elf(&data)?;
        if lib_info.arch != info.arch {
            return Err(SandboxError::Image(format!(
                "{} is for another architecture",
                path.display()
            )));
        }
        queue.extend(lib_info.needed);
        files.push(ImageFile {
            path: path_text(&path)?,
            mode: 0o644,
            contents: data,
        });
    }
    Ok(ImageSpec {
        name: name.to_owned(),
        arch: info.arch,
        entrypoint,
        files,
    })
}

/// Whether [`import`] loaded the image or found it already present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// The engine did not have it; it was loaded.
    Loaded,
    /// The engine already had this id; nothing was sent.
    AlreadyPresent,
}

/// Whether the engine holds an image with this id.
pub async fn exists(docker: &Docker, id: &ImageId) -> Result<bool, SandboxError> {
    match docker.inspect_image(id.as_str()).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(source) => Err(SandboxError::Docker {
            operation: "inspect image",
            source,
        }),
    }
}

/// Loads the archive into the engine (`POST /images/load`), unless an image with its id is
/// already there, and checks that the engine now holds that id.
pub async fn import(docker: &Docker, archive: &ImageArchive) -> Result<Imported, SandboxError> {
    if exists(docker, &archive.id).await? {
        return Ok(Imported::AlreadyPresent);
    }
    let options = ImportImageOptionsBuilder::default().quiet(true).build();
    let mut progress = docker.import_image(
        options,
        bollard::body_full(bytes::Bytes::from(archive.bytes.clone())),
        None,
    );
    while let Some(item) = progress.next().await {
        let info = item.map_err(|source| SandboxError::Docker {
            operation: "load image",
            source,
        })?;
        if let Some(detail) = info.error_detail {
            return Err(SandboxError::Image(format!(
                "the engine refused the image: {}",
                detail.message.unwrap_or_default()
            )));
        }
    }
    if !exists(docker, &archive.id).await? {
        return Err(SandboxError::Image(format!(
            "the engine did not keep image {}",
            archive.id
        )));
    }
    Ok(Imported::Loaded)
}

/// Builds the image for a binary and makes sure the engine holds it; returns its id.
pub async fn ensure(docker: &Docker, name: &str, binary: &Path) -> Result<ImageId, SandboxError> {
    let binary = binary.to_path_buf();
    let owned = name.to_owned();
    let archive = tokio::task::spawn_blocking(move || {
        collect(&owned, &binary).and_then(|spec| build_archive(&spec))
    })
    .await
    .map_err(|e| SandboxError::Image(format!("image build task failed: {e}")))??;
    let outcome = import(docker, &archive).await?;
    tracing::info!(image = %archive.id, tag = %archive.tag, ?outcome, "image ready");
    if outcome == Imported::Loaded
        && let Err(e) = prune_older(docker, name, &archive.id).await
    {
        tracing::warn!(image = %archive.tag, error = %e, "older images not pruned");
    }
    Ok(archive.id)
}

/// Untags this name's older images (`assistant/<name>:*` other than `keep`), so rebuilds do not
/// pile up. An image another container still uses is left alone (the engine refuses), and an
/// image that carries other tags only loses this one.
pub async fn prune_older(docker: &Docker, name: &str, keep: &ImageId) -> Result<(), SandboxError> {
    let repo = format!("assistant/{name}");
    let filters = std::collections::HashMap::from([("reference", vec![repo.clone()])]);
    let images = docker
        .list_images(Some(
            bollard::query_parameters::ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|source| SandboxError::Docker {
            operation: "list images",
            source,
        })?;
    for image in images.iter().filter(|i| i.id != keep.as_str()) {
        for tag in image.repo_tags.iter().filter(|t| {
            t.strip_prefix(&repo)
                .is_some_and(|rest| rest.starts_with(':'))
        }) {
            match docker
                .remove_image(
                    tag,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await
            {
                Ok(_) => tracing::debug!(%tag, "older image untagged"),
                // 409: a container still uses it.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }) => {}
                Err(source) => {
                    return Err(SandboxError::Docker {
                        operation: "remove image",
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(files: Vec<ImageFile>) -> ImageSpec {
        ImageSpec {
            name: "t".to_owned(),
            arch: Arch::X86_64,
            entrypoint: "/bin".to_owned(),
            files,
        }
    }

    fn file(path: &str, mode: u32) -> ImageFile {
        ImageFile {
            path: path.to_owned(),
            mode,
            contents: path.as_bytes().to_vec(),
        }
    }

    #[test]
    fn layers_list_parents_first_and_own_tmp_and_data() {
        let a = build_archive(&spec(vec![
            file("/lib/x86_64-linux-gnu/libc.so.6", 0o644),
            file("/bin", 0o755),
            file("/lib64/ld-linux-x86-64.so.2", 0o755),
        ]))
        .unwrap();
        let listed: Vec<String> = a
            .entries
            .iter()
            .map(|e| format!("{} {:o} {}:{} {}", e.path, e.mode, e.uid, e.gid, e.size))
            .collect();
        expect_test::expect![[r#"
            bin 755 0:0 4
            data/ 700 10001:10001 0
            lib/ 755 0:0 0
            lib/x86_64-linux-gnu/ 755 0:0 0
            lib/x86_64-linux-gnu/libc.so.6 644 0:0 31
            lib64/ 755 0:0 0
            lib64/ld-linux-x86-64.so.2 755 0:0 27
            tmp/ 700 10001:10001 0"#]]
        .assert_eq(&listed.join("\n"));
    }

    #[test]
    fn bad_specs_are_refused() {
        let cases = [
            spec(vec![file("/bin", 0o4755)]),
            spec(vec![file("/bin", 0o2755)]),
            spec(vec![file("/bin", 0o755), file("/bin", 0o755)]),
            spec(vec![file("/bin", 0o755), file("/x/../etc/passwd", 0o644)]),
            spec(vec![file("/bin", 0o755), file("relative", 0o644)]),
            spec(vec![file("/bin", 0o755), file("/tmp", 0o644)]),
            spec(vec![file("/other", 0o755)]),
            ImageSpec {
                name: "Bad Name".to_owned(),
                ..spec(vec![file("/bin", 0o755)])
            },
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| build_archive(c).unwrap_err().to_string())
            .collect();
        expect_test::expect![[r#"
            image build: /bin would have mode 4755: setuid, setgid and sticky bits are refused
            image build: /bin would have mode 2755: setuid, setgid and sticky bits are refused
            image build: /bin is listed twice
            image build: image path "/x/../etc/passwd" must be absolute and plain
            image build: image path "relative" must be absolute and plain
            image build: tmp is both a file and a directory
            image build: the entrypoint /bin is not among the image's files
            image build: image name "Bad Name" must be 1 to 64 bytes of a-z, 0-9 and '-'"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn garbage_is_not_an_elf_file() {
        for data in [&b""[..], b"\x7fELF", b"#!/bin/sh\necho hi\n"] {
            assert_eq!(parse_elf(data).unwrap_err().code(), "sandbox_image_build");
        }
    }
}
