//! Microsoft Graph: authentication, retries, paging, `$batch`, groups and users.
