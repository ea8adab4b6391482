//! The PoliteMail list export (CSV).
