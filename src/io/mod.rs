//! Files: checkpoints (safetensors), named tensors in their own dtypes (safetensors), tabular
//! data (CSV), and the atomic write every saver goes through.

pub mod checkpoint;
pub mod csv;
pub(crate) mod safetensors;

pub use self::safetensors::{load_safetensors, save_safetensors};

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The temporary file a write to `path` goes through: hidden, in the same directory (so the
/// rename is atomic), named after the process (so two writers do not share one).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Write `bytes` to `path` so that `path` holds either its old contents or all of `bytes`,
/// also across a crash or power loss: the bytes go to a temporary file in the same
/// directory, which is fsynced, renamed over `path`, and then the directory is fsynced so the
/// rename itself is on disk (on unix; elsewhere the platform gives no such call). A failed
/// write removes its temporary file and leaves `path` as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.file_name().is_none() {
        return Err(Error::InvalidArgument {
            op: "write_atomic",
            message: format!("{}: not a file path", path.display()),
        });
    }
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        {
            // Closed before the rename.
            let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
            f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        // Best effort: the temporary may not exist (or be a directory someone else made).
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_parent(path)
}

/// Fsync the directory holding `path`, making a rename into it durable. Unix only: other
/// platforms cannot open a directory as a file, and their renames need no such step.
fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // A directory that cannot be opened for reading (mode -wx) cannot be synced; some file
        // systems refuse to fsync one (EINVAL). The data is written and renamed either way, so
        // neither fails the write; an I/O error of the sync does.
        let Ok(d) = std::fs::File::open(dir) else {
            return Ok(());
        };
        match d.sync_all() {
            Err(e) if e.kind() != std::io::ErrorKind::InvalidInput => Err(Error::io(dir, e)),
            _ => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}
