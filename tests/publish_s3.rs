//! The S3 store against a real S3-compatible server (moto, started per test on a free
//! loopback port): conditional writes, streaming, failures, and the publish flow on it
//! (signature check, races, a publish killed mid-upload).

#[path = "support/publish.rs"]
mod publish_support;
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use goldsmith::store::s3::S3Store;
use goldsmith::store::{Store, StoreError};
use publish_support::{
    fake_build, s3_cmd, set_test_credentials, with_signing_key, BuildSpec, Moto,
};
use support::{Project, Run};

fn run(p: &Project, args: &[&str]) -> Run {
    Run::from(s3_cmd(p).args(args).output().unwrap())
}

#[tokio::test]
async fn s3_store_conditional_writes_streams_and_listing() {
    let moto = Moto::start();
    set_test_credentials();
    let s = S3Store::new(&moto.def("unit"), "store").unwrap();
    assert_eq!(s.describe(), "s3://unit/p/");

    // put_if_absent: exactly one creator.
    let e1 = s.put_if_absent("a/x.json", b"1".to_vec()).await.unwrap();
    let lost = s
        .put_if_absent("a/x.json", b"2".to_vec())
        .await
        .unwrap_err();
    assert!(lost.is_conflict(), "{lost}");
    // put_if_match: only against the current etag.
    let e2 = s
        .put_if_match("a/x.json", b"3".to_vec(), &e1)
        .await
        .unwrap();
    assert_ne!(e1, e2);
    let stale = s
        .put_if_match("a/x.json", b"4".to_vec(), &e1)
        .await
        .unwrap_err();
    assert!(stale.is_conflict(), "{stale}");
    let missing = s
        .put_if_match("a/none.json", b"4".to_vec(), &e1)
        .await
        .unwrap_err();
    assert!(missing.is_conflict(), "{missing}");
    let o = s.get("a/x.json").await.unwrap().unwrap();
    assert_eq!((o.bytes, o.etag), (b"3".to_vec(), e2));
    assert!(s.get("a/nothing").await.unwrap().is_none());

    // Racing creators from many tasks: one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.put_if_absent("race/marker", format!("{i}").into_bytes())
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(e) => assert!(e.is_conflict(), "{e}"),
        }
    }
    assert_eq!(wins, 1);

    // A multipart upload (over one part) round-trips byte for byte.
    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big.bin");
    let data: Vec<u8> = (0..40 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &data).unwrap();
    s.put_file("v/big.bin", &big).await.unwrap();
    let back = d.path().join("out/big.bin");
    s.get_to_file("v/big.bin", &back).await.unwrap();
    assert_eq!(
        goldsmith::fsutil::sha256_file(&back).unwrap(),
        goldsmith::fsutil::sha256_file(&big).unwrap()
    );
    let nf = s.get_to_file("v/none", &back).await.unwrap_err();
    assert!(matches!(nf, StoreError::NotFound { .. }), "{nf}");

    // Listing: full keys under a folder or a plain prefix; folders one level down.
    s.put("a/y.json", vec![]).await.unwrap();
    s.put("ab/z.json", vec![]).await.unwrap();
    assert_eq!(s.list("a/").await.unwrap(), vec!["a/x.json", "a/y.json"]);
    assert_eq!(
        s.list("a").await.unwrap(),
        vec!["a/x.json", "a/y.json", "ab/z.json"]
    );
    assert_eq!(s.list_dirs("").await.unwrap(), vec!["a", "ab", "race", "v"]);
    s.delete("a/x.json").await.unwrap();
    s.delete("a/x.json").await.unwrap();
    assert_eq!(s.list("a/").await.unwrap(), vec!["a/y.json"]);
}

