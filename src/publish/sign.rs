//! minisign signatures (ed25519, prehashed), through the `minisign` crate, so that
//! Debian's `minisign -Vm manifest.json -p key.pub` verifies what goldsmith signs.
//!
//! Keys: `goldsmith keygen` writes the secret key (0600) and `<key>.pub`. With a
//! passphrase the secret key is scrypt-encrypted exactly as minisign does; without one
//! it is stored unencrypted, which only goldsmith (and rsign) can read back — the public
//! key and signatures are standard either way.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SignatureBox};

use crate::config::Config;
use crate::exec;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(
        "no signing key configured: every published manifest is signed. Create a key pair \
         with `goldsmith keygen --out goldsmith.key` and set [signing] key = \"goldsmith.key\" \
         in goldsmith.toml (add passphrase_env = \"VAR\" if the key has a passphrase)"
    )]
    NoKey,
    #[error(
        "no public key configured to check signatures: set [signing] public_key (or key, \
         whose .pub file is used) in goldsmith.toml, or pass --public-key"
    )]
    NoPublicKey,
    #[error("signing key {path}: environment variable {var} (signing.passphrase_env) is not set")]
    NoPassphrase { path: PathBuf, var: String },
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("signature of {what} does not verify: {message}")]
    Bad { what: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A loaded secret key.
pub struct Signer {
    sk: SecretKey,
    pk: PublicKey,
    pub key_path: PathBuf,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.key_path.display())
    }
}

/// The public key path for a secret key path.
pub fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn passphrase(var: Option<&str>, path: &Path) -> Result<String, SignError> {
    match var {
        None => Ok(String::new()),
        Some(v) => match std::env::var(v) {
            Ok(p) if !p.is_empty() => {
                exec::register_secret(&p);
                Ok(p)
            }
            _ => Err(SignError::NoPassphrase {
                path: path.to_owned(),
                var: v.to_string(),
            }),
        },
    }
}

impl Signer {
    /// Load the key `[signing]` names.
    pub fn from_config(config: &Config) -> Result<Signer, SignError> {
        let key = config.def.signing.key.as_deref().ok_or(SignError::NoKey)?;
        Signer::load(
            &config.path(key),
            config.def.signing.passphrase_env.as_deref(),
        )
    }

    /// Load a secret key; its passphrase (if any) from the environment variable `var`.
    pub fn load(path: &Path, var: Option<&str>) -> Result<Signer, SignError> {
        let key_err = |m: String| SignError::Key {
            path: path.to_owned(),
            message: m,
        };
        let text = std::fs::read_to_string(path).map_err(|e| key_err(e.to_string()))?;
        // The key's own line (unencrypted keys hold the key itself) is as secret as the
        // passphrase: nothing may print it.
        for line in text.lines().skip(1) {
            exec::register_secret(line.trim());
        }
        let pass = passphrase(var, path)?;
        let sk = SecretKey::from_box(text.into(), Some(pass)).map_err(|e| {
            key_err(format!(
                "cannot read the secret key ({e}); wrong passphrase or not a minisign key"
            ))
        })?;
        let pk = PublicKey::from_secret_key(&sk).map_err(|e| key_err(e.to_string()))?;
        Ok(Signer {
            sk,
            pk,
            key_path: path.to_owned(),
        })
    }

    /// Sign `data`; returns the `.minisig` file content.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<String, SignError> {
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            Cursor::new(data),
            Some(trusted_comment),
            Some("signature from goldsmith secret key"),
        )
        .map_err(|e| SignError::Key {
            path: self.key_path.clone(),
            message: e.to_string(),
        })?;
        Ok(sig.into_string())
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.pk
    }
}

