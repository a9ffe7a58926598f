//! Where a file tc writes goes, and how (SPEC §3.7). A destination is resolved before any
//! work: a new path or a regular file is written to a temporary name in its folder and
//! renamed over it (no reader ever sees half a file); a device, FIFO or pipe is written in
//! place, as it is; a symlink is followed to its target; `-` is standard output. A set of
//! files is written all or nothing (`write_all`): every temporary file first, then whatever
//! is written in place, then every rename, and on any failure — or SIGTERM, SIGINT, SIGHUP —
//! no temporary file and none of the set's new files are left.

use super::interrupt::TempGuard;
use crate::tensor::HostTensor;
use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A resolved destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Standard output (`-`).
    Stdout,
    /// A regular file or a new path, by temporary name and rename. `path` is the real path
    /// (symlinks followed), in a folder that exists.
    Replace { path: PathBuf },
    /// A device, FIFO or pipe, opened and written as it is.
    InPlace { path: PathBuf },
}

/// What a file is, for telling whether two paths are one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// An existing file: its device and inode, and whether it is a character device (a
    /// terminal, `/dev/null`), which any number of readers and writers may share.
    Inode { dev: u64, ino: u64, shared: bool },
    /// A path that does not exist yet, made absolute with its folder's symlinks resolved.
    New(PathBuf),
}

impl Identity {
    /// Whether two uses of these files would clash: the same file, unless it is shared.
    pub fn clashes_with(&self, other: &Identity) -> bool {
        match (self, other) {
            (
                Identity::Inode { dev, ino, shared },
                Identity::Inode {
                    dev: d2, ino: i2, ..
                },
            ) => dev == d2 && ino == i2 && !shared,
            (Identity::New(a), Identity::New(b)) => a == b,
            _ => false,
        }
    }
}

fn identity(meta: &std::fs::Metadata) -> Identity {
    Identity::Inode {
        dev: meta.dev(),
        ino: meta.ino(),
        shared: meta.file_type().is_char_device(),
    }
}

/// The file an existing path or `-` (standard input, fd 0) names, for clash checks with
/// destinations; `None` where it does not exist (reading it will say so).
pub fn source_identity(path: &Path) -> Option<Identity> {
    if path.as_os_str() == "-" {
        return fd_identity(0);
    }
    std::fs::metadata(path).ok().map(|m| identity(&m))
}

/// The file behind an open descriptor.
pub fn fd_identity(fd: libc::c_int) -> Option<Identity> {
    // SAFETY: fstat writes into a zeroed stat buffer; a bad fd is an error return.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return None;
        }
        Some(Identity::Inode {
            dev: st.st_dev,
            ino: st.st_ino,
            shared: st.st_mode & libc::S_IFMT == libc::S_IFCHR,
        })
    }
}

/// Why a destination cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the folder {0} does not exist")]
    MissingFolder(PathBuf),
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("{0} is a folder, not a file")]
    IsAFolder(PathBuf),
    #[error("{0} is a socket; tc writes files, devices and pipes")]
    Socket(PathBuf),
    #[error("the file name {name} is too long ({len} bytes; at most {max} in {folder})")]
    NameTooLong {
        name: String,
        len: usize,
        max: usize,
        folder: PathBuf,
    },
    #[error("{path} has no file name")]
    NoFileName { path: PathBuf },
    #[error("{0} is a chain of symlinks that does not end")]
    LinkLoop(PathBuf),
    #[error("cannot write in {folder}: {source}")]
    Folder { folder: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A resolved destination and the file it is.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub sink: Sink,
    pub identity: Identity,
}

/// Resolves a destination and checks, without writing anything that stays, that it can be
/// written: the folder of a new file exists and takes a new file, a device or pipe is
/// writable, and nothing in the way is a folder or a socket.
pub fn resolve(path: &Path) -> Result<Resolved, SinkError> {
    if path.as_os_str() == "-" {
        let identity = fd_identity(1).unwrap_or(Identity::New(PathBuf::from("-")));
        return Ok(Resolved {
            sink: Sink::Stdout,
            identity,
        });
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            let real = std::fs::canonicalize(path).map_err(|source| SinkError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let folder = folder_of(&real);
            probe_folder(&folder)?;
            Ok(Resolved {
                sink: Sink::Replace { path: real },
                identity: identity(&meta),
            })
        }
        Ok(meta) if meta.is_dir() => Err(SinkError::IsAFolder(path.to_path_buf())),
        Ok(meta) if meta.file_type().is_socket() => Err(SinkError::Socket(path.to_path_buf())),
        Ok(meta) => {
            let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| SinkError::Io {
                path: path.to_path_buf(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            })?;
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
                return Err(SinkError::Io {
                    path: path.to_path_buf(),
                    source: io::Error::last_os_error(),
                });
            }
            Ok(Resolved {
                sink: Sink::InPlace {
                    path: path.to_path_buf(),
                },
                identity: identity(&meta),
            })
        }
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENAMETOOLONG) =>
        {
            resolve_new(path)
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            Err(SinkError::LinkLoop(path.to_path_buf()))
        }
        Err(source) => Err(SinkError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A path that does not exist (or a symlink to one): the file it will be.
fn resolve_new(path: &Path) -> Result<Resolved, SinkError> {
    let target = follow_links(path)?;
    let name = target.file_name().ok_or_else(|| SinkError::NoFileName {
        path: path.to_path_buf(),
    })?;
    let given_folder = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let folder = match std::fs::metadata(&given_folder) {
        Ok(m) if m.is_dir() => {
            std::fs::canonicalize(&given_folder).map_err(|source| SinkError::Folder {
                folder: given_folder.clone(),
                source,
            })?
        }
        Ok(_) => return Err(SinkError::NotAFolder(given_folder)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SinkError::MissingFolder(given_folder))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err(SinkError::NotAFolder(given_folder))
        }
        Err(source) => {
            return Err(SinkError::Folder {
                folder: given_folder,
                source,
            })
        }
    };
    let max = name_max(&folder);
    let len = name.as_bytes().len();
    if len > max {
        let shown: String = name.to_string_lossy().chars().take(40).collect();
        return Err(SinkError::NameTooLong {
            name: format!("{shown}…"),
            len,
            max,
            folder: given_folder,
        });
    }
    probe_folder(&folder)?;
    let real = folder.join(name);
    Ok(Resolved {
        identity: Identity::New(real.clone()),
        sink: Sink::Replace { path: real },
    })
}

