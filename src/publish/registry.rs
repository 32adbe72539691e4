//! The OCI registry target: push the build's OCI image layout to a registry through the
//! distribution API (the `oci-client` crate) and tag it with the version and the channel.
//!
//! Blobs the registry already has are not uploaded again, and the manifest is pushed as
//! the exact bytes of the layout, so its digest (what the manifest records and what
//! consumers pin) is the one the build computed. A second push of the same content
//! uploads nothing and yields the same digest.
//!
//! Credentials come only from the environment variables the target names; the password is
//! registered with [`crate::exec::register_secret`] and never appears in argv or logs.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use backon::Retryable;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncReadExt;

use super::model::OciPushed;
use super::oci_layout::{LayoutBlob, LayoutError, OciLayout};
use super::retry::RetryPolicy;
use crate::config::RegistryTarget;

/// Blobs uploaded at the same time.
const BLOB_CONCURRENCY: usize = 3;
/// Read size when streaming a blob from disk.
const READ_CHUNK: usize = 4 << 20;

/// What to push where.
#[derive(Debug, Clone, Copy)]
pub struct PushRequest<'a> {
    /// The target's name in goldsmith.toml (`[targets.NAME.registry]`).
    pub target: &'a str,
    pub config: &'a RegistryTarget,
    /// The image name (fills `{image}` in the repository).
    pub image: &'a str,
    /// The OCI image layout directory.
    pub layout: &'a Path,
    /// Tags to set, e.g. `[version, channel]`; at least one.
    pub tags: &'a [String],
}

/// Registry credentials read from the environment.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The variable names, for error messages.
    pub username_env: String,
    pub password_env: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username_env", &self.username_env)
            .field("password_env", &self.password_env)
            .finish_non_exhaustive()
    }
}

/// The result of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// What the manifest records.
    pub pushed: OciPushed,
    /// Blobs sent to the registry.
    pub blobs_uploaded: usize,
    /// Blobs the registry already had.
    pub blobs_present: usize,
    pub bytes_uploaded: u64,
}

/// Why a push failed. Every message names the target, and the registry where it matters.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("target '{target}': {message}")]
    Config { target: String, message: String },
    #[error("target '{target}': {source}")]
    Layout {
        target: String,
        #[source]
        source: LayoutError,
    },
    #[error("target '{target}': environment variable {var} ({field}) is not set or empty")]
    MissingCredential {
        target: String,
        var: String,
        field: &'static str,
    },
    #[error(
        "target '{target}': registry {registry} demands authentication, but the target has no \
         credentials; set username_env and password_env under [targets.{target}.registry]"
    )]
    AuthRequired { target: String, registry: String },
    #[error(
        "target '{target}': registry {registry} rejected the credentials from ${username_env} \
         and ${password_env}: {detail}"
    )]
    AuthRejected {
        target: String,
        registry: String,
        username_env: String,
        password_env: String,
        detail: String,
    },
    #[error(
        "target '{target}': registry {registry} is unreachable or failing ({what}; gave up \
         after {attempts} attempts): {detail}"
    )]
    Unavailable {
        target: String,
        registry: String,
        what: String,
        attempts: usize,
        detail: String,
    },
    #[error("target '{target}': registry {registry} refused {what}: {detail}")]
    Rejected {
        target: String,
        registry: String,
        what: String,
        detail: String,
    },
    #[error(
        "target '{target}': registry {registry} resolves {reference} to {actual}, \
         but goldsmith pushed {expected}"
    )]
    DigestMismatch {
        target: String,
        registry: String,
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("target '{target}': cannot read {}: {source}", path.display())]
    Io {
        target: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Read the target's credentials from the environment variables it names.
/// `Ok(None)`: the target sets no credentials (anonymous push).
pub fn credentials_from_env(
    target: &str,
    cfg: &RegistryTarget,
) -> Result<Option<Credentials>, RegistryError> {
    credentials_from(target, cfg, |name| std::env::var(name).ok())
}

/// [`credentials_from_env`] with the variables looked up through `lookup`.
pub fn credentials_from(
    target: &str,
    cfg: &RegistryTarget,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Credentials>, RegistryError> {
    let (user_env, pass_env) = match (&cfg.username_env, &cfg.password_env) {
        (None, None) => return Ok(None),
        (Some(u), Some(p)) => (u, p),
        _ => {
            return Err(RegistryError::Config {
                target: target.into(),
                message: "set both username_env and password_env, or neither".into(),
            })
        }
    };
    let get = |var: &String, field: &'static str| {
        lookup(var)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RegistryError::MissingCredential {
                target: target.into(),
                var: var.clone(),
                field,
            })
    };
    let username = get(user_env, "username_env")?;
    let password = get(pass_env, "password_env")?;
    crate::exec::register_secret(&password);
    // The form that travels in `Authorization: Basic` headers.
    {
        use base64::Engine as _;
        crate::exec::register_secret(
            &base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")),
        );
    }
    Ok(Some(Credentials {
        username,
        password,
        username_env: user_env.clone(),
        password_env: pass_env.clone(),
    }))
}

