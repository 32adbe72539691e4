//! Rollout triggers against real HTTP receivers on loopback (the example receiver,
//! which verifies every signature with the Standard Webhooks reference library), real
//! Terraform variable files and real commands.

#[path = "support/rollout.rs"]
mod support;

use std::time::{Duration, Instant};

use goldsmith::publish::model::MoveReason;
use goldsmith::rollout::outbox::DeliveryStatus;
use goldsmith::rollout::{self, ChannelHead, DeliverOptions};
use serde_json::Value;
use support::*;

fn set_secret() {
    // Every test uses the same value, so tests running in parallel agree on it.
    std::env::set_var("ROLLOUT_TEST_SECRET", SECRET);
}

fn json_stdout(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "goldsmith failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_the_event_once() {
    set_secret();
    let rx = Receiver::start(0, SECRET, &["--fail-first", "3"]);
    let p = Project::new(&webhook_sink(&rx.url, 6), &["hook"]);
    let (cfg, store) = (p.config(), p.store());
    let (a, b) = (
        manifest("web", "2026.11.1.1", 1),
        manifest("web", "2026.11.2.1", 2),
    );
    let mv = channel_move("nightly", MoveReason::Publish, Some(&a), &b);

    let out = rollout::on_channel_moves(&cfg, &store, std::slice::from_ref(&mv))
        .await
        .unwrap();
    assert_eq!(out.events.len(), 1, "{out:?}");
    let id = out.events[0].id.clone();
    assert_eq!(out.events[0].group, "web-canary");
    assert_eq!(out.deliveries.len(), 1);
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Delivered);
    assert_eq!(out.deliveries[0].attempts, 4);

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    for r in &reqs {
        assert_eq!(r["idempotency_key"], id.as_str());
        assert_eq!(r["webhook_id"], id.as_str());
        assert_eq!(r["content_type"], "application/cloudevents+json");
    }
    assert_eq!(
        reqs.iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    let accepted = rx.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["verified"], true);
    assert_eq!(accepted[0]["event"]["new"]["version"], "2026.11.2.1");

    // Nothing more is sent: not by a later run, not by replaying the same move.
    let again = rollout::deliver_pending(&cfg, &store, DeliverOptions::default())
        .await
        .unwrap();
    assert!(again.deliveries.is_empty(), "{again:?}");
    let replay = rollout::on_channel_moves(&cfg, &store, &[mv])
        .await
        .unwrap();
    assert_eq!(replay.events[0].id, id);
    assert!(!replay.events[0].written);
    assert!(replay.deliveries.is_empty());
    assert_eq!(rx.requests().len(), 4);

    let hist = json_stdout(&p.goldsmith(&["--json", "rollout", "history"]));
    assert_eq!(hist[0]["deliveries"][0]["status"], "delivered");
    assert_eq!(hist[0]["deliveries"][0]["attempts"], 4);
    assert_eq!(hist[0]["deliveries"][0]["http_status"], 200);
}

