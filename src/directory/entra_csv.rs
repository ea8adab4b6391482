//! The Entra admin center's "Download members" and "Download users" CSV exports.
