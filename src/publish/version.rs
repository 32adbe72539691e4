//! Version and channel names.
//!
//! Versions are calendar versions `YYYY.MM.DD.N` (N counts up from 1 within a UTC day)
//! unless given explicitly. Every version starts with a digit and every channel with a
//! letter, so `fetch web stable` and `fetch web 2026.01.02.1` can never be ambiguous.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};

/// Longest version or channel name accepted.
const MAX_LEN: usize = 64;

/// Check an explicit `--version`: a digit first, then letters, digits, `.`, `-`, `+`, `_`.
pub fn validate(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= MAX_LEN
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'))
        && !v.contains("..")
        && !v.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid version '{v}': a version starts with a digit and has only letters, \
             digits, '.', '-', '+', '_' (at most {MAX_LEN} characters), e.g. 2026.01.31.1 or 1.4.0"
        ))
    }
}

/// Check a channel name: a lower-case letter first, then lower-case letters, digits, `-`.
pub fn validate_channel(c: &str) -> Result<(), String> {
    let ok = !c.is_empty()
        && c.len() <= MAX_LEN
        && c.starts_with(|ch: char| ch.is_ascii_lowercase())
        && c.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid channel '{c}': a channel starts with a lower-case letter and has only \
             lower-case letters, digits and '-' (e.g. nightly, stable)"
        ))
    }
}

/// Does this name a version (rather than a channel)?
pub fn is_version(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit())
}

/// The next calendar version for `now`, given every version folder that exists
/// (committed or not: a half-published folder still holds its number).
pub fn next_calver(existing: &[String], now: DateTime<Utc>) -> String {
    let day = now.format("%Y.%m.%d.").to_string();
    let n = existing
        .iter()
        .filter_map(|v| v.strip_prefix(&day)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("{day}{}", n + 1)
}

/// Order versions: dot-separated parts compare numerically when both are numbers,
/// else as text; so 2026.01.02.10 comes after 2026.01.02.9.
pub fn compare(a: &str, b: &str) -> Ordering {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    _ => p.cmp(q),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn calver_counts_up_within_a_day() {
        let now = Utc.with_ymd_and_hms(2026, 3, 9, 23, 59, 0).unwrap();
        assert_eq!(next_calver(&[], now), "2026.03.09.1");
        let existing = vec![
            "2026.03.08.7".to_string(),
            "2026.03.09.1".to_string(),
            "2026.03.09.10".to_string(),
            "2026.03.09.2".to_string(),
            "1.0.0".to_string(),
        ];
        assert_eq!(next_calver(&existing, now), "2026.03.09.11");
    }

    #[test]
    fn versions_and_channels() {
        for ok in ["2026.01.31.1", "1.4.0", "1.4.0-rc1", "2+build_7"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "v1",
            "stable",
            "1..2",
            "1.",
            "1/2",
            "1 2",
            &"9".repeat(65),
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        assert!(validate_channel("stable").is_ok());
        assert!(validate_channel("canary-2").is_ok());
        for bad in ["", "Stable", "2nd", "a_b", "a/b"] {
            assert!(validate_channel(bad).is_err(), "{bad}");
        }
        assert!(is_version("2026.01.01.1") && !is_version("nightly"));
    }

    #[test]
    fn ordering_is_numeric_per_part() {
        let mut v = vec![
            "2026.01.02.10",
            "2026.01.02.9",
            "2025.12.31.1",
            "2026.01.02.9a",
        ];
        v.sort_by(|a, b| compare(a, b));
        assert_eq!(
            v,
            vec![
                "2025.12.31.1",
                "2026.01.02.9",
                "2026.01.02.10",
                "2026.01.02.9a"
            ]
        );
    }
}