#[tokio::test]
async fn a_receiver_down_for_the_run_gets_the_event_from_rollout_retry() {
    set_secret();
    let port = free_port();
    let p = Project::new(
        &webhook_sink(&format!("http://127.0.0.1:{port}"), 2),
        &["hook"],
    );
    let (cfg, store) = (p.config(), p.store());
    let b = manifest("web", "2026.11.2.1", 2);
    let out = rollout::on_channel_moves(
        &cfg,
        &store,
        &[channel_move("nightly", MoveReason::Publish, None, &b)],
    )
    .await
    .unwrap();
    let id = out.events[0].id.clone();
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Pending);
    assert_eq!(out.deliveries[0].attempts, 2);
    assert!(
        out.deliveries[0].error.as_deref().unwrap().contains("POST"),
        "{out:?}"
    );

    let pending = json_stdout(&p.goldsmith(&["--json", "rollout", "pending"]));
    assert_eq!(pending.as_array().unwrap().len(), 1);
    assert_eq!(pending[0]["id"], id.as_str());
    assert_eq!(pending[0]["deliveries"][0]["status"], "pending");
    let text = p.goldsmith(&["rollout", "pending"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("web-canary"));

    // Still down: retry says so with exit code 1 and keeps the event.
    let r = p.goldsmith(&["rollout", "retry"]);
    assert_eq!(r.status.code(), Some(1), "{r:?}");

    let rx = Receiver::start(port, SECRET, &[]);
    let r = p.goldsmith(&["rollout", "retry"]);
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    let accepted = rx.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["idempotency_key"], id.as_str());
    assert_eq!(rx.requests().len(), 1);

    let pending = json_stdout(&p.goldsmith(&["--json", "rollout", "pending"]));
    assert_eq!(pending, serde_json::json!([]));
    let hist = json_stdout(&p.goldsmith(&["--json", "rollout", "history"]));
    assert_eq!(hist[0]["deliveries"][0]["status"], "delivered");
    assert_eq!(hist[0]["deliveries"][0]["attempts"], 5);
    // A second retry has nothing left to send.
    let r = p.goldsmith(&["rollout", "retry"]);
    assert_eq!(r.status.code(), Some(0));
    assert_eq!(rx.requests().len(), 1);
}

/// Child of the kill -9 test: publishes a move, then pauses before delivery (the parent
/// kills it there). Does nothing when run on its own.
#[tokio::test]
#[ignore = "run by kill_9_between_outbox_and_delivery_loses_nothing"]
async fn kill9_child() {
    let Ok(dir) = std::env::var("ROLLOUT_KILL9_PROJECT") else {
        return;
    };
    let cfg =
        goldsmith::config::Config::load(&std::path::Path::new(&dir).join("goldsmith.toml"), true)
            .unwrap();
    let store = goldsmith::store::local::LocalStore::new(std::path::Path::new(&dir).join("store"));
    let b = manifest("web", "2026.11.2.1", 2);
    rollout::on_channel_moves(
        &cfg,
        &store,
        &[channel_move("nightly", MoveReason::Publish, None, &b)],
    )
    .await
    .unwrap();
    panic!("the parent should have killed this process before delivery");
}

#[test]
fn kill_9_between_outbox_and_delivery_loses_nothing() {
    let rx = Receiver::start(0, SECRET, &[]);
    let p = Project::new(&webhook_sink(&rx.url, 3), &["hook"]);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill9_child", "--ignored", "--nocapture"])
        .env("ROLLOUT_KILL9_PROJECT", p.path())
        .env("ROLLOUT_TEST_SECRET", SECRET)
        .env(rollout::TEST_PAUSE_ENV, "60000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while p.outbox().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the child never wrote its event"
        );
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the child exited ({st}) before it was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The event is in the outbox; delivery has not started (the child is paused).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    assert!(rx.requests().is_empty(), "delivered before the kill");

    let id = p.outbox()[0]["id"].as_str().unwrap().to_string();
    let r = p.goldsmith(&["rollout", "retry"]);
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    let accepted = rx.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["idempotency_key"], id.as_str());
}

#[tokio::test]
async fn the_example_receiver_detects_a_wrong_secret() {
    set_secret();
    let rx = Receiver::start(0, OTHER_SECRET, &[]);
    let p = Project::new(&webhook_sink(&rx.url, 4), &["hook"]);
    let (cfg, store) = (p.config(), p.store());
    let b = manifest("web", "2026.11.2.1", 2);
    let out = rollout::on_channel_moves(
        &cfg,
        &store,
        &[channel_move("nightly", MoveReason::Publish, None, &b)],
    )
    .await
    .unwrap();
    // 401 is permanent: one attempt, recorded with the receiver's answer.
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Failed);
    assert_eq!(out.deliveries[0].attempts, 1);
    assert_eq!(out.deliveries[0].http_status, Some(401));
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["verified"], false);
    assert!(rx.accepted().is_empty());
    let hist = json_stdout(&p.goldsmith(&["--json", "rollout", "history"]));
    let d = &hist[0]["deliveries"][0];
    assert_eq!(d["status"], "failed");
    assert!(
        d["response_body"]
            .as_str()
            .unwrap()
            .contains("signature rejected"),
        "{d}"
    );
    // Automatic runs leave a permanent failure alone; `rollout retry` tries it again.
    let auto = rollout::deliver_pending(&cfg, &store, DeliverOptions::default())
        .await
        .unwrap();
    assert!(auto.deliveries.is_empty());
    assert_eq!(rx.requests().len(), 1);
    let r = p.goldsmith(&["rollout", "retry"]);
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(rx.requests().len(), 2);
    // And the secret never shows up in what goldsmith printed.
    assert!(!String::from_utf8_lossy(&r.stderr).contains(SECRET));
    assert!(!String::from_utf8_lossy(&r.stdout).contains(SECRET));
}

