//! Reloading files on change: their modification times are polled, and SIGHUP forces a reload.
//! Used for the keys file and the TLS certificate files.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The files' modification times and lengths (a missing file reads as `None`).
fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Calls `reload` when one of `paths` changes (checked every `every`) or on SIGHUP, until
/// `stop` fires. `reload` logs and counts its own failures (the old value keeps serving).
pub(crate) fn spawn_watcher(
    paths: Vec<PathBuf>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    reload: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = stamps(&paths);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let forced = tokio::select! {
                _ = tokio::time::sleep(every) => false,
                () = hangup => true,
                _ = stop.changed() => return,
            };
            let now = stamps(&paths);
            if forced || now != last {
                last = now;
                reload();
            }
        }
    })
}
