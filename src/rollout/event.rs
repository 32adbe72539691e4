//! Trigger events: what a host group's provisioner is told when its channel moves.
//!
//! The event (`data` of the CloudEvent) has the shape of `schemas/rollout-event.v1.json`;
//! the envelope follows CloudEvents 1.0 in structured JSON mode.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::inventory::{Group, ResolvedWave};
use crate::artifact::LayerChange;
use crate::publish::model::{ChannelMove, Manifest, MoveReason};

/// `schema` of every v1 event.
pub const EVENT_SCHEMA: &str = "goldsmith.rollout-event.v1";
/// CloudEvents `type` of a rollout trigger.
pub const CLOUDEVENT_TYPE: &str = "dev.goldsmith.rollout.v1";
/// Media type of a structured-mode CloudEvent.
pub const CLOUDEVENT_MEDIA_TYPE: &str = "application/cloudevents+json";

/// Why the group must be rebuilt.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventReason {
    /// A new version was published to the channel (the nightly).
    Publish,
    /// An existing version was promoted to the channel.
    Promote,
    /// The version the channel pointed at was revoked: go back to `new`.
    Rollback,
}

impl From<MoveReason> for EventReason {
    fn from(r: MoveReason) -> Self {
        match r {
            MoveReason::Publish => EventReason::Publish,
            MoveReason::Promote => EventReason::Promote,
            MoveReason::Revoke => EventReason::Rollback,
        }
    }
}

impl EventReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::Publish => "publish",
            EventReason::Promote => "promote",
            EventReason::Rollback => "rollback",
        }
    }
}

/// One version, as the event names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionRef {
    pub version: String,
    pub content_digest: String,
    /// When it was published (RFC 3339).
    pub published: String,
}

impl From<&Manifest> for VersionRef {
    fn from(m: &Manifest) -> Self {
        VersionRef {
            version: m.version.clone(),
            content_digest: m.content_digest.clone(),
            published: m.published.clone(),
        }
    }
}

/// A file of the new version in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRef {
    /// `qcow2`, `vmdk`, `raw`, `ova`, `vhd`, `tar`, `oci`.
    pub format: String,
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

/// An AMI of the new version in one region.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AmiRef {
    pub region: String,
    pub image_id: String,
    /// The publish target (goldsmith.toml `[targets.NAME]`).
    pub target: String,
}

/// The new version in an OCI registry, by digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OciRef {
    /// `host:port/repo@sha256:…`
    pub reference: String,
    pub digest: String,
    pub target: String,
}

/// What the provisioner rebuilds the hosts from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArtifactRefs {
    pub files: Vec<FileRef>,
    pub ami: Vec<AmiRef>,
    pub oci: Vec<OciRef>,
}

/// A package by name and architecture.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackageRef {
    pub name: String,
    pub arch: String,
    pub version: String,
}

/// A package whose version moved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackageMove {
    pub name: String,
    pub arch: String,
    pub old: String,
    pub new: String,
}

/// Package differences between the old and the new version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackageChanges {
    pub added: Vec<PackageRef>,
    pub removed: Vec<PackageRef>,
    pub upgraded: Vec<PackageMove>,
    /// Versions that went down (a rollback lists the undone upgrades here).
    pub downgraded: Vec<PackageMove>,
}

/// What changed between the two versions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeSummary {
    pub packages: PackageChanges,
    /// Why the new version's layers were rebuilt (from its manifest).
    pub layers: Vec<LayerChange>,
}

/// The hosts of the group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostsRef {
    pub count: Option<u32>,
    pub names: Vec<String>,
}

/// A rollout trigger for one host group (the CloudEvent's `data`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloutEvent {
    /// Always [`EVENT_SCHEMA`].
    pub schema: String,
    /// Idempotency id: hash of group, image, old and new content digest.
    pub id: String,
    /// When the event was created (RFC 3339, UTC).
    pub created: String,
    pub group: String,
    pub image: String,
    pub channel: String,
    pub reason: EventReason,
    /// Free text from the move (the revoke reason, "nightly", …).
    pub note: String,
    /// What the group ran before (None for a channel's first version).
    pub old: Option<VersionRef>,
    /// What the group must run now.
    pub new: VersionRef,
    pub artifacts: ArtifactRefs,
    pub hosts: HostsRef,
    pub waves: Vec<ResolvedWave>,
    pub changes: ChangeSummary,
}

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub subject: String,
    pub time: String,
    pub datacontenttype: String,
    pub data: RolloutEvent,
}