#[tokio::test]
async fn retry_after_is_honoured_and_a_long_one_leaves_the_event_pending() {
    set_secret();
    let rx = Receiver::start(
        0,
        SECRET,
        &[
            "--fail-first",
            "1",
            "--fail-status",
            "503",
            "--retry-after",
            "1",
        ],
    );
    let p = Project::new(&webhook_sink(&rx.url, 3), &["hook"]);
    let b = manifest("web", "2026.11.2.1", 2);
    let t0 = Instant::now();
    let out = rollout::on_channel_moves(
        &p.config(),
        &p.store(),
        &[channel_move("nightly", MoveReason::Publish, None, &b)],
    )
    .await
    .unwrap();
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Delivered);
    assert_eq!(out.deliveries[0].attempts, 2);
    // The backoff alone would have waited ~20-40 ms; the receiver asked for 1 s.
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );
    // The retry was signed afresh: a later timestamp, and the signature still verified.
    let reqs = rx.requests();
    let ts: Vec<u64> = reqs
        .iter()
        .map(|r| r["timestamp"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ts[1] > ts[0], "{ts:?}");
    assert_eq!(reqs[1]["verified"], true);

    // A receiver asking for more than retry_after_max_secs gets the event next run.
    let rx2 = Receiver::start(
        0,
        SECRET,
        &[
            "--fail-first",
            "1",
            "--fail-status",
            "429",
            "--retry-after",
            "3600",
        ],
    );
    let p2 = Project::new(
        &format!("{}retry_after_max_secs = 5\n", webhook_sink(&rx2.url, 5)),
        &["hook"],
    );
    let out = rollout::on_channel_moves(
        &p2.config(),
        &p2.store(),
        &[channel_move("nightly", MoveReason::Publish, None, &b)],
    )
    .await
    .unwrap();
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Pending);
    assert_eq!(out.deliveries[0].attempts, 1);
    assert_eq!(out.deliveries[0].http_status, Some(429));
    let out = rollout::deliver_pending(&p2.config(), &p2.store(), DeliverOptions::default())
        .await
        .unwrap();
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Delivered);
    assert_eq!(rx2.accepted().len(), 1);
}

