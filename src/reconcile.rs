//! Resolution and diff: contacts + directory → changes (pure, no I/O).
