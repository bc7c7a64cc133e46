//! The verdict on a log's bad bytes, shared by the plaintext reader (`wal::record`) and the
//! encrypted one (`cipher`): damage when a valid record follows, a torn tail only at the end
//! of the last segment.

use crate::serve::state::StateError;
use std::path::Path;

/// The verdict on bad bytes at `off` that look like `what`: damage when a valid record starts
/// later (`next_valid`), a torn tail only at the end of the last segment. Shared by the
/// plaintext and the encrypted log readers.
pub(crate) fn tail_verdict(
    path: &Path,
    off: usize,
    what: &'static str,
    next_valid: Option<usize>,
    last: bool,
) -> Result<&'static str, StateError> {
    if let Some(next_valid) = next_valid {
        return Err(StateError::DamagedRecord {
            path: path.to_path_buf(),
            offset: off,
            what: match what {
                "checksum mismatch" => "checksum mismatch in the middle of the log",
                other => other,
            },
            next_valid,
        });
    }
    if !last {
        return Err(StateError::TornMidLog {
            path: path.to_path_buf(),
            offset: off,
            what,
        });
    }
    Ok(what)
}