impl CloudEvent {
    /// Wrap an event; `source` identifies the goldsmith installation that emitted it.
    pub fn wrap(event: RolloutEvent, source_host: &str) -> CloudEvent {
        CloudEvent {
            specversion: "1.0".into(),
            id: event.id.clone(),
            source: format!("goldsmith://{source_host}/{}", event.image),
            ty: CLOUDEVENT_TYPE.into(),
            subject: event.group.clone(),
            time: event.created.clone(),
            datacontenttype: "application/json".into(),
            data: event,
        }
    }

    /// The exact bytes every delivery attempt sends (and signs).
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events serialise")
    }
}

/// The idempotency id of the event for `group` when `image` moves from `old` to `new`
/// (content digests). `generation` is 0 except when the channel returns to a move it
/// made before (A→B, B→A, A→B): the repeat is a new trigger and gets its own id.
pub fn event_id(group: &str, image: &str, old: Option<&str>, new: &str, generation: u32) -> String {
    let mut h = Sha256::new();
    h.update(b"goldsmith.rollout.v1\0");
    for part in [group, image, old.unwrap_or("-"), new] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    if generation > 0 {
        h.update(generation.to_string().as_bytes());
    }
    hex::encode(h.finalize())
}

/// Why a channel move produces no event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NoEvent {
    /// Old and new have the same content digest: nothing to rebuild.
    Unchanged,
    /// The new version did not pass verification; never roll a host onto it.
    Unverified,
    /// The move names the same image under another name, or is otherwise inconsistent.
    Invalid { message: String },
}

/// Check a move before any event is made from it.
pub fn check_move(mv: &ChannelMove) -> Result<(), NoEvent> {
    if mv.new.image != mv.image {
        return Err(NoEvent::Invalid {
            message: format!(
                "move of image '{}' carries a manifest of image '{}'",
                mv.image, mv.new.image
            ),
        });
    }
    if let Some(old) = &mv.old {
        if old.content_digest == mv.new.content_digest {
            return Err(NoEvent::Unchanged);
        }
    }
    if !mv.new.verify.passed {
        return Err(NoEvent::Unverified);
    }
    Ok(())
}

/// The event for one group (the move passed [`check_move`]).
pub fn build(mv: &ChannelMove, group: &Group, id: String, created: String) -> RolloutEvent {
    let new = &mv.new;
    RolloutEvent {
        schema: EVENT_SCHEMA.into(),
        id,
        created,
        group: group.name.clone(),
        image: mv.image.clone(),
        channel: mv.channel.clone(),
        reason: mv.reason.into(),
        note: mv.note.clone(),
        old: mv.old.as_ref().map(VersionRef::from),
        new: VersionRef::from(new),
        artifacts: artifact_refs(new),
        hosts: HostsRef {
            count: group.host_count(),
            names: group.hosts.clone(),
        },
        waves: group.resolve_waves(),
        changes: ChangeSummary {
            packages: package_changes(
                mv.old.as_ref().map(|m| &m.packages[..]).unwrap_or(&[]),
                &new.packages,
            ),
            layers: new.changes.clone(),
        },
    }
}

fn artifact_refs(m: &Manifest) -> ArtifactRefs {
    ArtifactRefs {
        files: m
            .artifacts
            .iter()
            .map(|a| FileRef {
                format: a.format.as_str().into(),
                url: a.url.clone(),
                sha256: a.sha256.clone(),
                size: a.size,
            })
            .collect(),
        ami: m
            .targets
            .ami
            .iter()
            .map(|a| AmiRef {
                region: a.region.clone(),
                image_id: a.image_id.clone(),
                target: a.target.clone(),
            })
            .collect(),
        oci: m
            .targets
            .oci
            .iter()
            .map(|o| OciRef {
                reference: o.reference.clone(),
                digest: o.digest.clone(),
                target: o.target.clone(),
            })
            .collect(),
    }
}

/// Packages added, removed, upgraded and downgraded from `old` to `new`, by name and
/// architecture, sorted by name.
pub fn package_changes(
    old: &[crate::plan::ResolvedPackage],
    new: &[crate::plan::ResolvedPackage],
) -> PackageChanges {
    let index = |ps: &[crate::plan::ResolvedPackage]| -> BTreeMap<(String, String), String> {
        ps.iter()
            .map(|p| ((p.name.clone(), p.arch.clone()), p.version.clone()))
            .collect()
    };
    let (o, n) = (index(old), index(new));
    let mut c = PackageChanges::default();
    for ((name, arch), nv) in &n {
        match o.get(&(name.clone(), arch.clone())) {
            None => c.added.push(PackageRef {
                name: name.clone(),
                arch: arch.clone(),
                version: nv.clone(),
            }),
            Some(ov) if ov != nv => {
                let m = PackageMove {
                    name: name.clone(),
                    arch: arch.clone(),
                    old: ov.clone(),
                    new: nv.clone(),
                };
                if compare_debian_versions(nv, ov) == Ordering::Less {
                    c.downgraded.push(m)
                } else {
                    c.upgraded.push(m)
                }
            }
            Some(_) => {}
        }
    }
    for ((name, arch), ov) in &o {
        if !n.contains_key(&(name.clone(), arch.clone())) {
            c.removed.push(PackageRef {
                name: name.clone(),
                arch: arch.clone(),
                version: ov.clone(),
            });
        }
    }
    c
}

