//! HTTP plumbing shared by the Graph and PoliteMail clients: endpoint checks, timeouts, retries.
