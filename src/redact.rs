//! Secrets out of text: every message, log line and status field that may hold a connection
//! string goes through [`redact`] first.

/// Removes passwords from URLs (`scheme://user:secret@host` → `scheme://user:***@host`) and
/// `password=…` conninfo pairs, so no secret reaches a log line or an error message.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '/').unwrap_or(tail.len());
        let authority = &tail[..end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                out.push_str(&userinfo[..colon]);
                out.push_str(":***");
            } else {
                out.push_str(userinfo);
            }
            out.push_str(&authority[at..]);
        } else {
            out.push_str(authority);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    // conninfo style: password=secret, password = secret, password='a b'
    let mut result = String::with_capacity(out.len());
    let mut s = out.as_str();
    while let Some(pos) = s.find("password") {
        let after = &s[pos + 8..];
        let trimmed = after.trim_start();
        if let Some(value) = trimmed.strip_prefix('=') {
            let value_start = value.trim_start();
            result.push_str(&s[..pos + 8]);
            result.push_str("=***");
            let consumed = if let Some(q) = value_start.strip_prefix('\'') {
                // Quoted: up to the closing quote (\' escapes inside).
                let mut end = q.len();
                let mut chars = q.char_indices();
                while let Some((i, c)) = chars.next() {
                    if c == '\\' {
                        chars.next();
                    } else if c == '\'' {
                        end = i + 1;
                        break;
                    }
                }
                1 + end
            } else {
                value_start.find(|c: char| c.is_whitespace() || c == '&').unwrap_or(value_start.len())
            };
            let skipped = after.len() - value_start.len() + consumed;
            s = &after[skipped.min(after.len())..];
        } else {
            result.push_str(&s[..pos + 8]);
            s = after;
        }
    }
    result.push_str(s);
    result
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(redact("cannot connect to postgres://app:s3cr3t@db:5432/x now"), "cannot connect to postgres://app:***@db:5432/x now");
        assert_eq!(redact("redis://:pw@localhost:6379/"), "redis://:***@localhost:6379/");
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("host=x password=hunter2 user=y"), "host=x password=*** user=y");
        assert_eq!(redact("host=x password = hunter2 user=y"), "host=x password=*** user=y");
        assert_eq!(redact("host=x password='a b' user=y"), "host=x password=*** user=y");
        assert_eq!(redact("host=x password='it\\'s' user=y"), "host=x password=*** user=y");
        assert_eq!(redact("no secrets here, passwords are fine"), "no secrets here, passwords are fine");
        assert_eq!(redact("postgres://u:p@h/db?password=zz&sslmode=require"), "postgres://u:***@h/db?password=***&sslmode=require");
    }
}