#[tokio::test]
async fn a_promote_fires_events_for_the_stable_groups_only() {
    let p = Project::new(&terraform_sink(), &["tf"]);
    let (cfg, store) = (p.config(), p.store());
    let (a, b) = (
        manifest("web", "2026.11.1.1", 1),
        manifest("web", "2026.11.2.1", 2),
    );
    let out = rollout::on_channel_moves(
        &cfg,
        &store,
        &[channel_move("stable", MoveReason::Promote, Some(&a), &b)],
    )
    .await
    .unwrap();
    let groups: Vec<_> = out.events.iter().map(|e| e.group.as_str()).collect();
    assert_eq!(groups, ["web-fleet"]);
    assert_eq!(out.events[0].reason, rollout::event::EventReason::Promote);
    assert!(p.path().join("tf/web-fleet.auto.tfvars.json").is_file());
    assert!(!p.path().join("tf/web-canary.auto.tfvars.json").exists());
    assert!(!p.path().join("tf/bastion.auto.tfvars.json").exists());

    // The fleet's waves are resolved for its 8 hosts: 1, then 25 % (2), then the rest.
    let ev = &p.outbox()[0]["cloudevent"]["data"];
    let sizes: Vec<_> = ev["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [1, 2, 5]);
    assert_eq!(ev["waves"][0]["pause_secs"], 600);
    assert_eq!(ev["waves"][1]["health_gate"], "web-healthy");
}

#[tokio::test]
async fn a_revoke_fires_rollback_events() {
    set_secret();
    let rx = Receiver::start(0, SECRET, &[]);
    let p = Project::new(&webhook_sink(&rx.url, 2), &["hook"]);
    let (a, b) = (
        manifest("web", "2026.11.1.1", 1),
        manifest("web", "2026.11.2.1", 2),
    );
    // b on nightly is revoked; the channel falls back to a.
    let out = rollout::on_channel_moves(
        &p.config(),
        &p.store(),
        &[channel_move("nightly", MoveReason::Revoke, Some(&b), &a)],
    )
    .await
    .unwrap();
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].reason, rollout::event::EventReason::Rollback);
    let acc = rx.accepted();
    assert_eq!(acc.len(), 1);
    let ev = &acc[0]["event"];
    assert_eq!(ev["reason"], "rollback");
    assert_eq!(ev["old"]["version"], "2026.11.2.1");
    assert_eq!(ev["new"]["version"], "2026.11.1.1");
    assert_eq!(ev["note"], "revoked: broken nginx config");
    // Going back undoes b's upgrades and b's extra package.
    let down: Vec<_> = ev["changes"]["packages"]["downgraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(down, ["nginx", "openssl"]);
    assert_eq!(ev["changes"]["packages"]["removed"][0]["name"], "curl");
    assert_eq!(
        ev["artifacts"]["ami"][0]["image_id"],
        "ami-00000000000000001"
    );
}

#[tokio::test]
async fn an_unchanged_or_unverified_version_fires_nothing() {
    let p = Project::new(&terraform_sink(), &["tf"]);
    let (cfg, store) = (p.config(), p.store());
    let a = manifest("web", "2026.11.1.1", 1);
    // The nightly rebuilt the same content under a new version number.
    let mut same = manifest("web", "2026.11.2.1", 1);
    same.content_digest = a.content_digest.clone();
    let mut unverified = manifest("web", "2026.11.3.1", 3);
    unverified.verify.passed = false;
    let out = rollout::on_channel_moves(
        &cfg,
        &store,
        &[
            channel_move("nightly", MoveReason::Publish, Some(&a), &same),
            channel_move("nightly", MoveReason::Publish, Some(&a), &unverified),
        ],
    )
    .await
    .unwrap();
    assert!(out.events.is_empty(), "{out:?}");
    assert!(out.deliveries.is_empty());
    let why: Vec<_> = out.skipped.iter().map(|s| format!("{:?}", s.why)).collect();
    assert_eq!(why, ["Unchanged", "Unverified"]);
    assert!(p.outbox().is_empty());
    assert!(!p.path().join("tf").exists());
}

