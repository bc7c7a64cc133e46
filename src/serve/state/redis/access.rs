//! How a replica reaches a Redis that wants TLS with a private CA or ACL credentials.
//!
//! The URL says whether to speak TLS (`rediss://`, `rediss+cluster://`) and never carries
//! credentials (refused when parsed: they would show in process listings and logs). The CA file
//! and the ACL user are settings; the password comes from a file only its owner can read
//! (`redis_password_file`) or from the environment ([`PASSWORD_ENV`]), read once at start and
//! never logged.

use super::StateError;
use std::path::{Path, PathBuf};

/// The environment variable the ACL password is read from when no password file is set.
pub const PASSWORD_ENV: &str = "TIERING_REDIS_PASSWORD";

/// Where the TLS trust and the credentials come from (paths and a user name: no secret).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisAccess {
    /// PEM CA certificates the server's certificate must chain to (`rediss://` only; unset:
    /// the system's roots).
    pub ca_file: Option<PathBuf>,
    /// The ACL user (unset: `default`).
    pub user: Option<String>,
    /// A file whose first line is the password (refused if group or others can read it); unset:
    /// [`PASSWORD_ENV`], else no password.
    pub password_file: Option<PathBuf>,
}

/// What [`RedisAccess`] resolves to, for the connection.
pub(crate) struct Credentials {
    pub ca_pem: Option<Vec<u8>>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RedisAccess {
    /// Reads the CA file and the password (file, else environment). `tls`: the target speaks
    /// TLS (a CA file for a plaintext target is refused: it would silently not be used).
    pub(crate) fn load(&self, tls: bool) -> Result<Credentials, StateError> {
        let ca_pem = match &self.ca_file {
            Some(p) if !tls => {
                return Err(access_error(
                    p,
                    "a Redis CA file needs a TLS URL (rediss:// or rediss+cluster://)".into(),
                ))
            }
            Some(p) => Some(std::fs::read(p).map_err(|e| access_error(p, e.to_string()))?),
            None => None,
        };
        let password = match &self.password_file {
            Some(p) => Some(read_password(p)?),
            None => std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
        };
        Ok(Credentials {
            ca_pem,
            user: self.user.clone(),
            password,
        })
    }
}

fn access_error(path: &Path, message: String) -> StateError {
    StateError::RedisAccess {
        path: path.to_path_buf(),
        message,
    }
}

/// The first line of `path`, refused if the file is open to group or others.
fn read_password(path: &Path) -> Result<String, StateError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| access_error(path, e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(access_error(
                path,
                format!(
                    "group or others can access this password file (mode {:o}): chmod 600 it",
                    mode & 0o777
                ),
            ));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| access_error(path, e.to_string()))?;
    match text.lines().next().map(str::trim_end) {
        Some(line) if !line.is_empty() => Ok(line.to_string()),
        _ => Err(access_error(
            path,
            "the first line (the password) is empty".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_others_can_read_or_an_empty_one_is_refused_and_a_private_one_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redis.pw");
        std::fs::write(&path, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let access = RedisAccess {
            password_file: Some(path.clone()),
            ..RedisAccess::default()
        };
        let e = access.load(false).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = access.load(false).unwrap();
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        std::fs::write(&path, "\n").unwrap();
        assert!(access.load(false).is_err());
    }

    #[test]
    fn a_ca_file_for_a_plaintext_redis_is_refused() {
        let access = RedisAccess {
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..RedisAccess::default()
        };
        let e = access.load(false).unwrap_err();
        assert!(e.to_string().contains("needs a TLS URL"), "{e}");
    }
}
