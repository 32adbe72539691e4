//! The hooks of the publish flow, through the library: targets run before the commit
//! (a failed target commits nothing and moves no channel; a good one is recorded in the
//! signed manifest), and the channel observer hears of moves only after the pointer moved.

#[path = "support/publish.rs"]
mod publish_support;
mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use goldsmith::artifact::BuildRecord;
use goldsmith::config::TargetDef;
use goldsmith::publish::model::{ChannelMove, MoveReason, OciPushed};
use goldsmith::publish::target::{NamedTarget, PublishTarget, TargetContext, TargetOutcome};
use goldsmith::publish::{
    channel, layout, lifecycle, sign, ChannelObserver, PublishOutcome, PublishRequest,
};
use goldsmith::store::local::LocalStore;
use goldsmith::store::Store;
use publish_support::{fake_build, BuildSpec};
use support::Project;

/// Records what the observer saw, including where the channel pointed at that moment.
struct Recorder {
    store: Arc<dyn Store>,
    seen: Mutex<Vec<(ChannelMove, Option<String>)>>,
}

#[async_trait::async_trait]
impl ChannelObserver for Recorder {
    async fn channel_moved(&self, moves: &[ChannelMove]) -> anyhow::Result<()> {
        for m in moves {
            let head = channel::read(&*self.store, &m.image, &m.channel)
                .await?
                .and_then(|(p, _)| p.head.map(|h| h.version));
            self.seen.lock().unwrap().push((m.clone(), head));
        }
        Ok(())
    }
}

/// A target that pushes nowhere: it fails, or reports a fixed push.
struct FakeTarget {
    fail: bool,
}

#[async_trait::async_trait]
impl PublishTarget for FakeTarget {
    async fn publish(
        &self,
        ctx: &TargetContext<'_>,
        build_dir: &Path,
        build: &BuildRecord,
        version: &str,
    ) -> anyhow::Result<TargetOutcome> {
        assert!(build_dir.join("build.json").is_file());
        assert_eq!(build.image, ctx.image);
        if self.fail {
            anyhow::bail!("registry 127.0.0.1:1 refused the connection");
        }
        Ok(TargetOutcome::Oci(OciPushed {
            target: ctx.name.to_string(),
            reference: format!("127.0.0.1:5000/goldsmith/{}@sha256:ab", ctx.image),
            digest: "sha256:ab".into(),
            tags: vec![version.to_string(), ctx.channel.to_string()],
        }))
    }
}

fn named(fail: bool) -> NamedTarget {
    NamedTarget {
        name: "registry".into(),
        def: TargetDef {
            registry: None,
            ami: None,
        },
        target: Arc::new(FakeTarget { fail }),
    }
}

fn setup() -> (Project, Arc<dyn Store>, sign::Signer) {
    let p = Project::example();
    let key = p.path("k.key");
    sign::keygen(&key, None).unwrap();
    let signer = sign::Signer::load(&key, None).unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(p.path("artifacts")));
    (p, store, signer)
}

fn request(p: &Project, version: &str) -> PublishRequest {
    PublishRequest {
        image: "web".into(),
        build_dir: p.path("target/goldsmith/web").join(version),
        channel: "nightly".into(),
        version: Some(version.into()),
        force: false,
    }
}

#[tokio::test]
async fn a_failed_target_commits_nothing_and_moves_no_channel() {
    let (p, store, signer) = setup();
    fake_build(&p, &BuildSpec::new("web", "1.0.0"));
    let rec = Recorder {
        store: store.clone(),
        seen: Mutex::default(),
    };
    let err = goldsmith::publish::publish(
        &*store,
        &signer,
        &[named(true)],
        &request(&p, "1.0.0"),
        &rec,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("target 'registry' failed") && msg.contains("refused"),
        "{msg}"
    );
    assert!(!layout::is_committed(&*store, "web", "1.0.0").await.unwrap());
    assert!(channel::read(&*store, "web", "nightly")
        .await
        .unwrap()
        .is_none());
    assert!(
        rec.seen.lock().unwrap().is_empty(),
        "no move, no notification"
    );
    // The failed publish removed its own uploads.
    assert!(store.list("web/").await.unwrap().is_empty());
}

#[tokio::test]
async fn targets_are_recorded_and_the_observer_runs_after_the_move() {
    let (p, store, signer) = setup();
    let rec = Recorder {
        store: store.clone(),
        seen: Mutex::default(),
    };
    fake_build(&p, &BuildSpec::new("web", "1.0.0"));
    let out = goldsmith::publish::publish(
        &*store,
        &signer,
        &[named(false)],
        &request(&p, "1.0.0"),
        &rec,
    )
    .await
    .unwrap();
    let PublishOutcome::Published { manifest, moves } = out else {
        panic!("not published");
    };
    assert_eq!(manifest.targets.oci.len(), 1);
    assert_eq!(manifest.targets.oci[0].tags, vec!["1.0.0", "nightly"]);
    // The record is in the stored, signed manifest.
    let stored = layout::manifest(&*store, "web", "1.0.0").await.unwrap();
    assert_eq!(stored.targets, manifest.targets);
    assert_eq!(moves.len(), 1);

    fake_build(&p, &BuildSpec::new("web", "2.0.0"));
    goldsmith::publish::publish(&*store, &signer, &[], &request(&p, "2.0.0"), &rec)
        .await
        .unwrap();
    lifecycle::promote(&*store, None, "web", "2.0.0", "stable", &rec)
        .await
        .unwrap();
    lifecycle::revoke(&*store, "web", "2.0.0", "bad", &rec)
        .await
        .unwrap();

    let seen = rec.seen.lock().unwrap();
    type Seen = (String, MoveReason, Option<String>, String, Option<String>);
    let summary: Vec<Seen> = seen
        .iter()
        .map(|(m, head)| {
            (
                m.channel.clone(),
                m.reason,
                m.old.as_ref().map(|o| o.version.clone()),
                m.new.version.clone(),
                head.clone(),
            )
        })
        .collect();
    let s = |x: &str| x.to_string();
    assert_eq!(
        summary,
        vec![
            (
                s("nightly"),
                MoveReason::Publish,
                None,
                s("1.0.0"),
                Some(s("1.0.0"))
            ),
            (
                s("nightly"),
                MoveReason::Publish,
                Some(s("1.0.0")),
                s("2.0.0"),
                Some(s("2.0.0"))
            ),
            (
                s("stable"),
                MoveReason::Promote,
                None,
                s("2.0.0"),
                Some(s("2.0.0"))
            ),
            // stable had nothing before 2.0.0, so only nightly falls back.
            (
                s("nightly"),
                MoveReason::Revoke,
                Some(s("2.0.0")),
                s("1.0.0"),
                Some(s("1.0.0"))
            ),
        ],
        "each move is reported once, after the pointer already shows it"
    );
}