/// Create a key pair: `out` (secret, mode 0600) and `out.pub`. Refuses to overwrite.
pub fn keygen(out: &Path, passphrase_var: Option<&str>) -> Result<PathBuf, SignError> {
    let pass = passphrase(passphrase_var, out)?;
    let pub_out = pub_path(out);
    for p in [out, pub_out.as_path()] {
        if p.exists() {
            return Err(SignError::Exists { path: p.to_owned() });
        }
    }
    let KeyPair { pk, sk } =
        KeyPair::generate_encrypted_keypair(Some(pass)).map_err(|e| SignError::Key {
            path: out.to_owned(),
            message: e.to_string(),
        })?;
    let key_err = |e: minisign::PError| SignError::Key {
        path: out.to_owned(),
        message: e.to_string(),
    };
    let sk_bytes = sk.to_box(None).map_err(key_err)?.to_bytes();
    let pk_bytes = pk.to_box().map_err(key_err)?.to_bytes();
    write_new(out, &sk_bytes, 0o600)?;
    write_new(&pub_out, &pk_bytes, 0o644)?;
    Ok(pub_out)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SignError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => SignError::Exists {
                path: path.to_owned(),
            },
            _ => SignError::Key {
                path: path.to_owned(),
                message: e.to_string(),
            },
        })?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Read a public key file.
pub fn load_public_key(path: &Path) -> Result<PublicKey, SignError> {
    let text = std::fs::read_to_string(path).map_err(|e| SignError::Key {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    PublicKeyBox::from_string(&text)
        .and_then(|b| b.into_public_key())
        .map_err(|e| SignError::Key {
            path: path.to_owned(),
            message: format!("not a minisign public key: {e}"),
        })
}

/// The public key `[signing]` names: `public_key`, else `key` + `.pub`.
pub fn public_key_from_config(config: &Config) -> Result<PublicKey, SignError> {
    let s = &config.def.signing;
    let path = match (&s.public_key, &s.key) {
        (Some(p), _) => config.path(p),
        (None, Some(k)) => pub_path(&config.path(k)),
        (None, None) => return Err(SignError::NoPublicKey),
    };
    load_public_key(&path)
}

/// Check a minisign signature over `data`; returns the trusted comment.
pub fn verify(
    pk: &PublicKey,
    data: &[u8],
    signature: &str,
    what: &str,
) -> Result<String, SignError> {
    let bad = |m: String| SignError::Bad {
        what: what.to_string(),
        message: m,
    };
    let sig = SignatureBox::from_string(signature).map_err(|e| bad(e.to_string()))?;
    minisign::verify(pk, &sig, Cursor::new(data), true, false, false)
        .map_err(|e| bad(e.to_string()))?;
    sig.trusted_comment().map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("k.key");
        keygen(&key, None).unwrap();
        assert!(matches!(keygen(&key, None), Err(SignError::Exists { .. })));
        let s = Signer::load(&key, None).unwrap();
        let sig = s.sign(b"hello", "goldsmith test").unwrap();
        let pk = load_public_key(&pub_path(&key)).unwrap();
        assert_eq!(verify(&pk, b"hello", &sig, "x").unwrap(), "goldsmith test");
        assert!(verify(&pk, b"hellO", &sig, "x").is_err());
        // Another key's signature is rejected.
        let other = d.path().join("o.key");
        keygen(&other, None).unwrap();
        let sig2 = Signer::load(&other, None)
            .unwrap()
            .sign(b"hello", "c")
            .unwrap();
        assert!(verify(&pk, b"hello", &sig2, "x").is_err());
    }

    #[test]
    fn passphrase_protected_key() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("k.key");
        std::env::set_var("GOLDSMITH_TEST_PASS_A", "correct horse");
        keygen(&key, Some("GOLDSMITH_TEST_PASS_A")).unwrap();
        assert!(Signer::load(&key, Some("GOLDSMITH_TEST_PASS_A")).is_ok());
        std::env::set_var("GOLDSMITH_TEST_PASS_B", "wrong horse");
        assert!(Signer::load(&key, Some("GOLDSMITH_TEST_PASS_B")).is_err());
        assert!(matches!(
            Signer::load(&key, Some("GOLDSMITH_TEST_PASS_UNSET")),
            Err(SignError::NoPassphrase { .. })
        ));
    }
}