/// Compare two Debian package versions as dpkg does (deb-version(7): epoch, then
/// upstream version and revision by the alternating non-digit/digit algorithm where `~`
/// sorts before everything, even the end of the string).
///
/// Hand-written: the algorithm is a few lines and fully specified, and the crates that
/// implement it bring regex-based parsers and more dependencies than the function itself.
pub fn compare_debian_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) && !e.is_empty() => {
                (e.parse().unwrap_or(0), r)
            }
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((up, rev)) => (epoch, up, rev),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<char>) -> i32 {
        match c {
            None => 0,
            Some('~') => -1,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    fn part(a: &str, b: &str) -> Ordering {
        let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
        while !a.is_empty() || !b.is_empty() {
            // Non-digit prefix, character by character.
            loop {
                let ca = a
                    .first()
                    .filter(|c| !c.is_ascii_digit())
                    .map(|&c| c as char);
                let cb = b
                    .first()
                    .filter(|c| !c.is_ascii_digit())
                    .map(|&c| c as char);
                if ca.is_none() && cb.is_none() {
                    break;
                }
                let (oa, ob) = (order(ca), order(cb));
                if oa != ob {
                    return oa.cmp(&ob);
                }
                a = &a[ca.is_some() as usize..];
                b = &b[cb.is_some() as usize..];
            }
            // Digit run, numerically.
            let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let num = |s: &[u8]| {
                let t = std::str::from_utf8(s)
                    .unwrap_or("0")
                    .trim_start_matches('0');
                (t.len(), t.to_string())
            };
            let (na, nb) = (num(&a[..da]), num(&b[..db]));
            match na.cmp(&nb) {
                Ordering::Equal => {}
                o => return o,
            }
            a = &a[da..];
            b = &b[db..];
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| part(ua, ub))
        .then_with(|| part(ra, rb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ResolvedPackage;

    #[test]
    fn debian_version_order() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+deb12u1", Less),
            ("1:0.1", "9.9", Greater),
            ("2.36-9+deb12u7", "2.36-9+deb12u10", Less),
            ("1.0-1", "1.0-1~bpo12+1", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0~~", "1.0~", Less),
            ("007", "7", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_debian_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_debian_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    fn p(n: &str, v: &str) -> ResolvedPackage {
        ResolvedPackage {
            name: n.into(),
            version: v.into(),
            arch: "amd64".into(),
        }
    }

    #[test]
    fn package_diff() {
        let old = [p("a", "1"), p("b", "1.0"), p("c", "2"), p("d", "3")];
        let new = [p("a", "1"), p("b", "1.1"), p("c", "1"), p("e", "5")];
        let c = package_changes(&old, &new);
        assert_eq!(
            c.added.iter().map(|p| &p.name[..]).collect::<Vec<_>>(),
            ["e"]
        );
        assert_eq!(
            c.removed.iter().map(|p| &p.name[..]).collect::<Vec<_>>(),
            ["d"]
        );
        assert_eq!(c.upgraded.len(), 1);
        assert_eq!(
            (&c.upgraded[0].old[..], &c.upgraded[0].new[..]),
            ("1.0", "1.1")
        );
        assert_eq!(c.downgraded.len(), 1);
        assert_eq!(c.downgraded[0].name, "c");
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = event_id("g", "web", Some("d1"), "d2", 0);
        assert_eq!(a, event_id("g", "web", Some("d1"), "d2", 0));
        assert_ne!(a, event_id("h", "web", Some("d1"), "d2", 0));
        assert_ne!(a, event_id("g", "web", Some("d2"), "d1", 0));
        assert_ne!(a, event_id("g", "web", None, "d2", 0));
        assert_ne!(a, event_id("g", "web", Some("d1"), "d2", 1));
        // Field boundaries are part of the hash: ("ab","c") is not ("a","bc").
        assert_ne!(
            event_id("ab", "c", None, "x", 0),
            event_id("a", "bc", None, "x", 0)
        );
    }
}