/// The repository name for `image`: the target's `repository` with `{image}` filled in,
/// checked against the distribution spec's grammar.
pub fn repository_for(
    target: &str,
    cfg: &RegistryTarget,
    image: &str,
) -> Result<String, RegistryError> {
    let repo = cfg.repository.replace("{image}", image);
    let component_ok = |c: &str| {
        // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
        !c.is_empty()
            && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && !c.contains("..")
            && !c.contains("___")
            && !c.contains("._")
            && !c.contains("_.")
            && !c.contains(".-")
            && !c.contains("-.")
            && !c.contains("_-")
            && !c.contains("-_")
    };
    if repo.len() > 255 || !repo.split('/').all(component_ok) {
        return Err(RegistryError::Config {
            target: target.into(),
            message: format!(
                "repository '{repo}' is not a valid repository name (lowercase letters, digits \
                 and separators . _ __ - between them, components joined by /)"
            ),
        });
    }
    Ok(repo)
}

fn check_tag(target: &str, tag: &str) -> Result<(), RegistryError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Config {
            target: target.into(),
            message: format!("'{tag}' is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})"),
        })
    }
}

/// Push the layout in `req.layout` and set every tag in `req.tags` on its manifest.
///
/// Retries connection errors, timeouts and 5xx/429 answers with `retry`; a registry that
/// stays down fails with [`RegistryError::Unavailable`] naming it. A 401/403 fails at once
/// with [`RegistryError::AuthRequired`] (no credentials configured) or
/// [`RegistryError::AuthRejected`].
pub async fn push_layout(
    req: &PushRequest<'_>,
    creds: Option<&Credentials>,
    retry: &RetryPolicy,
) -> Result<PushOutcome, RegistryError> {
    let target = req.target;
    let registry = req.config.registry.trim().to_string();
    if registry.is_empty() || registry.contains('/') || registry.contains("://") {
        return Err(RegistryError::Config {
            target: target.into(),
            message: format!("registry '{registry}' must be host or host:port, without a scheme"),
        });
    }
    let repository = repository_for(target, req.config, req.image)?;
    let mut tags: Vec<String> = Vec::new();
    for t in req.tags {
        check_tag(target, t)?;
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    if tags.is_empty() {
        return Err(RegistryError::Config {
            target: target.into(),
            message: "no tag to push".into(),
        });
    }
    let layout = OciLayout::read(req.layout).map_err(|source| RegistryError::Layout {
        target: target.into(),
        source,
    })?;
    if req.config.insecure && !is_loopback(&registry) {
        tracing::warn!(
            target_name = target,
            "registry {registry} is used over plain HTTP (insecure = true) but is not a \
             loopback address: credentials and images travel unencrypted"
        );
    }

    let client = make_client(target, req.config.insecure)?;
    let auth = match creds {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let pusher = Pusher {
        target,
        registry: &registry,
        client: &client,
        auth: &auth,
        creds,
        retry,
    };
    let first = Reference::with_tag(registry.clone(), repository.clone(), tags[0].clone());
    // Stores the auth for this registry in the client: every later call applies it.
    client.store_auth_if_needed(&registry, &auth).await;

    // Blobs first (config and layers, each once), then the manifest under every tag.
    let mut unique: Vec<LayoutBlob> = Vec::new();
    for b in &layout.blobs {
        if !unique.iter().any(|u| u.digest == b.digest) {
            unique.push(b.clone());
        }
    }
    // Owned blobs and a named async block keep the stream's future Send (a closure
    // borrowing its argument is not general enough for the publish trait's Send bound).
    let pusher = &pusher;
    let first = &first;
    let results: Vec<Option<u64>> = stream::iter(unique)
        .map(|blob| async move { pusher.push_blob(first, &blob).await })
        .buffer_unordered(BLOB_CONCURRENCY)
        .try_collect()
        .await?;
    let blobs_uploaded = results.iter().filter(|r| r.is_some()).count();
    let blobs_present = results.len() - blobs_uploaded;
    let bytes_uploaded = results.iter().flatten().sum();

    for tag in &tags {
        let r = Reference::with_tag(registry.clone(), repository.clone(), tag.clone());
        pusher.push_manifest(&r, &layout).await?;
    }

    let digest = layout.manifest_digest.clone();
    tracing::info!(
        target_name = target,
        "pushed {registry}/{repository}@{digest} as {} ({blobs_uploaded} blobs uploaded, \
         {blobs_present} already present)",
        tags.join(", ")
    );
    Ok(PushOutcome {
        pushed: OciPushed {
            target: target.into(),
            reference: format!("{registry}/{repository}@{digest}"),
            digest,
            tags,
        },
        blobs_uploaded,
        blobs_present,
        bytes_uploaded,
    })
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn make_client(target: &str, insecure: bool) -> Result<Client, RegistryError> {
    install_crypto_provider();
    let config = ClientConfig {
        protocol: if insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("goldsmith/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    // `Client::new` silently falls back to a default config on error; we want the error.
    Client::try_from(config).map_err(|e| RegistryError::Config {
        target: target.into(),
        message: format!("cannot create the registry client: {e}"),
    })
}

/// oci-client's HTTP stack (reqwest with rustls) needs a process-wide crypto provider; we
/// use ring, which the rest of goldsmith's TLS already uses, instead of compiling aws-lc.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider is installed already, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// How an error from the registry client is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Connection failures, timeouts, 5xx, 429: retry.
    Transient,
    /// 401/403: fail at once, naming the credentials.
    Auth,
    /// Anything else (bad request, digest invalid, …): fail at once.
    Permanent,
}

fn classify(e: &OciDistributionError) -> Class {
    let by_status = |code: u16| match code {
        401 | 403 => Class::Auth,
        408 | 429 => Class::Transient,
        c if c >= 500 => Class::Transient,
        _ => Class::Permanent,
    };
    match e {
        OciDistributionError::RequestError(r) => match r.status() {
            Some(s) => by_status(s.as_u16()),
            None if r.is_connect() || r.is_timeout() || r.is_request() || r.is_body() => {
                Class::Transient
            }
            None => Class::Permanent,
        },
        OciDistributionError::ServerError { code, .. } => by_status(*code),
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Class::Auth,
        OciDistributionError::IoError(_) => Class::Transient,
        _ => Class::Permanent,
    }
}

struct Pusher<'a> {
    target: &'a str,
    registry: &'a str,
    client: &'a Client,
    auth: &'a RegistryAuth,
    creds: Option<&'a Credentials>,
    retry: &'a RetryPolicy,
}

impl Pusher<'_> {
    /// Run `op` with retries on transient errors and turn a final failure into a
    /// [`RegistryError`] that says what was being done.
    async fn with_retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let result = op
            .retry(self.retry.backoff())
            .sleep(tokio::time::sleep)
            .when(|e| classify(e) == Class::Transient)
            .notify(|e, delay| {
                tracing::warn!(
                    target_name = self.target,
                    "registry {}: {what} failed ({}); retrying in {delay:?}",
                    self.registry,
                    crate::exec::error_chain(e)
                )
            })
            .await;
        result.map_err(|e| self.fail(what, &e))
    }

    fn fail(&self, what: &str, e: &OciDistributionError) -> RegistryError {
        let (target, registry) = (self.target.to_string(), self.registry.to_string());
        match (classify(e), self.creds) {
            (Class::Auth, None) => RegistryError::AuthRequired { target, registry },
            (Class::Auth, Some(c)) => RegistryError::AuthRejected {
                target,
                registry,
                username_env: c.username_env.clone(),
                password_env: c.password_env.clone(),
                detail: crate::exec::error_chain(e),
            },
            (Class::Transient, _) => RegistryError::Unavailable {
                target,
                registry,
                what: what.into(),
                attempts: self.retry.attempts(),
                detail: crate::exec::error_chain(e),
            },
            (Class::Permanent, _) => RegistryError::Rejected {
                target,
                registry,
                what: what.into(),
                detail: crate::exec::error_chain(e),
            },
        }
    }

    /// Upload one blob unless the registry has it. `Some(bytes)` when it was uploaded.
    async fn push_blob(
        &self,
        reference: &Reference,
        blob: &LayoutBlob,
    ) -> Result<Option<u64>, RegistryError> {
        let short = &blob.digest[..19.min(blob.digest.len())];
        let exists = self
            .with_retry(&format!("checking blob {short}"), || {
                self.client.blob_exists(reference, &blob.digest)
            })
            .await?;
        if exists {
            tracing::debug!(
                "registry {}: blob {} already present",
                self.registry,
                blob.digest
            );
            return Ok(None);
        }
        self.with_retry(&format!("uploading blob {short}"), || async {
            let file = tokio::fs::File::open(&blob.path).await?;
            let chunks = stream::try_unfold(file, |mut f| async move {
                let mut buf = vec![0u8; READ_CHUNK];
                let mut filled = 0;
                // Fill whole chunks: each stream item becomes one PATCH request.
                while filled < buf.len() {
                    let n = f.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(None);
                }
                buf.truncate(filled);
                Ok(Some((bytes::Bytes::from(buf), f)))
            });
            self.client
                .push_blob_stream(reference, chunks, &blob.digest, Some(blob.size))
                .await
        })
        .await?;
        Ok(Some(blob.size))
    }

    /// Put the manifest under `reference`'s tag, then check the tag resolves to its digest.
    async fn push_manifest(
        &self,
        reference: &Reference,
        layout: &OciLayout,
    ) -> Result<(), RegistryError> {
        let tag = reference.tag().unwrap_or_default().to_string();
        let content_type: reqwest::header::HeaderValue = layout
            .manifest_media_type
            .parse()
            .map_err(|_| RegistryError::Config {
                target: self.target.into(),
                message: format!("bad manifest media type {}", layout.manifest_media_type),
            })?;
        let body = bytes::Bytes::from(layout.manifest_bytes.clone());
        self.with_retry(&format!("putting the manifest as tag {tag}"), || {
            self.client
                .push_manifest_raw(reference, body.clone(), content_type.clone())
        })
        .await?;
        let actual = self
            .with_retry(&format!("resolving tag {tag}"), || {
                self.client.fetch_manifest_digest(reference, self.auth)
            })
            .await?;
        if actual != layout.manifest_digest {
            return Err(RegistryError::DigestMismatch {
                target: self.target.into(),
                registry: self.registry.into(),
                reference: reference.whole(),
                expected: layout.manifest_digest.clone(),
                actual,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(repo: &str) -> RegistryTarget {
        RegistryTarget {
            registry: "127.0.0.1:5000".into(),
            repository: repo.into(),
            insecure: true,
            username_env: None,
            password_env: None,
        }
    }

    #[test]
    fn repository_names_follow_the_grammar() {
        assert_eq!(
            repository_for("t", &cfg("goldsmith/{image}"), "web").unwrap(),
            "goldsmith/web"
        );
        assert!(repository_for("t", &cfg("a__b/c-d.e"), "x").is_ok());
        for bad in [
            "Goldsmith/{image}",
            "a//b",
            "/a",
            "a/",
            "a..b",
            "a_-b",
            "-a",
        ] {
            let e = repository_for("t", &cfg(bad), "web").unwrap_err();
            assert!(
                e.to_string().contains("not a valid repository"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn tags_follow_the_grammar() {
        assert!(check_tag("t", "2026.11.23.1").is_ok());
        assert!(check_tag("t", "nightly").is_ok());
        assert!(check_tag("t", ".x").is_err());
        assert!(check_tag("t", "a:b").is_err());
        assert!(check_tag("t", &"a".repeat(129)).is_err());
    }

    #[test]
    fn credentials_name_the_missing_variable() {
        let mut c = cfg("r");
        c.username_env = Some("GS_U".into());
        c.password_env = Some("GS_P".into());
        let e = credentials_from("prod", &c, |n| (n == "GS_U").then(|| "bob".into())).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("'prod'") && msg.contains("GS_P"), "{msg}");

        let got = credentials_from("prod", &c, |n| Some(format!("{n}-value-x")))
            .unwrap()
            .unwrap();
        assert_eq!(got.username, "GS_U-value-x");
        // The password is a registered secret and the Debug output does not show it.
        assert_eq!(crate::exec::redact("GS_P-value-x"), "***");
        assert!(!format!("{got:?}").contains("GS_P-value-x"));

        c.password_env = None;
        assert!(credentials_from("prod", &c, |_| None)
            .unwrap_err()
            .to_string()
            .contains("both"));
        assert!(credentials_from("prod", &cfg("r"), |_| None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
