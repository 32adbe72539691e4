//! The SBOM: CycloneDX 1.5 JSON of the image's installed packages (from its dpkg
//! database, as the build recorded them), with a Package URL per package.
//!
//! Written with serde_json rather than a CycloneDX crate: the document is small and
//! fixed, and the tests check it with the CycloneDX project's own validator.

use serde_json::{json, Value};

use crate::artifact::BuildRecord;
use crate::plan::ResolvedPackage;

pub const SPEC_VERSION: &str = "1.5";

/// Percent-encode a purl component: everything but unreserved characters
/// (so an epoch `1:2.3` becomes `1%3A2.3` and `libstdc++6` becomes `libstdc%2B%2B6`).
fn purl_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH`.
pub fn purl(p: &ResolvedPackage) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch={}",
        purl_encode(&p.name),
        purl_encode(&p.version),
        purl_encode(&p.arch)
    )
}

/// The CycloneDX document for one published version.
pub fn sbom(build: &BuildRecord, version: &str) -> Value {
    let mut packages = build.packages.clone();
    packages.sort();
    packages.dedup();
    let components: Vec<Value> = packages
        .iter()
        .map(|p| {
            let purl = purl(p);
            json!({
                "type": "library",
                "bom-ref": purl,
                "name": p.name,
                "version": p.version,
                "purl": purl,
                "properties": [{"name": "goldsmith:arch", "value": p.arch}],
            })
        })
        .collect();
    // The same image version always gets the same serial number.
    let serial = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!(
            "goldsmith:{}:{}:{}",
            build.image, version, build.content_digest
        )
        .as_bytes(),
    );
    let image_ref = format!("goldsmith:{}@{}", build.image, version);
    let component = json!({
        "type": "operating-system",
        "bom-ref": image_ref,
        "name": build.image,
        "version": version,
        "properties": [
            {"name": "goldsmith:content_digest", "value": build.content_digest},
            {"name": "goldsmith:build_id", "value": build.build_id},
        ],
    });
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": format!("urn:uuid:{serial}"),
        "version": 1,
        "metadata": {
            "timestamp": build.finished,
            "tools": {
                "components": [{
                    "type": "application",
                    "name": "goldsmith",
                    "version": build.goldsmith_version,
                }]
            },
            "component": component,
        },
        "components": components,
        "dependencies": [{
            "ref": image_ref,
            "dependsOn": packages.iter().map(purl).collect::<Vec<_>>(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_encode_epochs_and_pluses() {
        let p = ResolvedPackage {
            name: "libstdc++6".into(),
            version: "1:12.2.0-14+deb12u1".into(),
            arch: "amd64".into(),
        };
        assert_eq!(
            purl(&p),
            "pkg:deb/debian/libstdc%2B%2B6@1%3A12.2.0-14%2Bdeb12u1?arch=amd64"
        );
    }
}