#[test]
fn missing_credentials_name_the_store_and_the_variable() {
    let p = Project::example();
    with_signing_key(&p);
    p.config_append(
        "[store.s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\naccess_key_env = \"GS_NO_SUCH_KEY_VAR\"\n",
    );
    let r = Run::from(p.cmd().args(["list"]).output().unwrap()).expect(1);
    assert!(
        r.stderr.contains("store s3://b/") && r.stderr.contains("GS_NO_SUCH_KEY_VAR"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_store_that_is_down_is_retried_then_fails_with_nothing_committed() {
    let p = Project::example();
    with_signing_key(&p);
    let port = publish_support::free_port();
    p.config_append(&format!(
        "[store.s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:{port}\"\nmax_attempts = 3\n"
    ));
    fake_build(&p, &BuildSpec::new("web", "down"));
    let t = Instant::now();
    let r = run(&p, &["publish", "web"]).expect(1);
    assert!(r.stderr.contains("s3://b/"), "{}", r.stderr);
    assert!(
        r.stderr.matches("retrying").count() >= 2,
        "retried with backoff: {}",
        r.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(60));
    // Secrets never reach the output.
    assert!(!r.stderr.contains(publish_support::SECRET_KEY));
}

#[test]
fn publish_list_fetch_on_s3() {
    let moto = Moto::start();
    let p = Project::example();
    with_signing_key(&p);
    moto.configure(&p, "images-a");
    let b = fake_build(&p, &BuildSpec::new("web", "s3-one"));
    let out = run(&p, &["--json", "publish", "web", "--version", "1.0.0"])
        .expect(0)
        .json();
    assert_eq!(out["store"], "s3://images-a/images/");
    let l = run(&p, &["--json", "list"]).expect(0).json();
    assert_eq!(l[0]["image"], "web");
    assert_eq!(l[0]["versions"][0]["version"], "1.0.0");
    assert_eq!(l[0]["channels"]["nightly"], "1.0.0");

    run(&p, &["fetch", "web", "nightly", "--dest", "got"]).expect(0);
    let dir = p.path("got/web/1.0.0");
    assert_eq!(
        goldsmith::fsutil::sha256_file(&dir.join("web.qcow2"))
            .unwrap()
            .1,
        b.record.artifacts[0].sha256
    );
    let mv = std::process::Command::new("minisign")
        .arg("-Vm")
        .arg(dir.join("manifest.json"))
        .arg("-p")
        .arg(p.path("keys/goldsmith.key.pub"))
        .output()
        .unwrap();
    assert!(
        mv.status.success(),
        "{}",
        String::from_utf8_lossy(&mv.stderr)
    );

    // Unchanged content: nothing new.
    let again = run(&p, &["--json", "publish", "web"]).expect(0).json();
    assert_eq!(again["status"], "unchanged");

    // Tampering in the bucket is caught, naming the file.
    set_test_credentials();
    let def: goldsmith::config::S3Def = toml::from_str(&format!(
        "bucket = \"images-a\"\nprefix = \"images\"\nendpoint = \"{}\"\naccess_key_env = \"GS_TEST_KEY\"\nsecret_key_env = \"GS_TEST_SECRET\"\n",
        moto.endpoint()
    ))
    .unwrap();
    let s = S3Store::new(&def, "store").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(s.put("web/1.0.0/web.qcow2", b"evil".to_vec()))
        .unwrap();
    let r = run(&p, &["fetch", "web", "1.0.0", "--dest", "got2"]).expect(1);
    assert!(
        r.stderr.contains("web.qcow2") && r.stderr.contains("tampered"),
        "{}",
        r.stderr
    );
}

#[test]
fn concurrent_publishes_on_s3_have_one_winner() {
    let moto = Moto::start();
    let p = Project::example();
    with_signing_key(&p);
    moto.configure(&p, "race");
    fake_build(&p, &BuildSpec::new("web", "race"));
    let spawn = || {
        s3_cmd(&p)
            .args(["publish", "web", "--version", "5.0.0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let mut codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
    codes.sort();
    assert_eq!(codes, vec![0, 1]);
    let loser = outs.iter().find(|o| !o.status.success()).unwrap();
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(err.contains("conflict"), "{err}");
    run(&p, &["fetch", "web", "5.0.0", "--dest", "got"]).expect(0);
}

#[test]
fn publish_killed_mid_upload_leaves_no_visible_version() {
    let moto = Moto::start();
    let p = Project::example();
    with_signing_key(&p);
    moto.configure(&p, "kill");
    // A big (sparse) raw disk keeps the upload busy for a while.
    fake_build(
        &p,
        &BuildSpec {
            raw_bytes: 400 * 1024 * 1024,
            ..BuildSpec::new("web", "big")
        },
    );
    set_test_credentials();
    let def: goldsmith::config::S3Def = toml::from_str(&format!(
        "bucket = \"kill\"\nprefix = \"images\"\nendpoint = \"{}\"\naccess_key_env = \"GS_TEST_KEY\"\nsecret_key_env = \"GS_TEST_SECRET\"\n",
        moto.endpoint()
    ))
    .unwrap();
    let s = S3Store::new(&def, "store").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut child = s3_cmd(&p)
        .args(["publish", "web", "--version", "1.0.0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the claim (the upload has begun), then kill -9.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if rt.block_on(s.get("web/1.0.0/CLAIM")).unwrap().is_some() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "publish ended before the kill"
        );
        assert!(Instant::now() < deadline, "no claim appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed mid-upload");
    assert!(
        rt.block_on(s.get("web/1.0.0/COMMITTED")).unwrap().is_none(),
        "the kill came before the commit"
    );

    // Nothing visible, channel unmoved.
    let l = run(&p, &["--json", "list", "web"]).expect(0).json();
    assert_eq!(l[0]["versions"], serde_json::json!([]));
    assert_eq!(l[0]["channels"], serde_json::json!({}));
    let r = run(&p, &["fetch", "web", "1.0.0", "--dest", "got"]).expect(1);
    assert!(r.stderr.contains("not published"), "{}", r.stderr);
    assert!(
        !rt.block_on(s.list("web/1.0.0/")).unwrap().is_empty(),
        "debris exists"
    );

    // Re-publishing that version is refused while its remains are there...
    let r = run(&p, &["publish", "web", "--version", "1.0.0"]).expect(1);
    assert!(r.stderr.contains("gc --yes"), "{}", r.stderr);
    // ...and the next gc removes them (no publish runs on this host any more).
    let dry = run(&p, &["--json", "gc"]).expect(0).json();
    assert_eq!(dry["removed"][0]["kind"], "debris");
    run(&p, &["gc", "--yes"]).expect(0);
    assert!(rt.block_on(s.list("web/")).unwrap().is_empty());
    // The version can now be published whole.
    run(&p, &["publish", "web", "--version", "1.0.0"]).expect(0);
}
