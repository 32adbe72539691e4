//! The connection to AWS for one AMI publish: credentials, the EBS and EC2 clients, and
//! the one retry loop every call goes through.

use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_ebs::config::http::HttpResponse;
use aws_sdk_ebs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_types::region::Region;
use backon::Retryable;

use super::ec2::{Ec2Client, Ec2Error};
use super::{AmiError, AmiOptions, AmiRequest};

/// How an API error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// No answer, 5xx, throttling: retry.
    Transient,
    /// The credentials were refused: fail at once.
    Auth,
    /// Anything else: fail at once.
    Permanent,
}

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "TooManyRequestsException",
    "InternalError",
    "InternalFailure",
    "InternalServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "Unavailable",
];
const AUTH: &[&str] = &[
    "AuthFailure",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "ExpiredToken",
    "ExpiredTokenException",
];

fn class_of(status: u16, code: &str, also: &[&str]) -> Class {
    if THROTTLING.contains(&code) || also.contains(&code) || status >= 500 || status == 429 {
        Class::Transient
    } else if AUTH.contains(&code) || status == 401 || status == 403 {
        Class::Auth
    } else {
        Class::Permanent
    }
}

/// An error from one of the two API clients, as the retry loop sees it.
pub(super) trait ApiError: std::error::Error + Send + Sync + 'static {
    /// `also`: error codes that count as transient for this call.
    fn class(&self, also: &[&str]) -> Class;
    /// The full message, secrets redacted.
    fn detail(&self) -> String;
}

impl<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static> ApiError
    for SdkError<E, HttpResponse>
{
    fn class(&self, also: &[&str]) -> Class {
        match self {
            SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Class::Transient,
            SdkError::DispatchFailure(d) if !d.is_user() => Class::Transient,
            SdkError::ServiceError(s) => class_of(
                s.raw().status().as_u16(),
                s.err().code().unwrap_or_default(),
                also,
            ),
            _ => Class::Permanent,
        }
    }
    fn detail(&self) -> String {
        redacted(self)
    }
}

impl ApiError for Ec2Error {
    fn class(&self, also: &[&str]) -> Class {
        match self {
            Ec2Error::Transport { transient, .. } => {
                if *transient {
                    Class::Transient
                } else {
                    Class::Permanent
                }
            }
            Ec2Error::Service { status, code, .. } => class_of(*status, code, also),
            Ec2Error::Credentials { .. } => Class::Auth,
        }
    }
    fn detail(&self) -> String {
        crate::exec::redact(&self.to_string())
    }
}

/// The whole error chain of `e`, secrets redacted.
pub(super) fn redacted(e: &(dyn std::error::Error + 'static)) -> String {
    crate::exec::redact(&DisplayErrorContext(e).to_string())
}

/// What a poll of a resource found.
pub(super) enum Poll {
    Done,
    Pending,
    Failed(String),
}

/// AWS clients and settings for one publish.
pub(super) struct Aws<'a> {
    pub target: &'a str,
    /// The target's own region.
    pub region: String,
    /// For messages: the endpoint override, or "AWS".
    pub endpoint: String,
    endpoint_override: bool,
    pub ebs: aws_sdk_ebs::Client,
    pub ec2: Ec2Client,
    pub opts: &'a AmiOptions,
}