#[tokio::test]
async fn the_tfvars_file_is_json_with_the_new_ami() {
    let p = Project::new(&terraform_sink(), &["tf"]);
    let (a, b) = (
        manifest("base", "2026.11.1.1", 1),
        manifest("base", "2026.11.2.1", 2),
    );
    let out = rollout::on_channel_moves(
        &p.config(),
        &p.store(),
        &[channel_move("stable", MoveReason::Promote, Some(&a), &b)],
    )
    .await
    .unwrap();
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Delivered);
    let f = p.path().join("tf/bastion.auto.tfvars.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    assert_eq!(v["image_id"], b.targets.ami[0].image_id.as_str());
    assert_eq!(
        v["image_ids"]["us-east-1"],
        b.targets.ami[1].image_id.as_str()
    );
    assert_eq!(v["image_version"], "2026.11.2.1");
    assert_eq!(v["image_digest"], b.content_digest.as_str());
    assert_eq!(v["qcow2_url"], b.artifacts[0].url.as_str());
    assert_eq!(v["qcow2_sha256"], b.artifacts[0].sha256.as_str());
    assert_eq!(v["vmdk_url"], b.artifacts[1].url.as_str());
    assert_eq!(v["oci_reference"], b.targets.oci[0].reference.as_str());
    assert_eq!(v["rollout_event_id"], out.events[0].id.as_str());
    // Written atomically: no temp file is left beside it.
    let names: Vec<_> = std::fs::read_dir(p.path().join("tf"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["bastion.auto.tfvars.json"]);
}

#[tokio::test]
async fn every_emitted_event_matches_the_schema() {
    let p = Project::new(&terraform_sink(), &["tf"]);
    let (cfg, store) = (p.config(), p.store());
    let (a, b, c) = (
        manifest("web", "2026.11.1.1", 1),
        manifest("web", "2026.11.2.1", 2),
        manifest("base", "2026.11.2.1", 2),
    );
    let mut bare = manifest("base", "2026.11.3.1", 3);
    bare.targets = Default::default();
    bare.changes.clear();
    rollout::on_channel_moves(
        &cfg,
        &store,
        &[
            channel_move("nightly", MoveReason::Publish, None, &a),
            channel_move("nightly", MoveReason::Publish, Some(&a), &b),
            channel_move("stable", MoveReason::Promote, Some(&a), &b),
            channel_move("nightly", MoveReason::Revoke, Some(&b), &a),
            channel_move("stable", MoveReason::Promote, None, &c),
            channel_move("stable", MoveReason::Promote, Some(&c), &bare),
        ],
    )
    .await
    .unwrap();
    let recs = p.outbox();
    assert_eq!(recs.len(), 6);
    let events: Vec<Value> = recs
        .iter()
        .map(|r| r["cloudevent"]["data"].clone())
        .collect();
    assert_eq!(schema_errors(&events), Vec::<String>::new());
    for r in &recs {
        let ce = &r["cloudevent"];
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "dev.goldsmith.rollout.v1");
        assert_eq!(ce["id"], ce["data"]["id"]);
        assert_eq!(ce["subject"], ce["data"]["group"]);
        assert!(ce["source"].as_str().unwrap().starts_with("goldsmith://"));
    }
    // The check can fail: a wrong reason and a missing field are caught.
    let mut bad = events[0].clone();
    bad["reason"] = "nightly".into();
    bad.as_object_mut().unwrap().remove("waves");
    let errs = schema_errors(&[bad]);
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[tokio::test]
async fn a_newer_event_supersedes_an_undelivered_older_one() {
    set_secret();
    let port = free_port();
    let p = Project::new(
        &webhook_sink(&format!("http://127.0.0.1:{port}"), 1),
        &["hook"],
    );
    let (cfg, store) = (p.config(), p.store());
    let (a, b, c) = (
        manifest("web", "2026.11.1.1", 1),
        manifest("web", "2026.11.2.1", 2),
        manifest("web", "2026.11.3.1", 3),
    );
    let first = rollout::on_channel_moves(
        &cfg,
        &store,
        &[channel_move("nightly", MoveReason::Publish, Some(&a), &b)],
    )
    .await
    .unwrap();
    // A moment later the nightly moves on while the receiver is still down.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = rollout::on_channel_moves(
        &cfg,
        &store,
        &[channel_move("nightly", MoveReason::Publish, Some(&b), &c)],
    )
    .await
    .unwrap();
    assert_eq!(second.deliveries.len(), 2, "{second:?}");
    assert!(second
        .deliveries
        .iter()
        .any(|d| d.event_id == first.events[0].id && d.status == DeliveryStatus::Superseded));

    let rx = Receiver::start(port, SECRET, &[]);
    let out = rollout::deliver_pending(&cfg, &store, DeliverOptions::default())
        .await
        .unwrap();
    assert_eq!(out.deliveries.len(), 1);
    assert_eq!(out.deliveries[0].event_id, second.events[0].id);
    let acc = rx.accepted();
    assert_eq!(acc.len(), 1);
    assert_eq!(acc[0]["event"]["new"]["version"], "2026.11.3.1");
}

