//! The files of sinks: which file a path names, whether a file is a token file a sink wrote (the
//! agent replaces and removes only its own), and the atomic writer (`exec`'s token file uses it
//! too).

use std::path::Path;

/// Which file a path names: its device and inode.
pub type FileId = (u64, u64);

pub fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

/// Whether `path` is a regular file (not followed if a link) holding what a sink writes, in any
/// format: what an earlier run of the agent may have left.
pub fn holds_a_token_file(path: &Path) -> bool {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    let mut text = String::new();
    let read = file.metadata().is_ok_and(|m| m.is_file())
        && file.take(64 * 1024).read_to_string(&mut text).is_ok();
    read && is_token_file(&text)
}

/// Whether `text` has the shape of one of the formats a sink writes.
fn is_token_file(text: &str) -> bool {
    // A token is a b64token (RFC 6750's bearer token syntax); a key a shell variable's name.
    let token68 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    };
    let env_line = |l: &str| {
        l.split_once('=').is_some_and(|(k, _)| {
            k.starts_with("ZOHO_") && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    };
    token68(text)
        || text
            .strip_prefix("Authorization: Zoho-oauthtoken ")
            .and_then(|t| t.strip_suffix('\n'))
            .is_some_and(token68)
        || serde_json::from_str::<serde_json::Value>(text)
            .is_ok_and(|v| v["token_type"] == "Zoho-oauthtoken" && v["connector"].is_string())
        || (text.ends_with('\n')
            && text.lines().all(env_line)
            && text.lines().any(|l| l.contains("_ACCESS_TOKEN=")))
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory with the final
/// mode and group, synced, then renamed over the old one — a reader sees the old contents or the
/// new, never a mix. Returns which file it is now.
pub fn write_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
    group: Option<u32>,
) -> std::io::Result<FileId> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = (|| {
        if let Some(gid) = group {
            std::os::unix::fs::fchown(&file, None, Some(gid))?;
        }
        // Exactly the mode asked for, whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        let id = file_id(&file.metadata()?);
        std::fs::rename(&tmp, path).map(|()| id)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::is_token_file;

    /// What another program may keep at a path is never taken for a token file.
    #[test]
    fn only_token_files_look_like_token_files() {
        for ours in [
            "1000.abc",
            "Authorization: Zoho-oauthtoken 1000.abc\n",
            "ZOHO_CRM_ACCESS_TOKEN=1000.abc\nZOHO_CRM_API_DOMAIN=https://x\nZOHO_CRM_EXPIRES_AT=9\n",
            "{\"access_token\":\"1000.abc\",\"token_type\":\"Zoho-oauthtoken\",\"connector\":\"crm\"}\n",
        ] {
            assert!(is_token_file(ours), "{ours:?}");
        }
        for theirs in [
            "",
            "listen 80\n",
            "root:x:0:0:root:/root:/bin/bash\n",
            "#!/bin/sh\nexit 0\n",
            "Authorization: Zoho-oauthtoken a b\n",
            "ZOHO_CRM_ACCESS_TOKEN=1\nPATH=/bin\n",
            "{\"access_token\":\"x\"}",
        ] {
            assert!(!is_token_file(theirs), "{theirs:?}");
        }
    }
}
