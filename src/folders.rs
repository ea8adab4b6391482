//! The user's own folders, as the platform names them (the `directories` crate): where the user's config file
//! lives, and where writeback keeps state (the ledger of applied plans).
//!
//! | platform | config file | state |
//! |---|---|---|
//! | Linux, BSD | `$XDG_CONFIG_HOME/writeback/writeback.toml` (default `~/.config/…`) | `$XDG_STATE_HOME/writeback/` (default `~/.local/state/…`) |
//! | macOS | `~/Library/Application Support/writeback/writeback.toml` | `~/Library/Application Support/writeback/` |
//! | Windows | `%APPDATA%\writeback\config\writeback.toml` | `%LOCALAPPDATA%\writeback\data\` |
//!
//! Nothing here reads the working directory: a file dropped next to a plan never becomes the user's settings.

use std::path::PathBuf;

/// The name of the config file, in the user's config folder (and, for `plan` only, in the working folder).
pub const CONFIG_FILE_NAME: &str = "writeback.toml";

fn project() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "writeback")
}

/// The user's own config file (it may not exist). `None` when the platform gives no home folder.
pub fn user_config_file() -> Option<PathBuf> {
    project().map(|p| p.config_dir().join(CONFIG_FILE_NAME))
}

/// The folder writeback keeps its state in: `$XDG_STATE_HOME/writeback` on Linux, the local application-data
/// folder elsewhere. `None` when the platform gives no home folder.
pub fn state_dir() -> Option<PathBuf> {
    project().map(|p| p.state_dir().unwrap_or_else(|| p.data_local_dir()).to_path_buf())
}

/// The user's cache folder for writeback. `None` when the platform gives no home folder.
pub fn cache_dir() -> Option<PathBuf> {
    project().map(|p| p.cache_dir().to_path_buf())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn linux_folders_follow_xdg() {
        // The variables are read when the folders are asked for; this test only reads them, so it does not
        // race with other tests.
        if let Some(file) = user_config_file() {
            assert!(file.ends_with("writeback/writeback.toml"), "{}", file.display());
            if let Ok(xdg) = std::env::var("XDG_CONFIG_HOME") {
                if std::path::Path::new(&xdg).is_absolute() {
                    assert!(file.starts_with(&xdg), "{}", file.display());
                }
            }
        }
        if let Some(state) = state_dir() {
            assert!(state.ends_with("writeback"), "{}", state.display());
        }
    }
}