#[tokio::test]
async fn a_channel_returning_to_an_old_move_gets_a_new_event() {
    let p = Project::new(&terraform_sink(), &["tf"]);
    let (cfg, store) = (p.config(), p.store());
    let (a, b) = (
        manifest("web", "2026.11.1.1", 1),
        manifest("web", "2026.11.2.1", 2),
    );
    let mut ids = Vec::new();
    for (old, new) in [(&a, &b), (&b, &a), (&a, &b)] {
        let out = rollout::on_channel_moves(
            &cfg,
            &store,
            &[channel_move("stable", MoveReason::Promote, Some(old), new)],
        )
        .await
        .unwrap();
        assert!(out.events[0].written);
        ids.push(out.events[0].id.clone());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_ne!(ids[0], ids[2]);
    assert_eq!(p.outbox().len(), 3);
    // Replaying the last move (a crash replay) is still the same event.
    let out = rollout::on_channel_moves(
        &cfg,
        &store,
        &[channel_move("stable", MoveReason::Promote, Some(&a), &b)],
    )
    .await
    .unwrap();
    assert_eq!(out.events[0].id, ids[2]);
    assert!(!out.events[0].written);
    let v: Value = serde_json::from_slice(
        &std::fs::read(p.path().join("tf/web-fleet.auto.tfvars.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(v["image_version"], "2026.11.2.1");
}

#[tokio::test]
async fn reconcile_makes_the_events_of_a_move_that_was_never_recorded() {
    let p = Project::new(&terraform_sink(), &["tf"]);
    let (cfg, store) = (p.config(), p.store());
    let (a, b) = (
        manifest("web", "2026.11.1.1", 1),
        manifest("web", "2026.11.2.1", 2),
    );
    rollout::on_channel_moves(
        &cfg,
        &store,
        &[channel_move("nightly", MoveReason::Publish, None, &a)],
    )
    .await
    .unwrap();
    // The pointer moved to b, but goldsmith died before rollout heard of it.
    let heads = [ChannelHead {
        image: "web".into(),
        channel: "nightly".into(),
        reason: MoveReason::Publish,
        note: "nightly".into(),
        manifest: b.clone(),
    }];
    let out = rollout::reconcile(&cfg, &store, &heads).await.unwrap();
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].old_version.as_deref(), Some("2026.11.1.1"));
    assert_eq!(out.events[0].new_version, "2026.11.2.1");
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Delivered);
    // Nothing is owed any more, so a second reconcile makes nothing.
    let again = rollout::reconcile(&cfg, &store, &heads).await.unwrap();
    assert!(again.events.is_empty() && again.deliveries.is_empty());
    assert_eq!(p.outbox().len(), 2);
}

#[tokio::test]
async fn the_command_sink_gets_the_event_on_stdin() {
    let p = Project::new(&terraform_sink(), &["script"]);
    let out_file = p.path().join("event.json");
    let exit_file = p.path().join("exit-code");
    let script = p.path().join("provision.sh");
    std::fs::write(
        &script,
        format!(
            "cat > {out}\necho \"$GOLDSMITH_HOST_GROUP\" >> {out}.group\necho oops >&2\nexit $(cat {exit})\n",
            out = out_file.display(),
            exit = exit_file.display()
        ),
    )
    .unwrap();
    p.set_sinks(&format!(
        "[sinks.script.command]\nargv = [\"sh\", \"{}\"]\ntimeout_secs = 10\n",
        script.display()
    ));
    let (cfg, store) = (p.config(), p.store());
    let (a, b, c) = (
        manifest("web", "2026.11.1.1", 1),
        manifest("web", "2026.11.2.1", 2),
        manifest("web", "2026.11.3.1", 3),
    );

    // 75 (EX_TEMPFAIL): stays pending.
    std::fs::write(&exit_file, "75").unwrap();
    let out = rollout::on_channel_moves(
        &cfg,
        &store,
        &[channel_move("nightly", MoveReason::Publish, Some(&a), &b)],
    )
    .await
    .unwrap();
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Pending);
    // 0: delivered; the program read the event JSON.
    std::fs::write(&exit_file, "0").unwrap();
    let out = rollout::deliver_pending(&cfg, &store, DeliverOptions::default())
        .await
        .unwrap();
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Delivered);
    let ev: Value = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(ev["new"]["version"], "2026.11.2.1");
    assert_eq!(ev["group"], "web-canary");
    assert_eq!(
        std::fs::read_to_string(format!("{}.group", out_file.display())).unwrap(),
        "web-canary\nweb-canary\n"
    );
    // Any other failure exit: failed for good, with the program's stderr.
    std::fs::write(&exit_file, "3").unwrap();
    let out = rollout::on_channel_moves(
        &cfg,
        &store,
        &[channel_move("nightly", MoveReason::Publish, Some(&b), &c)],
    )
    .await
    .unwrap();
    assert_eq!(out.deliveries[0].status, DeliveryStatus::Failed);
    let hist = json_stdout(&p.goldsmith(&["--json", "rollout", "history"]));
    let last = &hist.as_array().unwrap().last().unwrap()["deliveries"][0];
    assert_eq!(last["status"], "failed");
    assert!(
        last["response_body"].as_str().unwrap().contains("oops"),
        "{last}"
    );
}