/// Follows symlinks from `path` to the path they end at.
fn follow_links(path: &Path) -> Result<PathBuf, SinkError> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p).map_err(|source| SinkError::Io {
                    path: p.clone(),
                    source,
                })?;
                p = if to.is_absolute() {
                    to
                } else {
                    folder_of(&p).join(to)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(SinkError::LinkLoop(path.to_path_buf()))
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The longest file name `folder`'s file system takes.
fn name_max(folder: &Path) -> usize {
    let Ok(c) = CString::new(folder.as_os_str().as_bytes()) else {
        return 255;
    };
    // SAFETY: a NUL-terminated path.
    let n = unsafe { libc::pathconf(c.as_ptr(), libc::_PC_NAME_MAX) };
    if n > 0 {
        n as usize
    } else {
        255
    }
}

/// Numbers temporary files within this process.
static NEXT_TEMP: AtomicUsize = AtomicUsize::new(0);

/// A temporary name in `folder`: short, so it fits wherever the final name fits.
fn temp_in(folder: &Path) -> PathBuf {
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    folder.join(format!(".tc-{}-{n}.tmp", std::process::id()))
}

/// Checks that `folder` takes a new file by making one and removing it (SIGTERM between
/// the two removes it too).
fn probe_folder(folder: &Path) -> Result<(), SinkError> {
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let probe = folder.join(format!(".tc-{}-{n}.probe", std::process::id()));
    let _guard = TempGuard::new(vec![probe.clone()]);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(source) => Err(SinkError::Folder {
            folder: folder.to_path_buf(),
            source,
        }),
    }
}

/// What one file holds.
#[derive(Clone, Copy, Debug)]
pub enum Content<'a> {
    Bytes(&'a [u8]),
    /// A tensor as `.npy` (bf16 as f32, exactly).
    Npy(&'a HostTensor),
}

impl Content<'_> {
    fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        match self {
            Content::Bytes(b) => w.write_all(b),
            Content::Npy(t) => super::npy::encode(w, t),
        }
    }
}

/// Writes every `(sink, content)` or none. On failure returns the index of the file that
/// failed and why; nothing new of the set is left (a file written in place cannot be taken
/// back, so those are written after every temporary file is complete, and renames last).
pub fn write_all(files: &[(&Sink, Content<'_>)]) -> Result<(), (usize, io::Error)> {
    let temps: Vec<Option<PathBuf>> = files
        .iter()
        .map(|(sink, _)| match sink {
            Sink::Replace { path } => Some(temp_in(&folder_of(path))),
            _ => None,
        })
        .collect();
    let guard = TempGuard::new(temps.iter().flatten().cloned().collect());
    // 1. Every temporary file, complete and synced.
    for (i, ((sink, content), temp)) in files.iter().zip(&temps).enumerate() {
        if let (Sink::Replace { path }, Some(temp)) = (sink, temp) {
            write_temp(path, temp, content).map_err(|e| (i, e))?;
        }
    }
    // 2. In place: devices, pipes, standard output.
    for (i, (sink, content)) in files.iter().enumerate() {
        let result = match sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                content.write_to(&mut out).and_then(|()| out.flush())
            }
            Sink::InPlace { path } => write_in_place(path, content),
            Sink::Replace { .. } => Ok(()),
        };
        result.map_err(|e| (i, e))?;
    }
    // 3. Renames; a failure takes back the renames before it.
    let mut renamed: Vec<&Path> = Vec::new();
    for (i, ((sink, _), temp)) in files.iter().zip(&temps).enumerate() {
        if let (Sink::Replace { path }, Some(temp)) = (sink, temp) {
            if let Err(e) = std::fs::rename(temp, path) {
                for done in renamed {
                    let _ = std::fs::remove_file(done);
                }
                return Err((i, e));
            }
            renamed.push(path);
        }
    }
    drop(guard);
    Ok(())
}

fn write_temp(path: &Path, temp: &Path, content: &Content<'_>) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)?;
    // A file replaced keeps its permissions.
    if let Ok(old) = std::fs::metadata(path) {
        let _ = file.set_permissions(old.permissions());
    }
    let mut w = io::BufWriter::new(file);
    content.write_to(&mut w)?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn write_in_place(path: &Path, content: &Content<'_>) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut w = io::BufWriter::new(file);
    content.write_to(&mut w)?;
    w.flush()
}

/// Writes one file (see `resolve` and `write_all`).
pub fn write_one(path: &Path, content: Content<'_>) -> Result<(), SinkError> {
    let resolved = resolve(path)?;
    write_all(&[(&resolved.sink, content)]).map_err(|(_, source)| SinkError::Io {
        path: path.to_path_buf(),
        source,
    })
}
