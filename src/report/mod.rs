//! What people read: review tables for `show`, `plan` and `apply`, and the HTML report.