impl<'a> Aws<'a> {
    /// Load the configuration and resolve the credentials (so that missing ones fail
    /// before gigabytes are read, with a message that says what is missing).
    pub async fn connect(req: &AmiRequest<'a>, opts: &'a AmiOptions) -> Result<Aws<'a>, AmiError> {
        let cfg = req.config;
        // ring, as the rest of goldsmith's TLS, rather than the SDK's default aws-lc build.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .http_client(http)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(ep) = &cfg.endpoint {
            loader = loader.endpoint_url(ep);
        }
        if let Some(c) = &opts.credentials {
            loader = loader.credentials_provider(c.clone());
        }
        let sdk = loader.load().await;

        let missing = |detail: String| AmiError::MissingCredentials {
            target: req.target.into(),
            detail,
        };
        let provider = sdk
            .credentials_provider()
            .ok_or_else(|| missing("no credential provider configured".into()))?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| missing(DisplayErrorContext(&e).to_string()))?;
        crate::exec::register_secret(creds.secret_access_key());
        if let Some(t) = creds.session_token() {
            crate::exec::register_secret(t);
        }

        let ec2 = Ec2Client::new(&cfg.region, cfg.endpoint.as_deref(), provider).map_err(|e| {
            AmiError::Config {
                target: req.target.into(),
                message: format!("cannot create the HTTP client: {e}"),
            }
        })?;
        Ok(Aws {
            target: req.target,
            region: cfg.region.clone(),
            endpoint: cfg.endpoint.clone().unwrap_or_else(|| "AWS".into()),
            endpoint_override: cfg.endpoint.is_some(),
            ebs: aws_sdk_ebs::Client::new(&sdk),
            ec2,
            opts,
        })
    }

    /// The EC2 client for `region`.
    pub fn ec2_in(&self, region: &str) -> Ec2Client {
        self.ec2.for_region(region, self.endpoint_override)
    }

    /// Run an API call with retries; `also` lists error codes that are transient for this
    /// call in particular. The final error says what was called where.
    pub async fn call<T, E, F, Fut>(
        &self,
        region: &str,
        operation: &str,
        also: &[&str],
        f: F,
    ) -> Result<T, AmiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: ApiError,
    {
        let result = f
            .retry(self.opts.retry.backoff())
            .sleep(tokio::time::sleep)
            .when(|e| e.class(also) == Class::Transient)
            .notify(|e, delay| {
                tracing::warn!(
                    target_name = self.target,
                    "{operation} in {region} failed ({}); retrying in {delay:?}",
                    e.detail()
                )
            })
            .await;
        result.map_err(|e| {
            let (target, region, operation) = (
                self.target.to_string(),
                region.to_string(),
                operation.to_string(),
            );
            let detail = e.detail();
            match e.class(also) {
                Class::Transient => AmiError::Unavailable {
                    target,
                    endpoint: self.endpoint.clone(),
                    call: format!("{operation} in {region}"),
                    attempts: self.opts.retry.attempts(),
                    detail,
                },
                Class::Auth => AmiError::AuthRejected {
                    target,
                    region,
                    operation,
                    detail,
                },
                Class::Permanent => AmiError::Api {
                    target,
                    region,
                    operation,
                    detail,
                },
            }
        })
    }

    /// Poll until done, failed, or the wait timeout.
    pub async fn wait<F, Fut>(&self, region: &str, what: &str, mut poll: F) -> Result<(), AmiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Poll, AmiError>>,
    {
        let start = Instant::now();
        loop {
            match poll().await? {
                Poll::Done => return Ok(()),
                Poll::Failed(state) => {
                    return Err(AmiError::BadState {
                        target: self.target.into(),
                        region: region.into(),
                        what: what.into(),
                        state,
                    })
                }
                Poll::Pending if start.elapsed() >= self.opts.wait_timeout => {
                    return Err(AmiError::Timeout {
                        target: self.target.into(),
                        region: region.into(),
                        what: what.into(),
                        secs: self.opts.wait_timeout.as_secs(),
                    })
                }
                Poll::Pending => tokio::time::sleep(self.opts.poll_interval).await,
            }
        }
    }

    /// Wait until the snapshot is `completed`.
    pub async fn wait_snapshot(&self, region: &str, snapshot_id: &str) -> Result<(), AmiError> {
        let ec2 = self.ec2_in(region);
        let what = format!("snapshot {snapshot_id}");
        self.wait(region, &what, || async {
            // Right after CompleteSnapshot, EC2 may not list the snapshot yet.
            let state = self
                .call(
                    region,
                    "DescribeSnapshots",
                    &["InvalidSnapshot.NotFound"],
                    || ec2.snapshot_state(snapshot_id),
                )
                .await?;
            Ok(match state.as_deref() {
                Some("completed") => Poll::Done,
                Some("error") => Poll::Failed("error".into()),
                _ => Poll::Pending,
            })
        })
        .await
    }

    /// Wait until the AMI is `available`.
    pub async fn wait_image(&self, region: &str, image_id: &str) -> Result<(), AmiError> {
        let ec2 = self.ec2_in(region);
        let what = format!("AMI {image_id}");
        self.wait(region, &what, || async {
            let image = self
                .call(region, "DescribeImages", &["InvalidAMIID.NotFound"], || {
                    ec2.describe_image(image_id)
                })
                .await?;
            Ok(match image.and_then(|i| i.state).as_deref() {
                Some("available") => Poll::Done,
                Some(s @ ("failed" | "error" | "invalid" | "deregistered")) => {
                    Poll::Failed(s.to_string())
                }
                _ => Poll::Pending,
            })
        })
        .await
    }
}
