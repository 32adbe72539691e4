//! Build-time secrets reach recipe scripts and nothing else: not the raw disk, the rootfs
//! tar, the OCI blobs, build.json, the logs or `plan --json`; a layer that writes one
//! into the image fails the build naming the file, and nothing of it is kept.

#[path = "support/hostile.rs"]
mod hostile;
mod support;

use hostile::{build_dir, file_contains, nonce, oci_contains, zstd_contains, TokenServer};
use support::{assert_failed_cleanly, shared_cache};

const LAYER: &str = r#"
[[secrets]]
name = "token"
env = "GS_TEST_TOKEN"

[[scripts]]
path = "use-token.sh"
network = true
"#;

#[test]
fn build_secrets_reach_scripts_and_no_output() {
    let secret = nonce("gs-secret");
    let payload = nonce("payload-only-for-token-holders");
    let server = TokenServer::start(&secret, &payload);
    // The script uses the token to fetch from a server that checks it, records a hash of
    // it (a legitimate use), and prints it to stderr (which the logs must redact).
    let script = format!(
        r#"#!/bin/bash
set -eu
tok=$(cat /run/goldsmith/secrets/token)
echo "the token is $tok" >&2
sha256sum < /run/goldsmith/secrets/token | cut -d' ' -f1 > /etc/token.sha256
exec 3<>/dev/tcp/127.0.0.1/{port}
printf 'GET /payload HTTP/1.0\r\nAuthorization: Bearer %s\r\n\r\n' "$tok" >&3
cat <&3 > /tmp/response
head -1 /tmp/response | grep -q ' 200 '
tail -c {len} /tmp/response > /etc/fetched-payload
"#,
        port = server.port,
        len = payload.len()
    );
    let p = hostile::image_on_base(
        "sec",
        LAYER,
        &[("scripts/use-token.sh", &script)],
        r#"["raw", "tar", "oci"]"#,
    );
    let run = |args: &[&str]| {
        let o = p
            .cmd()
            .env("GS_TEST_TOKEN", &secret)
            .env("GOLDSMITH_LOG", "goldsmith=debug")
            .args(args)
            .output()
            .unwrap();
        support::Run::from(o)
    };
    let r = run(&["-v", "build", "sec", "--json"]).expect(0);
    assert_eq!(
        server.authorized.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the script authenticated with the secret"
    );
    let dir = build_dir(&r);
    let s = secret.as_bytes();
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(s))
    };

    // Every output format: the payload the secret bought is there (so each search
    // really reads the format), the secret is not.
    let raw = dir.join("sec.raw");
    assert!(
        file_contains(&raw, payload.as_bytes()),
        "payload in the raw disk"
    );
    assert!(file_contains(&raw, hash.as_bytes()), "hash in the raw disk");
    assert!(!file_contains(&raw, s), "secret in the raw disk");
    let tar = dir.join("sec.rootfs.tar.zst");
    assert!(
        zstd_contains(&tar, payload.as_bytes()),
        "payload in the rootfs tar"
    );
    assert!(!zstd_contains(&tar, s), "secret in the rootfs tar");
    let oci = dir.join("sec.oci");
    assert!(
        oci_contains(&oci, payload.as_bytes()),
        "payload in the OCI blobs"
    );
    assert!(!oci_contains(&oci, s), "secret in the OCI blobs");
    assert!(
        !file_contains(&dir.join("build.json"), s),
        "secret in build.json"
    );
    // The layer cache entry (what later builds and other workers reuse) neither.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    let top = rec["layers"][1]["digest"].as_str().unwrap();
    let entry = shared_cache().join("layers").join(top).join("diff.tar.zst");
    assert!(zstd_contains(&entry, payload.as_bytes()));
    assert!(!zstd_contains(&entry, s), "secret in the layer cache");

    // Logs: debug logging shows the script's stderr, redacted.
    assert!(r.stderr.contains("the token is ***"), "{}", r.stderr);
    assert!(!r.stderr.contains(&secret), "{}", r.stderr);
    assert!(!r.stdout.contains(&secret));
    assert!(
        r.stdout.contains("\"secret-scan\""),
        "the scan ran: {}",
        r.stdout
    );
    let plan = run(&["plan", "--json"]).expect(0);
    assert!(!plan.stdout.contains(&secret) && !plan.stderr.contains(&secret));
}

#[test]
fn a_layer_that_writes_a_secret_into_the_image_fails_naming_the_file() {
    let secret = nonce("gs-leaky-secret");
    for (image, script, file) in [
        (
            "leakraw",
            "cp /run/goldsmith/secrets/token /etc/leaked.conf",
            "/etc/leaked.conf",
        ),
        // Base64, as in a docker config.json `auth` field.
        (
            "leakb64",
            "printf '{\"auth\":\"%s\"}' \"$(base64 -w0 /run/goldsmith/secrets/token)\" > /root/config.json",
            "/root/config.json",
        ),
    ] {
        let layer = format!(
            "[[secrets]]\nname = \"token\"\nenv = \"GS_TEST_TOKEN\"\n\n[[scripts]]\nrun = '''# {}\n{script}'''\n",
            nonce("leak")
        );
        let p = hostile::image_on_base(image, &layer, &[], r#"["raw"]"#);
        let o = p
            .cmd()
            .env("GS_TEST_TOKEN", &secret)
            .args(["build", image])
            .output()
            .unwrap();
        let r = support::Run::from(o);
        assert_failed_cleanly(
            &p,
            &shared_cache(),
            image,
            &r,
            &[&format!("layer {image}-top"), "secret scan", file, "build secret 'token'"],
        );
        assert!(!r.stderr.contains(&secret), "{}", r.stderr);
        assert!(!r.stdout.contains(&secret));
        // The leaky layer was not cached.
        let plan = p
            .cmd()
            .env("GS_TEST_TOKEN", &secret)
            .args(["plan", "--json"])
            .output()
            .unwrap();
        let plan = support::Run::from(plan).expect(0).json();
        let img = plan["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == image)
            .unwrap()
            .clone();
        assert_eq!(img["layers"][1]["cached"], false, "{img}");
        let digest = img["layers"][1]["digest"].as_str().unwrap();
        assert!(!shared_cache().join("layers").join(digest).exists());
    }
}

#[test]
fn a_secret_too_short_to_scan_for_is_refused() {
    let p = hostile::image_on_base(
        "shortsec",
        "[[secrets]]\nname = \"pin\"\nenv = \"GS_TEST_PIN\"\n\n[[scripts]]\nrun = 'true'\n",
        &[],
        r#"["raw"]"#,
    );
    let o = p
        .cmd()
        .env("GS_TEST_PIN", "1234\n")
        .args(["build", "shortsec"])
        .output()
        .unwrap();
    let r = support::Run::from(o);
    assert_failed_cleanly(
        &p,
        &shared_cache(),
        "shortsec",
        &r,
        &["layer shortsec-top: secret 'pin' is shorter than 8 bytes"],
    );
}

#[test]
fn credentials_pasted_into_goldsmith_toml_are_refused_without_echoing_them() {
    let p = support::Project::example();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    p.config_append(&format!(
        "[sinks.hook.webhook]\nurl = \"https://example.invalid/hook\"\nsecret_env = \"{secret}\"\n"
    ));
    let r = p.run(&["validate"]).expect(2);
    assert!(
        r.stderr.contains("sinks.hook.webhook.secret_env")
            && r.stderr.contains("not the credential itself"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "{}",
        r.stderr
    );
}
