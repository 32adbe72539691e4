//! The webhook sink: POST the CloudEvent, signed per Standard Webhooks.
//!
//! Headers: `webhook-id` (the event id), `webhook-timestamp` (unix seconds),
//! `webhook-signature` (`v1,` + base64 HMAC-SHA256 over `id.timestamp.body`, keyed with
//! the `whsec_` secret), `Idempotency-Key` (the event id). Every attempt is signed afresh
//! so a retry never carries a timestamp a verifier rejects as stale.
//!
//! Signing is written here rather than taken from the `standardwebhooks` crate: it is one
//! HMAC (from the `hmac` crate) over a documented string, and the crate would add the
//! `time` and `http` stacks for that one call. The tests check every signature with the
//! spec's reference library (PyPI `standardwebhooks`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{truncate, Outcome, SinkResult};
use crate::config::WebhookSink;
use crate::exec;
use crate::rollout::event::CLOUDEVENT_MEDIA_TYPE;
use crate::rollout::outbox::OutboxRecord;

/// How much of a rejecting receiver's answer is kept in the delivery state.
const BODY_KEEP: usize = 2048;

/// The signing key from a `whsec_…` secret (the prefix is optional, as in the spec's
/// libraries).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
    // The spec's libraries accept the base64 with or without padding.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        general_purpose::PAD.with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let b64 = secret
        .trim()
        .strip_prefix("whsec_")
        .unwrap_or(secret.trim());
    LENIENT
        .decode(b64)
        .map_err(|e| format!("the secret is not whsec_ + base64: {e}"))
}

/// `v1,<base64 signature>` of one message.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    )
}

/// Why one attempt did not deliver.
#[derive(Debug)]
struct AttemptError {
    /// Worth another attempt.
    transient: bool,
    http_status: Option<u16>,
    message: String,
    body: Option<String>,
    /// What the receiver asked for with `Retry-After`.
    retry_after: Option<Duration>,
}

/// Deliver one event, retrying transient failures with exponential backoff and jitter.
pub async fn deliver(cfg: &WebhookSink, rec: &OutboxRecord) -> SinkResult {
    let secret = match std::env::var(&cfg.secret_env) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => {
            return SinkResult {
                attempts: 0,
                outcome: Outcome::Pending {
                    error: format!(
                        "the signing secret is not set: environment variable {} is empty",
                        cfg.secret_env
                    ),
                    http_status: None,
                },
            }
        }
    };
    exec::register_secret(&secret);
    // Without its prefix too: that is the part a message or a decoder would echo.
    exec::register_secret(secret.trim().trim_start_matches("whsec_"));
    let key = match decode_secret(&secret) {
        Ok(k) => k,
        Err(e) => {
            return SinkResult {
                attempts: 0,
                outcome: Outcome::Pending {
                    error: format!("{}: {e}", cfg.secret_env),
                    http_status: None,
                },
            }
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.timeout_secs))
        // A redirected POST turns into a GET in most clients; a receiver that moved must
        // be configured with its new URL instead.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("goldsmith/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return SinkResult {
                attempts: 0,
                outcome: Outcome::Pending {
                    error: format!("cannot set up the HTTP client: {e}"),
                    http_status: None,
                },
            }
        }
    };
    let body = rec.cloudevent.body();
    let attempts = AtomicU32::new(0);
    let backoff = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(cfg.backoff_min_ms))
        .with_max_delay(Duration::from_secs(cfg.backoff_max_secs))
        .with_max_times(cfg.max_attempts.saturating_sub(1) as usize);
    let retry_after_cap = Duration::from_secs(cfg.retry_after_max_secs);
    let result = (|| async {
        attempts.fetch_add(1, Ordering::SeqCst);
        attempt(&client, &cfg.url, &key, &rec.id, &body).await
    })
    .retry(backoff)
    .when(|e: &AttemptError| e.transient)
    .adjust(
        |e: &AttemptError, next: Option<Duration>| match (next, e.retry_after) {
            // Out of attempts: stop, whatever the receiver asked.
            (None, _) => None,
            (Some(_), Some(ra)) if ra <= retry_after_cap => Some(ra),
            // The receiver wants a longer pause than this run waits: the next run delivers.
            (Some(_), Some(_)) => None,
            (Some(d), None) => Some(d),
        },
    )
    .notify(|e: &AttemptError, d: Duration| {
        tracing::info!(
            event = %rec.id,
            url = %cfg.url,
            "webhook attempt failed ({}); retrying in {:.1}s",
            e.message,
            d.as_secs_f64()
        );
    })
    .await;
    let attempts = attempts.load(Ordering::SeqCst);
    let outcome = match result {
        Ok(status) => Outcome::Delivered {
            http_status: Some(status),
        },
        Err(e) if e.transient => Outcome::Pending {
            error: e.message,
            http_status: e.http_status,
        },
        Err(e) => Outcome::Failed {
            error: e.message,
            http_status: e.http_status,
            body: e.body,
        },
    };
    SinkResult { attempts, outcome }
}

async fn attempt(
    client: &reqwest::Client,
    url: &str,
    key: &[u8],
    id: &str,
    body: &[u8],
) -> Result<u16, AttemptError> {
    let ts = chrono::Utc::now().timestamp();
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, CLOUDEVENT_MEDIA_TYPE)
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sign(key, id, ts, body))
        .header("Idempotency-Key", id)
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| AttemptError {
            transient: true,
            http_status: None,
            message: format!("POST {url}: {}", describe(&e)),
            body: None,
            retry_after: None,
        })?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(status);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let text = resp.text().await.unwrap_or_default();
    let transient = matches!(status, 408 | 429) || (500..=599).contains(&status);
    Err(AttemptError {
        transient,
        http_status: Some(status),
        message: format!("POST {url}: HTTP {status}"),
        body: Some(truncate(&text, BODY_KEEP)),
        // Retry-After is honoured where the spec gives it meaning for a retry.
        retry_after: if matches!(status, 429 | 503) {
            retry_after
        } else {
            None
        },
    })
}

/// `Retry-After`: delay seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A short reason for a failed request: reqwest's top-level message repeats the URL, and
/// the useful part ("Connection refused") is the innermost cause.
fn describe(e: &reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = e;
    while let Some(s) = root.source() {
        root = s;
    }
    if e.is_timeout() {
        format!("timed out ({root})")
    } else if e.is_connect() {
        format!("cannot connect: {root}")
    } else {
        format!("{e}: {root}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_spec_example() {
        // The example from the Standard Webhooks specification.
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn bad_secret_is_reported() {
        assert!(decode_secret("whsec_not base64!").is_err());
        assert_eq!(decode_secret("whsec_AAAA").unwrap(), vec![0, 0, 0]);
        assert_eq!(decode_secret("whsec_AAA").unwrap(), vec![0, 0]);
        assert_eq!(decode_secret("AAA=").unwrap(), vec![0, 0]);
    }
}