#[test]
fn validate_checks_the_inventory_with_file_line_errors() {
    let p = Project::new(&terraform_sink(), &["tf"]);
    let ok = p.goldsmith(&["validate"]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("3 host group(s)"));

    let inv = std::fs::read_to_string(p.path().join("inventory.toml"))
        .unwrap()
        .replacen("image = \"base\"", "image = \"bsae\"", 1)
        .replacen(
            "sinks = [\"tf\"]\ncount = 2",
            "sinks = [\"tff\"]\ncount = 2",
            1,
        )
        .replacen("rest = true", "rest = true\npause_secs = 5", 1)
        .replacen("percent = 25", "percent = 125", 1);
    std::fs::write(p.path().join("inventory.toml"), inv).unwrap();
    let bad = p.goldsmith(&["validate"]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    for want in [
        "inventory.toml:3:9: groups.bastion.image: no such image 'bsae'",
        "inventory.toml:11:10: groups.web-canary.sinks[0]: no sink 'tff'",
        "groups.web-fleet.waves[1].percent: 125 is not between 1 and 100",
        "groups.web-fleet.waves[2]: no wave follows the last one",
        // base.toml still lists bastion, which now runs another image.
        "host_groups[0]: group 'bastion' runs image 'bsae' in the inventory, not 'base'",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    assert!(stderr.contains("images/base.toml:"), "{stderr}");
    assert!(stderr.contains("5 errors"), "{stderr}");

    // A typo'd key is an error too (deny_unknown_fields), with its line.
    let inv = std::fs::read_to_string(p.path().join("inventory.toml"))
        .unwrap()
        .replacen("count = 2", "cuont = 2", 1);
    std::fs::write(p.path().join("inventory.toml"), inv).unwrap();
    let bad = p.goldsmith(&["validate"]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("inventory.toml:12:1"), "{stderr}");
    assert!(stderr.contains("cuont"), "{stderr}");
}

#[test]
fn the_bundled_inventory_is_valid() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .arg("--config")
        .arg(repo_root().join("goldsmith.toml"))
        .args(["--json", "validate"])
        .output()
        .unwrap();
    let v = json_stdout(&out);
    assert_eq!(
        v["host_groups"],
        serde_json::json!(["bastion", "web-canary", "web-fleet"])
    );
}
