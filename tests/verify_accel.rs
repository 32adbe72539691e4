//! Accelerator choice: `auto` must use KVM only when a KVM guest really runs, fall back
//! to TCG otherwise and record why; `kvm` and `tcg` force the choice.

use std::path::Path;

use goldsmith::verify::accel::{choose, AccelChoice, AccelKind, ProbeEnv};
use goldsmith::verify::{VerifyError, OVMF_CODE, OVMF_VARS};

fn env(dev: &str, cache: Option<&Path>) -> ProbeEnv {
    ProbeEnv {
        qemu: "qemu-system-x86_64".into(),
        kvm_device: dev.into(),
        ovmf_code: OVMF_CODE.into(),
        ovmf_vars: OVMF_VARS.into(),
        cache_dir: cache.map(Path::to_owned),
    }
}

#[tokio::test]
async fn auto_probes_kvm_and_caches_the_answer() {
    let cache = tempfile::tempdir().unwrap();
    let e = env("/dev/kvm", Some(cache.path()));
    let first = choose(AccelChoice::Auto, &e).await.unwrap();
    let cached_file = cache.path().join("verify/kvm-probe.json");
    if !Path::new("/dev/kvm").exists() {
        assert_eq!(first.kind, AccelKind::Tcg);
        assert!(first.reason.contains("does not exist"), "{}", first.reason);
        return;
    }
    assert!(cached_file.is_file(), "the probe result was not cached");
    match first.kind {
        // The build machines: /dev/kvm exists, but a KVM guest aborts ("failed to set MSR").
        AccelKind::Tcg => {
            assert!(
                first.reason.starts_with("KVM probe failed: "),
                "{}",
                first.reason
            );
            assert!(first.reason.ends_with("; using TCG"), "{}", first.reason);
            assert!(
                first.reason.len() > "KVM probe failed: ; using TCG".len() + 10,
                "no cause given: {}",
                first.reason
            );
        }
        // A host where KVM works: the probe guest ran.
        AccelKind::Kvm => assert!(first.reason.contains("KVM works"), "{}", first.reason),
    }
    // Asked again, the answer comes from the cache (keyed by QEMU version and kernel).
    let second = choose(AccelChoice::Auto, &e).await.unwrap();
    assert_eq!(second.kind, first.kind);
    assert!(second.reason.contains("cached"), "{}", second.reason);
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cached_file).unwrap()).unwrap();
    assert!(
        cached["key"]
            .as_str()
            .unwrap()
            .contains("QEMU emulator version"),
        "{cached}"
    );
    // A stale key (another QEMU or kernel) is probed again, not trusted.
    let mut stale = cached.clone();
    stale["key"] = "QEMU emulator version 0.0 | kernel 0".into();
    stale["kvm_works"] = (first.kind == AccelKind::Tcg).into();
    std::fs::write(&cached_file, serde_json::to_vec(&stale).unwrap()).unwrap();
    let third = choose(AccelChoice::Auto, &e).await.unwrap();
    assert_eq!(third.kind, first.kind);
    assert!(!third.reason.contains("cached"), "{}", third.reason);
}

#[tokio::test]
async fn auto_without_a_kvm_device_uses_tcg_and_says_why() {
    let a = choose(AccelChoice::Auto, &env("/nonexistent/kvm", None))
        .await
        .unwrap();
    assert_eq!(a.kind, AccelKind::Tcg);
    assert!(
        a.reason.contains("/nonexistent/kvm does not exist") && a.reason.contains("TCG"),
        "{}",
        a.reason
    );
}

#[tokio::test]
async fn forced_choices() {
    let t = choose(AccelChoice::Tcg, &env("/dev/kvm", None))
        .await
        .unwrap();
    assert_eq!(t.kind, AccelKind::Tcg);
    assert!(t.reason.contains("forced"), "{}", t.reason);
    let k = choose(AccelChoice::Kvm, &env("/nonexistent/kvm", None)).await;
    assert!(matches!(k, Err(VerifyError::KvmUnavailable(_))), "{k:?}");
}
