//! The TOML config file (`--config`): reading and parsing it into a [`ServerConfig`] (validated
//! later, with the command line on top: see [`cli`](crate::cli)).

use crate::config::{ConfigError, ServerConfig};

/// Reads and parses a TOML config file (not yet validated). A relative `users` path in it is
/// taken relative to the file's directory.
///
/// # Errors
///
/// [`ConfigError::File`] (naming the path) when the file cannot be read or is not a valid config.
pub fn load_config_file(path: &std::path::Path) -> Result<ServerConfig, ConfigError> {
    config_from_text(path, &read_config_file(path)?)
}

/// The text of the config file at `path`.
pub(crate) fn read_config_file(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::File(format!("{}: {e}", path.display())))
}

/// Parses the text of the config file at `path` (see [`load_config_file`]).
pub(crate) fn config_from_text(path: &std::path::Path, text: &str) -> Result<ServerConfig, ConfigError> {
    let mut config = parse_config_toml(text).map_err(|e| match e {
        ConfigError::File(msg) => ConfigError::File(format!("{}: {msg}", path.display())),
        other => other,
    })?;
    // --- Authentication: the users file sits beside the config file. ---
    if let (Some(users), Some(dir)) = (&mut config.users, path.parent()) {
        if users.is_relative() {
            *users = dir.join(&*users);
        }
    }
    Ok(config)
}

/// Parses a TOML config text (not yet validated).
///
/// ```
/// let config = socks4_server::config_file::parse_config_toml("listen = ['[::1]:1080']\n[timeouts]\nidle = '30s'\n")?;
/// assert_eq!(config.timeouts.idle.as_secs(), 30);
/// # Ok::<(), socks4_server::config::ConfigError>(())
/// ```
///
/// # Errors
///
/// [`ConfigError::File`] with the TOML parser's message (line and column) for invalid TOML, an
/// unknown key or a bad value.
pub fn parse_config_toml(text: &str) -> Result<ServerConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::File(e.to_string()))
}
